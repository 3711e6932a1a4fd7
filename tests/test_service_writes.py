"""The service's write routes against a real ``mvector serve`` on 127.0.0.1: look-alike names are one name, an
addition and a removal of one speaker never interleave, files are private, and writes are idempotent with the
``Idempotency-Key`` header (issues 20 and 28)."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install 'mvector[serve]'")
httpx = pytest.importorskip("httpx", reason="the service tests talk HTTP with httpx (in the test extra)")

import soundfile  # noqa: E402

from mvector.data.synthetic import make_voices, synthesize_utterance  # noqa: E402
from mvector.demo import tiny_checkpoint  # noqa: E402
from mvector.service.keys import KeyStore  # noqa: E402
from mvector.service.process import ServerProcess  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOICES = make_voices(2, seed=5)
LIMITS = ["--threads", "1", "--max_upload_mb", "2", "--max_files", "3", "--max_duration", "31", "--keep_audio"]


def clip(seconds: float = 1.0, seed: int = 0) -> bytes:
    wave = synthesize_utterance(VOICES[seed % 2], seconds, rng=np.random.default_rng(seed))
    buf = io.BytesIO()
    soundfile.write(buf, wave, 16000, format="WAV")
    return buf.getvalue()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """A server started under umask 022 on a new database folder; yields (server, keys, client)."""
    db = tmp_path_factory.mktemp("base") / "db"
    old = os.umask(0o022)
    try:
        with KeyStore(db) as store:
            keys = {s: store.create(s, name=f"test-{s}")[1] for s in ("read", "write", "admin")}
            keys["write2"] = store.create("write", name="other client")[1]
        server = ServerProcess(model_dir, db, extra_args=LIMITS, log_path=db.parent / "serve.log").start()
    finally:
        os.umask(old)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield server, keys, client
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log()


def auth(keys: dict, scope: str = "write", idem: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {keys[scope]}"}
    if idem is not None:
        headers["Idempotency-Key"] = idem
    return headers


def names(client, keys) -> list[str]:
    return [s["name"] for s in client.get("/v1/speakers", headers=auth(keys, "read")).json()]


def test_look_alike_names_are_one_name_over_http(served):
    server, keys, client = served
    enrol = lambda name: client.post("/v1/speakers", data={"name": name}, files={"audio": clip()}, headers=auth(keys))  # noqa: E731
    assert enrol("alice").status_code == 201
    fullwidth = enrol("\uff41\uff4c\uff49\uff43\uff45")
    assert fullwidth.status_code == 409 and fullwidth.json()["code"] == "speaker_exists"
    for name, why in [("alice\u200b", "invisible"), ("\u0430lice", "mixes Cyrillic and Latin"),
                      ("alice\u202e", "bidirectional"), ("\u200b\u200b", "invisible")]:  # fmt: skip
        resp = enrol(name)
        assert resp.status_code == 400, (name, resp.text)
        body = resp.json()
        assert body["code"] == "invalid_name" and body["field"] == "name" and why in body["message"]
    path = client.get("/v1/speakers/%EF%BD%81lice", headers=auth(keys, "read"))  # fullwidth 'a' in the path
    assert path.json() == {"name": "alice", "recordings": 1}
    resp = client.delete("/v1/speakers/al%E2%80%8Bice", headers=auth(keys))
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_name"
    assert [n for n in names(client, keys) if "lice" in n] == ["alice"]


@pytest.mark.slow
def test_the_cli_applies_the_same_name_rule(served, model_dir, tmp_path):
    server, keys, client = served
    wav = tmp_path / "a.wav"
    wav.write_bytes(clip())
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "mvector", "recognize", "--model_path", str(model_dir), "--audio_db_path"]
    bad = subprocess.run([*base, str(tmp_path / "db"), "--register", "\u0430lice", str(wav)], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "mixes Cyrillic and Latin" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "db" / "speakers.sqlite").exists()
    # the CLI on the service's own database folder: fullwidth joins the speaker the service enrolled
    client.post("/v1/speakers", data={"name": "bruno"}, files={"audio": clip()}, headers=auth(keys))
    ok = subprocess.run([*base, server.audio_db_path, "--register", "\uff42runo", str(wav)], env=env,
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert client.get("/v1/speakers/bruno", headers=auth(keys, "read")).json()["recordings"] == 2


@pytest.mark.parametrize("delay", [0.1, 0.3, 0.5])
def test_a_delete_during_an_addition_is_never_undone(served, delay):
    server, keys, client = served
    name = f"carol{int(delay * 10)}"
    first = client.post("/v1/speakers", data={"name": name}, files={"audio": clip()}, headers=auth(keys))
    assert first.status_code == 201
    long = [("audio", clip(20 + 5 * k, seed=k)) for k in range(3)]  # 3 recordings of 20-30 s

    def add() -> httpx.Response:
        return client.post(f"/v1/speakers/{name}/recordings", files=long, headers=auth(keys))

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(add)
        time.sleep(delay)
        deleted = client.delete(f"/v1/speakers/{name}", headers=auth(keys))
        added = pending.result(timeout=120)
    assert deleted.status_code == 200, deleted.text
    assert added.status_code in (200, 404), added.text  # the addition came first, or found the speaker gone
    assert client.get(f"/v1/speakers/{name}", headers=auth(keys, "read")).status_code == 404
    assert name not in names(client, keys)
    db = Path(server.audio_db_path)
    with sqlite3.connect(str(db / "speakers.sqlite")) as conn:
        files = {row[0] for row in conn.execute("SELECT audio FROM utterances WHERE audio IS NOT NULL")}
    on_disk = {f"{p.parent.name}/{p.name}" for p in db.glob("*/*.wav")}
    assert on_disk == files  # no audio left behind by either write


def test_database_files_are_private(served):
    server, keys, client = served
    client.post("/v1/speakers", data={"name": "pia"}, files={"audio": clip()}, headers=auth(keys))
    db = Path(server.audio_db_path)
    assert mode_of(db) == 0o700
    for name in ("speakers.sqlite", "speakers.sqlite-wal", "speakers.sqlite-shm", "service.sqlite"):
        assert mode_of(db / name) == 0o600, name
    wavs = list(db.glob("*/*.wav"))
    assert wavs and all(mode_of(p) == 0o600 and mode_of(p.parent) == 0o700 for p in wavs)


def test_a_retried_enrolment_gets_the_first_answer(served):
    server, keys, client = served
    audio = clip(1.0, seed=3)
    first = client.post("/v1/speakers", data={"name": "dora"}, files={"audio": audio}, headers=auth(keys, idem="k-1"))
    again = client.post("/v1/speakers", data={"name": "dora"}, files={"audio": audio}, headers=auth(keys, idem="k-1"))
    assert first.status_code == again.status_code == 201 and first.json() == again.json() == {"name": "dora",
                                                                                               "recordings": 1}
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    plain = client.post("/v1/speakers", data={"name": "dora"}, files={"audio": audio}, headers=auth(keys))
    assert plain.status_code == 409  # without the key, a second enrolment is a name clash
    other = client.post("/v1/speakers", data={"name": "dora"}, files={"audio": clip(1.0, seed=4)},
                        headers=auth(keys, idem="k-1"))  # fmt: skip
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    assert other.json()["field"] == "Idempotency-Key"
    scoped = client.post("/v1/speakers", data={"name": "dora"}, files={"audio": audio},
                         headers=auth(keys, "write2", idem="k-1"))  # fmt: skip
    assert scoped.status_code == 409  # another API key: its own key space, no replay of someone else's answer
    # adding recordings and deleting, retried
    add = lambda k: client.post("/v1/speakers/dora/recordings", files={"audio": audio}, headers=auth(keys, idem=k))  # noqa: E731
    assert add("k-2").json() == add("k-2").json() == {"name": "dora", "recordings": 2}
    assert client.get("/v1/speakers/dora", headers=auth(keys, "read")).json()["recordings"] == 2
    gone = [client.delete("/v1/speakers/dora", headers=auth(keys, idem="k-3")) for _ in range(2)]
    assert [r.status_code for r in gone] == [200, 200] and gone[0].json() == gone[1].json() == {"removed": "dora"}
    assert client.delete("/v1/speakers/dora", headers=auth(keys)).status_code == 404
    assert add("k-2").status_code == 200  # a replay of a committed write needs no live speaker
    assert client.delete("/v1/speakers/dora", headers=auth(keys, idem="k-2")).status_code == 422  # other request


def test_a_record_exists_iff_the_write_committed(served):
    server, keys, client = served
    db = Path(server.audio_db_path) / "speakers.sqlite"

    def stored(key: str) -> int:
        with sqlite3.connect(str(db)) as conn:
            return conn.execute("SELECT COUNT(*) FROM idempotency WHERE key = ?", (key,)).fetchone()[0]

    client.post("/v1/speakers", data={"name": "emil"}, files={"audio": clip()}, headers=auth(keys))
    clash = client.post("/v1/speakers", data={"name": "emil"}, files={"audio": clip()}, headers=auth(keys, idem="r-1"))
    assert clash.status_code == 409 and stored("r-1") == 0
    junk = {"audio": b"not audio"}
    bad = client.post("/v1/speakers", data={"name": "fay"}, files=junk, headers=auth(keys, idem="r-2"))
    assert bad.status_code == 400 and stored("r-2") == 0
    fixed = client.post("/v1/speakers", data={"name": "fay"}, files={"audio": clip()}, headers=auth(keys, idem="r-2"))
    assert fixed.status_code == 201 and stored("r-2") == 1  # a failed attempt does not burn the key
    unknown = client.post("/v1/speakers/nobody/recordings", files={"audio": clip()}, headers=auth(keys, idem="r-3"))
    assert unknown.status_code == 404 and stored("r-3") == 0
    bad_key = client.delete("/v1/speakers/fay", headers=auth(keys, idem="with space"))
    assert bad_key.status_code == 400 and bad_key.json()["field"] == "Idempotency-Key"
    assert "fay" in names(client, keys)


def test_concurrent_retries_with_one_key_write_once(served):
    server, keys, client = served
    audio = clip(1.0, seed=7)

    def enrol(_: int) -> httpx.Response:
        return client.post("/v1/speakers", data={"name": "gus"}, files={"audio": audio}, headers=auth(keys, idem="c-1"))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(enrol, range(4)))
    assert [r.status_code for r in answers] == [201] * 4
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 3
    assert client.get("/v1/speakers/gus", headers=auth(keys, "read")).json()["recordings"] == 1


def test_openapi_documents_the_idempotency_key(served):
    server, keys, client = served
    spec = client.get("/openapi.json").json()
    for path, method in [("/v1/speakers", "post"), ("/v1/speakers/{name}/recordings", "post"),
                         ("/v1/speakers/{name}", "delete")]:  # fmt: skip
        operation = spec["paths"][path][method]
        (header,) = [p for p in operation["parameters"] if p["in"] == "header"]
        assert header["name"] == "Idempotency-Key" and not header.get("required", False)
        responses = operation["responses"]
        assert "422" in responses and "idempotency_key_reused" in responses["422"]["description"]
