"""Shared test settings: small thread counts keep the suite predictable on 2-core machines."""

import os

import pytest
import torch

# The reference generator needs librosa / kaldi-native-fbank, which are not test dependencies.
collect_ignore = ["make_feature_refs.py"]

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def start_postgres_or_skip():
    """A new throwaway PostgreSQL server (tests/postgres_server.py), or a skip with the reason when none can be
    started, or a failure under ``MVECTOR_REQUIRE_POSTGRES=1`` (CI)."""
    from postgres_server import PostgresUnavailable, start_server

    required = os.environ.get("MVECTOR_REQUIRE_POSTGRES") == "1"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("psycopg is required here (MVECTOR_REQUIRE_POSTGRES=1): pip install 'mvector[postgres]'")
        pytest.skip("psycopg is not installed (pip install 'mvector[postgres]')")
    try:
        return start_server()
    except PostgresUnavailable as err:
        if required:
            pytest.fail(f"PostgreSQL is required here (MVECTOR_REQUIRE_POSTGRES=1) but could not start: {err}")
        pytest.skip(f"PostgreSQL cannot be started here: {err}")


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server shared by the session's tests (each takes a fresh database: postgres_url)."""
    server = start_postgres_or_skip()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def own_postgres_server():
    """A throwaway PostgreSQL server for one module's tests, which may stop, kill and restart it."""
    server = start_postgres_or_skip()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.new_database()
