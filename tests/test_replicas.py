"""Two ``mvector serve`` replicas (separate working folders, two loopback ports) against one PostgreSQL.

What the replicas must do together: an enrolment on one is found by the other at its next request, a deletion on
one is honoured by the other; a key created or revoked through one is honoured or refused by the other at once;
one audit log names the replica of every line; a create of one name on both at once enrols it once; a key scoped
to one gallery can neither see nor change another. And faults: PostgreSQL killed in the middle of 40 enrolments
and restarted: every answer is a 2xx or a JSON 503 within a bounded time, the replicas recover by themselves (no
restart), and nothing that was answered 2xx is lost; a wrong password stops ``mvector serve`` at start-up with one
line. The module runs its own PostgreSQL server (it kills it).
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
import uuid
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

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
VOICES = make_voices(6, seed=27)
ARGS = ["--threads", "1", "--max_files", "3"]
BOUND_S = 25.0  # the longest an answer may take while PostgreSQL is away


def clip(voice: int, seed: int = 0, seconds: float = 1.0) -> bytes:
    wave = synthesize_utterance(VOICES[voice], seconds, rng=np.random.default_rng(seed))
    buf = io.BytesIO()
    soundfile.write(buf, wave, 16000, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def cluster(own_postgres_server, tmp_path_factory):
    """Two replicas a and b on one fresh database; yields (server, url, keys, clients a and b, processes)."""
    pg = own_postgres_server
    url = pg.new_database()
    model = tiny_checkpoint(tmp_path_factory.mktemp("model"))
    with KeyStore(url, replica="setup") as store:
        keys = {s: store.create(s, name=f"test-{s}")[1] for s in ("read", "write", "admin")}
        keys["house"] = store.create("write", name="house app", galleries=["house"])[1]
    procs = []
    for name in ("a", "b"):
        work = tmp_path_factory.mktemp(f"replica-{name}")  # separate working folders
        procs.append(
            ServerProcess(model, url, extra_args=[*ARGS, "--replica_name", name], log_path=work / "serve.log",
                          cwd=work).start(timeout=120)
        )
    clients = [httpx.Client(base_url=p.url, timeout=60) for p in procs]
    try:
        yield pg, url, keys, clients, procs
    finally:
        for c in clients:
            c.close()
        for p in procs:
            p.stop()
    for p in procs:
        assert "Traceback" not in p.log(), p.log()[-3000:]


def auth(keys: dict, scope: str = "write", idem: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {keys[scope]}"}
    if idem is not None:
        headers["Idempotency-Key"] = idem
    return headers


def enrol(client, keys, name: str, voice: int, scope: str = "write", gallery: str | None = None, idem=None):
    params = {"gallery": gallery} if gallery else {}
    files = [("audio", (f"{name}.wav", clip(voice, seed), "audio/wav")) for seed in (1, 2)]
    return client.post("/v1/speakers", params=params, data={"name": name}, files=files,
                       headers=auth(keys, scope, idem))


def identify(client, keys, voice: int, scope: str = "read", **params):
    return client.post("/v1/identify", params=params, files={"audio": ("q.wav", clip(voice, 9), "audio/wav")},
                       headers=auth(keys, scope))


def names(client, keys, scope: str = "read", **params) -> list[str]:
    answer = client.get("/v1/speakers", params=params, headers=auth(keys, scope))
    assert answer.status_code == 200, answer.text
    return [s["name"] for s in answer.json()]


def test_an_enrolment_on_one_replica_is_found_by_the_other(cluster):
    _, _, keys, (a, b), _ = cluster
    assert enrol(a, keys, "alice", 0).status_code == 201
    assert enrol(b, keys, "bob", 1).status_code == 201
    found = identify(b, keys, 0, top_k=2).json()
    assert {c["name"] for c in found["candidates"]} == {"alice", "bob"} and found["enrolled"] == 2
    assert identify(a, keys, 1, top_k=2).json()["enrolled"] == 2
    assert b.delete("/v1/speakers/alice", headers=auth(keys)).status_code == 200
    assert "alice" not in names(a, keys)  # deleted on b, gone on a at its next request
    assert [c["name"] for c in identify(a, keys, 0, top_k=5).json()["candidates"]] == ["bob"]


def test_keys_created_or_revoked_on_one_replica_hold_on_the_other(cluster):
    _, _, keys, (a, b), _ = cluster
    made = a.post("/v1/keys", json={"scope": "read", "name": "made on a"}, headers=auth(keys, "admin"))
    assert made.status_code == 201, made.text
    token, key_id = made.json()["key"], made.json()["key_id"]
    assert b.get("/v1/speakers", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert b.delete(f"/v1/keys/{key_id}", headers=auth(keys, "admin")).status_code == 200
    assert a.get("/v1/speakers", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    log = a.get("/v1/audit", params={"limit": 100}, headers=auth(keys, "admin")).json()
    replicas = {(e["action"], e["replica"]) for e in log}
    assert ("create_key", "a") in replicas and ("revoke_key", "b") in replicas


def test_a_create_of_one_name_on_both_replicas_enrols_it_once(cluster):
    _, _, keys, (a, b), _ = cluster
    for round_ in range(3):
        name = f"race{round_}"
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda c, n=name: enrol(c, keys, n, 2), (a, b)))
        assert sorted(r.status_code for r in answers) == [201, 409], [r.text for r in answers]
        speaker = a.get(f"/v1/speakers/{name}", headers=auth(keys, "read")).json()
        assert speaker["recordings"] == 2  # one enrolment's two recordings, never both


def test_a_key_scoped_to_one_gallery_can_neither_see_nor_change_another(cluster):
    _, _, keys, (a, b), _ = cluster
    assert enrol(a, keys, "carol", 3, scope="house", gallery="house").status_code == 201
    assert enrol(b, keys, "carol", 4, gallery="office").status_code == 201  # one name, two galleries
    assert names(b, keys, scope="house", gallery="house") == ["carol"]
    for client in (a, b):
        for params in ({"gallery": "office"}, {}):  # another gallery, or the default one
            assert client.get("/v1/speakers", params=params, headers=auth(keys, "house")).status_code == 403
            assert identify(client, keys, 4, scope="house", **params).status_code == 403
            assert enrol(client, keys, "mallory", 5, scope="house", **params).status_code == 403
            deleted = client.delete("/v1/speakers/carol", params=params, headers=auth(keys, "house"))
            assert deleted.status_code == 403
    assert names(a, keys, gallery="office") == ["carol"]  # untouched
    found = identify(a, keys, 3, gallery="house", top_k=3).json()
    assert [c["name"] for c in found["candidates"]] == ["carol"] and found["enrolled"] == 1
    restricted = identify(b, keys, 1, top_k=5, among=["bob"]).json()
    assert [c["name"] for c in restricted["candidates"]] == ["bob"] and restricted["gallery_size"] == 1
    assert a.get("/v1/speakers", params={"gallery": "nowhere"}, headers=auth(keys, "read")).status_code == 404


def test_postgres_killed_during_40_enrolments_loses_nothing_acknowledged(cluster):
    pg, _, keys, (a, b), procs = cluster
    acknowledged: dict[str, str] = {}
    unavailable = 0
    slowest = 0.0
    pending = [(f"burst{i:02d}", str(uuid.uuid4())) for i in range(40)]
    killed = restarted = False
    deadline = time.monotonic() + 240
    i = 0
    while pending and time.monotonic() < deadline:
        name, idem = pending[0]
        client = (a, b)[i % 2]
        i += 1
        if len(acknowledged) == 12 and not killed:
            pg.kill()  # SIGKILL in the middle of the burst
            killed, down_since = True, time.monotonic()
        if killed and not restarted and time.monotonic() - down_since > 4 and unavailable >= 4:
            pg.start()
            restarted = True
        started = time.monotonic()
        answer = enrol(client, keys, name, i % 6, idem=idem)
        slowest = max(slowest, time.monotonic() - started)
        if answer.status_code in (200, 201):
            acknowledged[name] = idem
            pending.pop(0)
        else:
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] in ("store_unavailable", "overloaded"), answer.text
            assert "test-password" not in answer.text
            unavailable += 1
            time.sleep(0.2)  # then retry with the same Idempotency-Key
    assert killed and restarted and unavailable >= 4
    assert not pending, f"not enrolled after the restart: {pending[:3]}"
    assert slowest < BOUND_S
    assert all(p.proc.poll() is None for p in procs)  # no service restart
    for client in (a, b):
        listed = set(names(client, keys))
        assert set(acknowledged) <= listed
        for name in acknowledged:  # every acknowledged enrolment is whole
            assert client.get(f"/v1/speakers/{name}", headers=auth(keys, "read")).json()["recordings"] == 2


def test_wrong_password_stops_serve_at_start_up_with_one_line(cluster, tmp_path):
    pg, url, *_ = cluster
    model = tiny_checkpoint(tmp_path / "model")
    wrong = url.replace("test-password-1", "not-the-password")
    done = subprocess.run(
        [sys.executable, "-m", "mvector.cli.serve", "--model_path", str(model), "--audio_db_path", wrong,
         "--port", "0"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "password authentication failed" in lines[0], done.stderr
    assert "not-the-password" not in done.stderr and "Traceback" not in done.stderr
