"""The HTTP service end to end: a real server on 127.0.0.1 (a free port), spoken to over HTTP.

Most tests share one ``mvector serve`` child process (small limits so the limit tests stay fast); the tests of
model loading, overload, CORS and graceful shutdown run uvicorn in a thread of this process with a wrapped
predictor, so they can make the model slow on purpose.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install 'mvector[serve]'")
httpx = pytest.importorskip("httpx", reason="the service tests talk HTTP with httpx (in the test extra)")

import soundfile  # noqa: E402
import torch  # noqa: E402
from service_helpers import running  # noqa: E402

from mvector.checkpoint import model_fingerprint  # noqa: E402
from mvector.data.synthetic import make_voices, synthesize_utterance  # noqa: E402
from mvector.demo import tiny_checkpoint  # noqa: E402
from mvector.errors import AudioError, ConfigError  # noqa: E402
from mvector.inference.predictor import MVectorPredictor  # noqa: E402
from mvector.service.app import create_app  # noqa: E402
from mvector.service.keys import KeyStore  # noqa: E402
from mvector.service.process import ServerProcess  # noqa: E402
from mvector.service.settings import ServiceConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOICES = make_voices(3, seed=11)
# in-process servers keep this process's torch thread count (it is process-wide; the service would change it)
SAME_THREADS = torch.get_num_threads()
LIMITS = ["--threads", "1", "--max_upload_mb", "1", "--max_files", "3", "--max_duration", "8", "--min_duration", "0.5"]


def audio_bytes(seconds: float = 1.5, voice: int = 0, seed: int = 0, fmt: str = "WAV") -> bytes:
    wave = synthesize_utterance(VOICES[voice], seconds, rng=np.random.default_rng(seed))
    buf = io.BytesIO()
    soundfile.write(buf, wave, 16000, format=fmt)
    return buf.getvalue()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(resp: httpx.Response, status: int, code: str, field: str | None = "-") -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"code", "message", "field"} and body["code"] == code, body
    assert "Traceback" not in resp.text and body["message"]
    if field != "-":
        assert body["field"] == field, body
    return body


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """One ``mvector serve`` process with keys of every scope; yields (server, keys, client)."""
    db = tmp_path_factory.mktemp("db")
    with KeyStore(db) as store:
        keys = {scope: store.create(scope, name=f"test-{scope}")[1] for scope in ("read", "write", "admin")}
    server = ServerProcess(model_dir, db, extra_args=LIMITS, log_path=db.parent / "serve.log").start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield server, keys, client
    assert server.stop() == 0, server.log()  # SIGTERM: a graceful stop, exit status 0
    assert "mvector serve: stopped" in server.log() and "Traceback" not in server.log()


def test_openapi_is_served_and_every_v1_route_needs_a_key(served):
    server, keys, client = served
    spec = client.get("/openapi.json").json()
    assert "bearer" in json.dumps(spec["components"]["securitySchemes"]).lower()
    routes = [(path, method) for path, ops in spec["paths"].items() for method in ops]
    assert {p for p, _ in routes} >= {
        "/v1/model", "/v1/embed", "/v1/verify", "/v1/identify", "/v1/speakers", "/v1/speakers/{name}",
        "/v1/speakers/{name}/verify", "/v1/speakers/{name}/recordings", "/v1/keys", "/v1/keys/{key_id}", "/v1/audit",
    }  # fmt: skip
    assert client.get("/health").json()["status"] == "ok"
    for path, method in routes:
        if path == "/health":
            continue
        url = path.replace("{name}", "alice").replace("{key_id}", "0123456789ab")
        assert_error(client.request(method.upper(), url), 401, "unauthorized", "Authorization")
        wrong = bearer("mvk_0123456789ab_" + "x" * 43)
        assert_error(client.request(method.upper(), url, headers=wrong), 401, "unauthorized")
        assert_error(client.request(method.upper(), url, headers={"Authorization": keys["admin"]}), 401, "unauthorized")
    assert client.get("/docs").status_code == 200 and client.get("/").text.startswith("<!doctype html>")


def test_model_information_names_the_model_and_its_threshold(served, model_dir):
    server, keys, client = served
    info = client.get("/v1/model", headers=bearer(keys["read"])).json()
    assert info["model"]["fingerprint"] == model_fingerprint(model_dir)
    assert info["model"]["name"] == "TDNN_Fbank" and info["model"]["embedding_size"] == 32
    assert info["threshold"]["value"] == 0.5 and "result.json" in info["threshold"]["source"]
    assert str(model_dir.parent) not in json.dumps(info)  # no server paths in answers
    assert info["limits"]["max_upload_mb"] == 1 and info["limits"]["max_files"] == 3
    assert info["key"]["scope"] == "read" and info["threads"] == 1  # --threads 1


def test_enrol_verify_identify_list_delete(served, model_dir):
    server, keys, client = served
    w, r = bearer(keys["write"]), bearer(keys["read"])
    a1, a2, a3 = (audio_bytes(1.5, 0, s) for s in (1, 2, 3))
    files = [("audio", ("a1.wav", a1)), ("audio", ("a2.flac", audio_bytes(1.5, 0, 2, "FLAC")))]
    resp = client.post("/v1/speakers", data={"name": "alice"}, files=files, headers=w)
    assert resp.status_code == 201 and resp.json() == {"name": "alice", "recordings": 2}
    resp = client.post("/v1/speakers?name=bob", content=audio_bytes(2.0, 1, 4), headers=w)  # a raw body
    assert resp.status_code == 201 and resp.json() == {"name": "bob", "recordings": 1}
    assert_error(client.post("/v1/speakers", data={"name": "alice"}, files={"audio": a3}, headers=w), 409,
                 "speaker_exists", "name")  # fmt: skip
    resp = client.post("/v1/speakers/alice/recordings", files={"audio": ("a3.wav", a3)}, headers=w)
    assert resp.json() == {"name": "alice", "recordings": 3}
    assert client.get("/v1/speakers/alice", headers=r).json() == {"name": "alice", "recordings": 3}
    listed = {s["name"]: s["recordings"] for s in client.get("/v1/speakers", headers=r).json()}
    assert listed["alice"] == 3 and listed["bob"] == 1

    # the numbers are the library's own: the same predictor on the same bytes gives the same values
    with MVectorPredictor(model_dir, audio_db_path=server.audio_db_path, use_gpu=False) as local:
        emb = client.post("/v1/embed", content=a3, headers=r).json()
        assert emb["size"] == 32 and np.allclose(emb["embedding"], local.embed(a3), atol=1e-5)
        pair = client.post("/v1/verify", files={"audio1": a1, "audio2": audio_bytes(1.5, 1, 5)}, headers=r).json()
        score, same = local.contrast(a1, audio_bytes(1.5, 1, 5))
        assert pair["score"] == pytest.approx(score, abs=1e-5) and pair["same_speaker"] == same
        assert pair["threshold"] == 0.5
        who = client.post("/v1/identify?top_k=2", content=a3, headers=r).json()
        expected = local.rank_speakers(a3, top_k=2)
        assert [(c["name"], round(c["score"], 4)) for c in who["candidates"]] == [
            (n, round(s, 4)) for n, s in expected
        ]
        assert who["enrolled"] == len(local.speakers()) and who["name"] == local.recognize(a3)[0]
        # the same open-set rule as the predictor, and the answer says which and what it promises
        assert who["rule"] == local.recognize(a3).rule and who["promise"] and who["gallery_size"] == who["enrolled"]
        mine = client.post("/v1/speakers/alice/verify", content=a3, headers=r).json()
        mean = local.db.mean_embedding("alice")
        assert mine["speaker"] == "alice"
        assert mine["score"] == pytest.approx(local.similarity(local.embed(a3), mean), abs=1e-5)

    # a threshold above any cosine makes everyone unknown
    nobody = client.post("/v1/identify?threshold=1.5", files={"audio": a3}, headers=r).json()
    assert nobody["name"] is None and nobody["unknown"] is True and nobody["candidates"] == []
    assert nobody["rule"] == "threshold" and nobody["threshold"] == 1.5
    strict = client.post("/v1/speakers/alice/verify?threshold=1.5", content=a3, headers=r).json()
    assert strict["same_speaker"] is False

    assert client.delete("/v1/speakers/bob", headers=w).json() == {"removed": "bob"}
    assert_error(client.delete("/v1/speakers/bob", headers=w), 404, "unknown_speaker", "name")
    assert_error(client.get("/v1/speakers/bob", headers=r), 404, "unknown_speaker", "name")
    assert_error(client.post("/v1/speakers/bob/verify", content=a3, headers=r), 404, "unknown_speaker", "name")
    assert_error(client.post("/v1/speakers/bob/recordings", content=a3, headers=w), 404, "unknown_speaker")


def test_scopes_are_enforced_and_a_refusal_changes_nothing(served):
    server, keys, client = served
    r, w = bearer(keys["read"]), bearer(keys["write"])
    clip = audio_bytes(1.0, 2, 7)
    assert_error(client.post("/v1/speakers?name=mallory", content=clip, headers=r), 403, "forbidden")
    assert_error(client.post("/v1/speakers?name=mallory", content=clip), 401, "unauthorized")
    assert_error(client.delete("/v1/speakers/alice", headers=r), 403, "forbidden")
    for key in (r, w):
        assert_error(client.get("/v1/keys", headers=key), 403, "forbidden")
        assert_error(client.post("/v1/keys", json={"scope": "admin"}, headers=key), 403, "forbidden")
        assert_error(client.get("/v1/audit", headers=key), 403, "forbidden")
    names = [s["name"] for s in client.get("/v1/speakers", headers=r).json()]
    assert "mallory" not in names
    audit = client.get("/v1/audit?limit=1000&outcome=all", headers=bearer(keys["admin"])).json()
    refused = [e for e in audit if e["status"] == 403]
    assert {e["action"] for e in refused} >= {"enrol", "delete", "create_key"}
    assert all(e["key_name"] in ("test-read", "test-write") and e["time"].endswith("Z") for e in refused)


def test_bad_input_gets_clear_json_errors(served):
    server, keys, client = served
    w, r = bearer(keys["write"]), bearer(keys["read"])
    before = client.get("/v1/speakers", headers=r).json()
    clip = audio_bytes(1.0, 2, 8)
    assert_error(client.post("/v1/embed", content=b"RIFF not really audio", headers=r), 400, "bad_audio", "audio")
    assert_error(client.post("/v1/embed", files={"audio": ("x.wav", b"\x00" * 500)}, headers=r), 400, "bad_audio")
    assert_error(client.post("/v1/embed", content=b"", headers=r), 400, "missing_field")
    assert_error(client.post("/v1/embed", content=audio_bytes(0.2), headers=r), 400, "audio_too_short", "audio")
    assert_error(client.post("/v1/embed", content=audio_bytes(9.0), headers=r), 413, "audio_too_long", "audio")
    # ten minutes of silence compress into a small FLAC: refused from its header, before it is decoded
    bomb = io.BytesIO()
    soundfile.write(bomb, np.zeros(16000 * 600, dtype="int16"), 16000, format="FLAC", subtype="PCM_16")
    assert len(bomb.getvalue()) < 1024 * 1024
    assert_error(client.post("/v1/embed", content=bomb.getvalue(), headers=r), 413, "audio_too_long")
    big = b"\x00" * (1024 * 1024 + 10)
    assert_error(client.post("/v1/embed", content=big, headers=r), 413, "upload_too_large")
    assert_error(client.post("/v1/embed", files={"audio": ("big.wav", big)}, headers=r), 413, "upload_too_large")
    four = [("audio", (f"{i}.wav", clip)) for i in range(4)]
    assert_error(client.post("/v1/speakers", data={"name": "many"}, files=four, headers=w), 413, "too_many_files")
    assert_error(client.post("/v1/verify", files={"audio1": clip}, headers=r), 400, "missing_field", "audio2")
    assert_error(client.post("/v1/verify", content=clip, headers=r), 400, "bad_request")
    assert_error(client.post("/v1/identify?top_k=0", content=clip, headers=r), 400, "invalid_parameter", "top_k")
    assert_error(client.post("/v1/identify?top_k=two", content=clip, headers=r), 400, "invalid_parameter", "top_k")
    assert_error(client.post("/v1/speakers", files={"audio": clip}, headers=w), 400, "missing_field", "name")
    name_only = b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nnofile\r\n--b--\r\n'
    form = {**w, "Content-Type": "multipart/form-data; boundary=b"}
    assert_error(client.post("/v1/speakers", content=name_only, headers=form), 400, "missing_field", "audio")
    # curl --data-binary labels a raw body application/x-www-form-urlencoded: it is still one recording
    curl_like = {**w, "Content-Type": "application/x-www-form-urlencoded"}
    assert client.post("/v1/embed", content=clip, headers=curl_like).status_code == 200
    assert_error(client.get("/v1/nothing", headers=r), 404, "not_found")
    assert_error(client.put("/v1/speakers", headers=w), 405, "method_not_allowed")
    broken = {**w, "Content-Type": "multipart/form-data; boundary=x"}
    resp = client.post("/v1/speakers", content=b"--x\r\nbroken", headers=broken)
    assert resp.status_code == 400 and resp.json()["code"] in ("bad_request", "missing_field")
    assert client.get("/v1/speakers", headers=r).json() == before


UNSAFE_NAMES = ["../etc", "a/b", "a\\b", "..", ".", "   ", "x\x01y", "tab\there", "x" * 101, "del\x7f", "nul\x00"]
DB_FILES = {f"{base}{suffix}" for base in ("speakers.sqlite", "service.sqlite") for suffix in ("", "-wal", "-shm")}


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_speaker_names_are_refused(served, name):
    server, keys, client = served
    w = bearer(keys["write"])
    resp = client.post("/v1/speakers", data={"name": name}, files={"audio": audio_bytes(1.0)}, headers=w)
    assert_error(resp, 400, "invalid_name", "name")
    names = [s["name"] for s in client.get("/v1/speakers", headers=w).json()]
    assert name.strip() not in names
    assert {p.name for p in Path(server.audio_db_path).iterdir()} <= DB_FILES
    last = client.get("/v1/audit?limit=1&outcome=refused", headers=bearer(keys["admin"])).json()[0]
    assert (last["action"], last["status"]) == ("enrol", 400) and last["target"].isprintable()


def test_names_in_the_path_are_checked_too(served):
    server, keys, client = served
    w = bearer(keys["write"])
    assert_error(client.delete("/v1/speakers/a%01b", headers=w), 400, "invalid_name", "name")
    assert_error(client.get("/v1/speakers/%2E%2E", headers=w), 400, "invalid_name", "name")
    resp = client.delete("/v1/speakers/..%2Fservice.sqlite", headers=w)  # a slash never reaches a name
    assert resp.status_code in (400, 404) and resp.json()["code"] in ("invalid_name", "not_found")
    assert (Path(server.audio_db_path) / "service.sqlite").is_file()


def test_concurrent_enrolments_of_one_name_enrol_it_once(served):
    server, keys, client = served
    w = bearer(keys["write"])

    def enrol(i: int) -> int:
        clip = audio_bytes(1.0, 1, 100 + i)
        return client.post("/v1/speakers", data={"name": "carol"}, files={"audio": clip}, headers=w).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(enrol, range(4)))
    assert codes == [201, 409, 409, 409]
    assert client.get("/v1/speakers/carol", headers=w).json() == {"name": "carol", "recordings": 1}


def test_keys_created_and_revoked_by_the_cli_work_at_once(served):
    server, keys, client = served
    db = server.audio_db_path
    out = subprocess.run(
        [sys.executable, "-m", "mvector.cli.keys", "create", "--audio_db_path", db, "--scope", "read", "--name", "cli"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    token = out.strip().splitlines()[-1]
    key_id = token.split("_")[1]
    assert client.get("/v1/speakers", headers=bearer(token)).status_code == 200
    subprocess.run([sys.executable, "-m", "mvector.cli.keys", "revoke", "--audio_db_path", db, key_id],
                   capture_output=True, timeout=60, check=True)  # fmt: skip
    assert_error(client.get("/v1/speakers", headers=bearer(token)), 401, "unauthorized")

    admin = bearer(keys["admin"])
    made = client.post("/v1/keys", json={"scope": "write", "name": "made by api"}, headers=admin)
    assert made.status_code == 201 and made.json()["scope"] == "write"
    new = made.json()["key"]
    assert client.post("/v1/speakers?name=dave", content=audio_bytes(1.0, 2, 9), headers=bearer(new)).status_code == 201
    listing = client.get("/v1/keys", headers=admin)
    assert new not in listing.text and "hash" not in listing.text
    assert made.json()["key_id"] in {k["key_id"] for k in listing.json()}
    assert_error(client.post("/v1/keys", json={"scope": "root"}, headers=admin), 400, "invalid_parameter", "scope")
    assert_error(client.post("/v1/keys", json={}, headers=admin), 400, "invalid_parameter", "scope")
    assert_error(client.delete("/v1/keys/ffffffffffff", headers=admin), 404, "unknown_key", "key_id")
    assert client.delete(f"/v1/keys/{made.json()['key_id']}", headers=admin).json()["active"] is False
    assert_error(client.get("/v1/speakers", headers=bearer(new)), 401, "unauthorized")
    audit = client.get("/v1/audit?action=enrol", headers=admin).json()
    dave = next(e for e in audit if e["target"] == "dave")
    assert dave["status"] == 201 and dave["key_name"] == "made by api" and dave["client"] == "127.0.0.1"


@pytest.mark.slow
def test_the_database_written_by_the_service_is_read_by_infer_recognition(served, model_dir):
    server, keys, client = served
    w = bearer(keys["write"])
    assert client.post("/v1/speakers?name=erin", content=audio_bytes(1.2, 2, 12), headers=w).status_code == 201
    names = [s["name"] for s in client.get("/v1/speakers", headers=w).json()]
    out = subprocess.run(
        [sys.executable, str(ROOT / "infer_recognition.py"), "--list", "--audio_db_path", server.audio_db_path,
         "--model_path", str(model_dir)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    listed = [line.split("\t")[0].strip() for line in out.stdout.splitlines() if line.strip()]
    assert "erin" in listed and set(names) <= set(listed)


# ---------------------------------------------------------------------- in-process servers with a slow model
class SlowContrast(MVectorPredictor):
    """A predictor whose ``contrast`` takes ``delay`` seconds more, and tells when it starts."""

    delay = 0.6
    started: threading.Event

    def contrast(self, *args, **kwargs):
        self.started.set()
        time.sleep(self.delay)
        return super().contrast(*args, **kwargs)


def _slow_app(model_dir: Path, db: Path, gate: threading.Event | None = None, **settings):
    started = threading.Event()

    def factory():
        if gate is not None:
            assert gate.wait(30)
        p = SlowContrast(model_dir, audio_db_path=db, use_gpu=False)
        p.started = started
        return p

    app = create_app(ServiceConfig(audio_db_path=str(db), threads=SAME_THREADS, **settings), predictor_factory=factory)
    return app, started


def test_503_while_the_model_loads_then_ready(model_dir, tmp_path):
    with KeyStore(tmp_path) as store:
        _, key = store.create("read")
    gate = threading.Event()
    app, _ = _slow_app(model_dir, tmp_path, gate)
    with running(app) as (_, url), httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").status_code == 503 and client.get("/health").json()["status"] == "loading"
        assert_error(client.get("/v1/speakers"), 401, "unauthorized")  # no key: 401 even while loading
        resp = client.post("/v1/embed", content=audio_bytes(1.0), headers=bearer(key))
        assert_error(resp, 503, "model_loading")
        assert int(resp.headers["Retry-After"]) > 0
        gate.set()
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.post("/v1/embed", content=audio_bytes(1.0), headers=bearer(key)).status_code == 200


def test_a_full_queue_answers_503_overloaded(model_dir, tmp_path):
    with KeyStore(tmp_path) as store:
        _, key = store.create("read")
    app, _ = _slow_app(model_dir, tmp_path, max_queue=1)
    clip = audio_bytes(1.0)
    with running(app) as (_, url), httpx.Client(base_url=url, timeout=30) as client:
        app.state.worker.wait_ready(30)

        def verify(_: int) -> httpx.Response:
            return client.post("/v1/verify", files={"audio1": clip, "audio2": clip}, headers=bearer(key))

        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(verify, range(5)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) >= 2 and 503 in codes, codes
    busy = next(a for a in answers if a.status_code == 503)
    assert_error(busy, 503, "overloaded")
    assert busy.headers["Retry-After"] == "1"


def test_graceful_shutdown_finishes_requests_in_flight(model_dir, tmp_path):
    with KeyStore(tmp_path) as store:
        _, key = store.create("read")
    app, started = _slow_app(model_dir, tmp_path)
    clip = audio_bytes(1.0)
    with running(app) as (server, url):
        app.state.worker.wait_ready(30)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post, url + "/v1/verify", files={"audio1": clip, "audio2": clip}, headers=bearer(key), timeout=30
            )
            assert started.wait(30)
            server.should_exit = True  # what SIGTERM / Ctrl-C do
            answer = pending.result(30)
        assert answer.status_code == 200 and answer.json()["same_speaker"] is True
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=5)
    assert app.state.worker.state == "closed"


def test_cors_is_off_unless_configured(model_dir, tmp_path):
    origin = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    for origins, allowed in (((), False), (("https://app.example",), True)):
        config = ServiceConfig(
            model_path=str(model_dir), audio_db_path=str(tmp_path), cors_origins=origins, threads=SAME_THREADS
        )
        app = create_app(config)
        with running(app) as (_, url):
            resp = httpx.options(url + "/v1/verify", headers=origin, timeout=30)
            assert ("access-control-allow-origin" in resp.headers) is allowed
            assert ("access-control-allow-origin" in httpx.get(url + "/health", headers=origin).headers) is allowed


@pytest.mark.slow
def test_serve_cli_errors(model_dir, tmp_path):
    env_code = "import sys; sys.modules['fastapi'] = None; from mvector.cli.serve import main; sys.exit(main())"
    out = subprocess.run([sys.executable, "-c", env_code, "--model_path", str(model_dir)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and 'pip install "mvector[serve]"' in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "mvector.cli.serve", "--model_path", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "does not exist" in out.stderr


def test_serve_with_an_approximate_index_answers_as_exact_search(model_dir, tmp_path):
    """``mvector serve --search_index pq`` over 20,000 speakers (past the index's exact threshold): plain
    identifications go through the PQ index, whose candidates are re-scored exactly, so a recording of an enrolled
    speaker gets the names and scores exact search gives; a bad value is refused before the server starts."""
    pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'mvector[ann]')")
    from mvector.service.state import default_predictor_factory

    db = tmp_path / "db"
    a1, a2 = audio_bytes(1.5, 0, 1), audio_bytes(1.5, 1, 2)
    with MVectorPredictor(model_dir, audio_db_path=db, use_gpu=False) as local:
        rng = np.random.default_rng(0)
        crowd = rng.standard_normal((20_000, local.embd_dim)).astype(np.float32)
        local.db.add_many({f"s{i:05d}": crowd[i] for i in range(len(crowd))})
        local.register("alice", a1)
        local.register("bob", a2)
        exact = {name: local.rank_speakers(audio, top_k=3) for name, audio in (("alice", a1), ("bob", a2))}
    config = ServiceConfig(model_path=str(model_dir), audio_db_path=str(db), use_gpu=False, search_index="pq")
    with default_predictor_factory(config)() as predictor:
        assert predictor.search_index == "pq" and predictor.db._index.kind == "pq"
        assert predictor.rank_speakers(a1, top_k=3) and predictor.db._index.approximate
    with KeyStore(db) as store:
        _, key = store.create("read")
    server = ServerProcess(model_dir, db, extra_args=[*LIMITS, "--search_index", "pq"]).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for name, audio in (("alice", a1), ("bob", a2)):
                who = client.post("/v1/identify?top_k=3", content=audio, headers=bearer(key)).json()
                assert [(c["name"], round(c["score"], 4)) for c in who["candidates"]] == [
                    (n, round(v, 4)) for n, v in exact[name]
                ]
                assert who["candidates"][0]["name"] == name
    finally:
        assert server.stop() == 0, server.log()
    with pytest.raises(ConfigError, match="search_index"):
        ServiceConfig(search_index="annoy")
    out = subprocess.run([sys.executable, "-m", "mvector.cli.serve", "--model_path", str(model_dir),
                          "--search_index", "annoy"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "--search_index" in out.stderr and "Traceback" not in out.stderr


def test_a_model_that_fails_to_load_is_reported_not_hidden(tmp_path):
    from mvector.errors import CheckpointError

    with KeyStore(tmp_path) as store:
        _, key = store.create("read")

    def broken():
        raise CheckpointError("model.pt: damaged")

    app = create_app(ServiceConfig(audio_db_path=str(tmp_path), threads=SAME_THREADS), predictor_factory=broken)
    with running(app) as (_, url), httpx.Client(base_url=url, timeout=30) as client:
        app.state.worker.wait_ready(30)
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "damaged" not in health.text  # no details without a key
        assert_error(client.get("/v1/speakers"), 401, "unauthorized")
        body = assert_error(client.get("/v1/model", headers=bearer(key)), 503, "model_failed")
        assert "damaged" in body["message"]
        assert_error(client.post("/v1/embed", content=audio_bytes(1.0), headers=bearer(key)), 503, "model_failed")


class Picky(MVectorPredictor):
    """Stands for enrolment quality checks: one name warns, another is refused (both naming the server's folder)."""

    def register(self, name, audio, sample_rate=None, **write_options):
        if name == "loud":
            warnings.warn(f"{self.audio_db_path}/x.wav: recording 0 is clipped", UserWarning, stacklevel=2)
        if name == "quiet":
            raise AudioError(f"enrolment of {name!r} refused ({self.audio_db_path}): too little speech")
        return super().register(name, audio, sample_rate, **write_options)


def test_enrolment_warnings_and_refusals_reach_the_client_without_server_paths(model_dir, tmp_path):
    db = tmp_path / "db"
    with KeyStore(db) as store:
        _, key = store.create("write")
    app = create_app(
        ServiceConfig(audio_db_path=str(db), threads=SAME_THREADS),
        predictor_factory=lambda: Picky(model_dir, audio_db_path=db, use_gpu=False),
    )
    with running(app) as (_, url), httpx.Client(base_url=url, timeout=30, headers=bearer(key)) as client:
        app.state.worker.wait_ready(30)
        loud = client.post("/v1/speakers?name=loud", content=audio_bytes(1.0))
        assert loud.status_code == 201 and loud.json()["warnings"] == ["db/x.wav: recording 0 is clipped"]
        body = assert_error(client.post("/v1/speakers?name=quiet", content=audio_bytes(1.0)), 400, "bad_audio")
        assert "too little speech" in body["message"] and str(tmp_path) not in body["message"]
        assert [s["name"] for s in client.get("/v1/speakers").json()] == ["loud"]
        assert "warnings" not in client.get("/v1/speakers/loud").json()


def test_answers_name_no_server_folder(tmp_path):
    """Where a threshold came from is said without the server's folders: a model folder holding its evaluation
    (result.json) is named by its own name in /v1/verify, /v1/identify and /v1/model, never by its path."""
    model = tiny_checkpoint(tmp_path / "secret-place" / "model")
    (model / "result.json").write_text(json.dumps({"threshold": 0.3, "eer": 0.1}), encoding="utf-8")
    db = tmp_path / "secret-place" / "db"
    with KeyStore(db) as store:
        _, key = store.create("write")
    app = create_app(ServiceConfig(model_path=str(model), audio_db_path=str(db), threads=SAME_THREADS))
    with running(app) as (_, url), httpx.Client(base_url=url, timeout=60) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = bearer(key)
        assert client.post("/v1/speakers?name=alice", content=audio_bytes(1.5, 0, 1), headers=r).status_code == 201
        answers = [
            client.post("/v1/identify", content=audio_bytes(1.5, 0, 2), headers=r).json(),
            client.post("/v1/verify", files={"audio1": audio_bytes(1.5, 0, 3), "audio2": audio_bytes(1.5, 1, 4)},
                        headers=r).json(),
            client.get("/v1/model", headers=r).json(),
        ]  # fmt: skip
    assert "result.json" in answers[0]["promise"]  # the source is still said ...
    for answer in answers:
        assert "secret-place" not in json.dumps(answer), answer  # ... without the folders around it
