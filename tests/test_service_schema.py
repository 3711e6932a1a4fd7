"""A bounded schemathesis run (all checks) against a live ``mvector serve`` on 127.0.0.1.

A fixed number of examples per operation and a fixed generation (``--generation-deterministic``) keep it under a
minute. The key it uses is an admin key, so every route is reached; the server refuses a key's revocation of
itself (409 ``key_in_use``), so the run cannot revoke its key from under itself even when it finds the key's id
in ``GET /v1/keys``. ``tests/data/schemathesis.toml`` says why random bytes answered 400 ``bad_audio`` count as
accepting schema-valid data on the routes that take recordings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install 'mvector[serve]'")
pytest.importorskip("schemathesis", reason="the schema run needs schemathesis (in the test extra)")

from mvector.demo import tiny_checkpoint  # noqa: E402
from mvector.service.keys import KeyStore  # noqa: E402
from mvector.service.process import ServerProcess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = 10


def _st() -> list[str]:
    found = shutil.which("st") or shutil.which("schemathesis")
    return [found] if found else [sys.executable, "-m", "schemathesis.cli"]


def test_schemathesis_all_checks_pass_against_the_live_service(tmp_path):
    model = tiny_checkpoint(tmp_path / "model")
    db = tmp_path / "db"
    with KeyStore(db) as store:
        admin = store.create("admin", name="schemathesis")[1]
    limits = ["--threads", "1", "--max_upload_mb", "1", "--max_duration", "8", "--refusal_limit", "100000"]
    with ServerProcess(model, db, extra_args=limits, log_path=tmp_path / "serve.log") as server:
        start = time.monotonic()
        out = subprocess.run(
            [
                *_st(), "--no-color", "--config-file", str(ROOT / "tests" / "data" / "schemathesis.toml"), "run",
                server.url + "/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES),
                "--generation-deterministic", "--request-timeout", "20", "-H", f"Authorization: Bearer {admin}",
            ],
            capture_output=True, text=True, timeout=170, cwd=tmp_path,
        )  # fmt: skip
        took = time.monotonic() - start
        assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-2000:]
        selected = re.search(r"Selected: (\d+)/(\d+)", out.stdout)
        tested = re.search(r"Tested: (\d+)", out.stdout)
        assert selected and tested and tested.group(1) == selected.group(2), out.stdout[-3000:]  # every operation
        assert server.proc.poll() is None  # still serving
    with KeyStore(db) as store:
        assert store.authenticate(admin) is not None  # its key survived the run
    assert took < 120, f"the schemathesis run took {took:.0f} s"
    assert "Traceback" not in server.log()
