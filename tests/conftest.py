"""Shared test settings: small thread counts keep the suite predictable on 2-core machines."""

import os

import pytest
import torch

# The reference generator needs librosa / kaldi-native-fbank, which are not test dependencies.
collect_ignore = ["make_feature_refs.py"]

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session (tests/postgres_server.py). Skips with the reason when none
    can be started, unless ``MVECTOR_REQUIRE_POSTGRES=1`` (CI), where that is a failure."""
    from postgres_server import PostgresUnavailable, start_server

    try:
        server = start_server()
    except PostgresUnavailable as err:
        if os.environ.get("MVECTOR_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here (MVECTOR_REQUIRE_POSTGRES=1) but could not start: {err}")
        pytest.skip(f"PostgreSQL cannot be started here: {err}")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a fresh, empty database on the session's server."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if os.environ.get("MVECTOR_REQUIRE_POSTGRES") == "1":
            pytest.fail("psycopg is required here (MVECTOR_REQUIRE_POSTGRES=1): pip install 'mvector[postgres]'")
        pytest.skip("psycopg is not installed (pip install 'mvector[postgres]')")
    return postgres_server.new_database()
