"""``mvector gallery copy``: a gallery with its keys and audit log moves folder -> PostgreSQL -> folder unchanged,
checked by counts and a SHA-256; a target of another model, a non-empty target and a conflicting key are refused
with one line and nothing written. Real stores: SQLite folders and a throwaway PostgreSQL (tests/postgres_server.py),
the real console script in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mvector.inference.speaker_db import SpeakerDatabase
from mvector.service.keys import KeyStore
from mvector.store import open_store
from mvector.store.copy import copy_store, gallery_digest, read_gallery

DIM = 8
ROOT = Path(__file__).resolve().parents[1]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_copy(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "mvector", "gallery", "copy", *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )


def fill(location: str, rng: np.random.Generator) -> tuple[str, dict]:
    """Two galleries (one with a cohort, speakers with several recordings, one removed), keys and audit rows."""
    with SpeakerDatabase(location, "model-a", DIM) as db:
        db.add_many({f"spk{i:03d}": unit(rng, 1 + i % 3) for i in range(60)})
        db.add("spk001", unit(rng, 2))  # a speaker added to later: times differ
        db.remove("spk007")
        db.set_cohort(unit(rng, 20), source="twenty others")
    with SpeakerDatabase(location, "model-a", DIM, gallery="house") as db:
        db.add_many({"anna": unit(rng, 2), "ben": unit(rng, 1)})
    with KeyStore(location, replica="r-test") as keys:
        admin, token = keys.create("admin", name="ops")
        reader, _ = keys.create("read", name="app", galleries=["house"])
        keys.revoke(reader.key_id)
        keys.audit(admin, "enrol", "anna", 201, client="10.0.0.1", gallery="house")
        for _ in range(3):  # aggregated refusals: one row counted 3 times
            keys.audit(admin, "delete", "nobody", 404, client="10.0.0.2", gallery="default")
    return token, {"admin": admin.key_id, "reader": reader.key_id}


def contents(location: str) -> dict:
    """What a copy must carry, read through the public objects."""
    store = open_store(location)
    try:
        out = {}
        for name in store.gallery_names():
            with SpeakerDatabase(store, "model-a", DIM, gallery=name) as db:
                out[name] = {
                    "names": db.names(),
                    "utterances": {n: db.utterance_embeddings(n).tobytes() for n in db.names()},
                    "means": {n: db.mean_embedding(n).tobytes() for n in db.names()},
                    "times": {n: db.enrolment_times(n) for n in db.names()},
                    "cohort": None if db.cohort() is None else db.cohort().tobytes(),
                    "cohort_source": db.cohort_source,
                }
        with KeyStore(store, replica="reader") as keys:
            out["keys"] = [(k.key_id, k.name, k.scope, k.galleries, k.revoked) for k in keys.list()]
            out["audit"] = [
                (e.time, e.key_id, e.action, e.target, e.status, e.client, e.count, e.last, e.replica, e.gallery)
                for e in keys.audit_log(100, outcome="all")
            ]
        return out
    finally:
        store.close()


def test_copy_folder_to_postgres_and_back(tmp_path, postgres_url):
    rng = np.random.default_rng(4)
    folder, back = str(tmp_path / "audio_db"), str(tmp_path / "back_db")
    token, ids = fill(folder, rng)
    before = contents(folder)
    assert before["default"]["names"] and len(before["audit"]) == 2

    there = run_copy(folder, postgres_url)
    assert there.returncode == 0, there.stderr
    digests = [line.split("sha256 ")[1].split()[0] for line in there.stdout.splitlines() if "sha256" in line]
    assert len(digests) == 2, there.stdout
    assert "keys: 2 copied" in there.stdout and "audit rows: 2" in there.stdout
    assert "test-password" not in there.stdout + there.stderr  # the URL's password is never printed

    in_postgres = contents(postgres_url)
    assert in_postgres == before
    with SpeakerDatabase(postgres_url, "model-a", DIM) as db:  # a replica on PostgreSQL finds the copied speakers
        hit = db.search(db.mean_embedding("spk005"))[0][0]
        assert hit[0] == "spk005" and hit[1] == pytest.approx(1.0, abs=1e-5)
    with KeyStore(postgres_url) as keys:  # the same key works there, the revoked one stays revoked
        assert keys.authenticate(token).key_id == ids["admin"]
        assert keys.get(ids["reader"]).revoked is not None

    back_run = run_copy(postgres_url, back)
    assert back_run.returncode == 0, back_run.stderr
    assert [line.split("sha256 ")[1].split()[0] for line in back_run.stdout.splitlines() if "sha256" in line] == digests
    assert contents(back) == before


def test_refusals_leave_the_target_untouched(tmp_path, postgres_url):
    rng = np.random.default_rng(5)
    folder = str(tmp_path / "audio_db")
    fill(folder, rng)
    with SpeakerDatabase(postgres_url, "model-b", DIM) as other:  # the target's gallery belongs to another model
        other.add("zed", unit(rng, 1))
    refused = run_copy(folder, postgres_url)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "another model" in lines[0] and "Traceback" not in refused.stderr, refused.stderr
    with SpeakerDatabase(postgres_url, "model-b", DIM) as other:
        assert other.names() == ["zed"]
    assert open_store(postgres_url).gallery_names() == ["default"]  # nothing else written

    second = str(tmp_path / "second_db")  # a target that already holds speakers: never merged
    with SpeakerDatabase(second, "model-a", DIM, gallery="house") as db:
        db.add("carl", unit(rng, 1))
    refused = run_copy(folder, second, "--gallery", "house")
    assert refused.returncode == 2 and "already holds 1 speaker" in refused.stderr, refused.stderr
    with SpeakerDatabase(second, "model-a", DIM, gallery="house") as db:
        assert db.names() == ["carl"]


def test_digest_and_checks(tmp_path):
    """The digest is the same for the same rows in any store and changes with any byte; a conflicting key id and
    kept recordings are refused."""
    rng = np.random.default_rng(6)
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    fill(src, rng)
    report = copy_store(open_store(src), open_store(dst), keys=False)
    for copied in report.galleries:
        rows = read_gallery(open_store(dst).gallery(copied.gallery), "model-a", DIM)
        assert gallery_digest(rows.name, rows.names, rows.utterances, rows.cohort) == copied.sha256
        changed = [u.copy() for u in rows.utterances]
        changed[0][0, 0] += 1e-6
        assert gallery_digest(rows.name, rows.names, changed, rows.cohort) != copied.sha256
    # a key id the target holds with other content: refused before any key is written
    with KeyStore(src) as keys:
        key_id = keys.list()[0].key_id
    other = open_store(dst).keys()
    from dataclasses import replace

    with KeyStore(src) as keys:
        row = keys._keys.get_key(key_id)
    other.add_key(replace(row, scope="read"))
    with pytest.raises(Exception, match="exists there with other content"):
        copy_store(open_store(src), open_store(dst), galleries=[])
    assert [k.key_id for k in other.list_keys()] == [key_id]
    # a gallery that keeps recordings as files needs --without_audio
    audio = str(tmp_path / "with_audio")
    with SpeakerDatabase(audio, "model-a", DIM, keep_audio=True) as db:
        db.add("dora", unit(rng, 1), audio=[np.zeros(1600, np.float32)])
    refused = run_copy(audio, str(tmp_path / "c"))
    assert refused.returncode == 2 and "--without_audio" in refused.stderr
    done = run_copy(audio, str(tmp_path / "c"), "--without_audio")
    assert done.returncode == 0, done.stderr
    with SpeakerDatabase(str(tmp_path / "c"), "model-a", DIM) as db:
        assert db.names() == ["dora"] and db.audio_files("dora") == []
