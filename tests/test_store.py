"""The store suite: every test runs against both stores behind the seam (the SQLite folder and PostgreSQL).

The tests go through the public objects (:class:`SpeakerDatabase`, :class:`KeyStore`) as the predictor and the
service use them; two objects on one location stand for two processes or two replicas (each keeps its own
in-memory matrix, each with its own connection). The PostgreSQL side needs a server (tests/postgres_server.py);
without one it skips with the reason, and under ``MVECTOR_REQUIRE_POSTGRES=1`` (CI) it fails.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mvector.errors import SpeakerDBError, SpeakerExistsError, StoreError, UnknownSpeakerError
from mvector.inference.idempotency import IdempotentWrite, Replayed
from mvector.inference.speaker_db import SpeakerDatabase
from mvector.service.keys import KeyStore, KeyStoreError
from mvector.store import DEFAULT_GALLERY, open_store

DIM = 16
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path) -> str:
    """A fresh store location of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "audio_db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(27)


def unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_enrol_search_read_back_remove(location, rng):
    a, b = unit(rng, 3), unit(rng, 2)
    with SpeakerDatabase(location, "fp", DIM) as db:
        db.add("alice", a)
        db.add_many({"bob": b, "carol": unit(rng)[0]})
        assert db.names() == ["alice", "bob", "carol"] and len(db) == 3
        assert "alice" in db and "nobody" not in db
        assert db.num_utterances("alice") == 3
        np.testing.assert_array_equal(db.utterance_embeddings("bob"), b)
        mean = a.sum(0) / np.linalg.norm(a.sum(0))
        np.testing.assert_allclose(db.mean_embedding("alice"), mean, atol=1e-6)
        assert db.search(a[0])[0][0][0] == "alice"
        first, last = db.enrolment_times("alice")
        assert first is not None and first <= last
        db.add("alice", unit(rng), mode="append")
        assert db.num_utterances("alice") == 4
        db.remove_utterance("alice", 0)
        assert db.num_utterances("alice") == 3
        np.testing.assert_allclose(db.utterance_embeddings("alice")[0], a[1])
        assert db.rebuild() == 3
        db.remove("bob")
        assert db.names() == ["alice", "carol"]
        with pytest.raises(UnknownSpeakerError, match="bob"):
            db.num_utterances("bob")
        with pytest.raises(SpeakerExistsError):
            db.add("alice", unit(rng), mode="create")
        with pytest.raises(UnknownSpeakerError):
            db.add("dave", unit(rng), mode="append")


def test_cohort_and_as_norm(location, rng):
    cohort = unit(rng, 40)
    with SpeakerDatabase(location, "fp", DIM) as db:
        assert db.cohort() is None and db.cohort_source is None
        db.add_many({f"s{i}": unit(rng)[0] for i in range(5)})
        db.set_cohort(cohort, source="forty others")
        np.testing.assert_array_equal(db.cohort(), cohort)
        assert db.cohort_source == "forty others"
        hits = db.search(unit(rng)[0], top_k=5, score_norm="as_norm", cohort_top_k=10)[0]
        assert len(hits) == 5
        db.clear_cohort()
        with pytest.raises(SpeakerDBError, match="cohort"):
            db.search(unit(rng)[0], score_norm="as_norm")


def test_a_gallery_of_another_model_is_refused(location, rng):
    with SpeakerDatabase(location, "model-a", DIM) as db:
        db.add("alice", unit(rng))
    with pytest.raises(SpeakerDBError, match="another model"):
        SpeakerDatabase(location, "model-b", DIM)
    with pytest.raises(SpeakerDBError, match="another model"):
        SpeakerDatabase(location, "model-a", DIM + 1)


def test_two_handles_catch_up_before_answering(location, rng):
    """Two objects on one store = two replicas: each sees the other's enrolment and removal at its next call."""
    x, y = unit(rng, 2)
    with SpeakerDatabase(location, "fp", DIM) as one, SpeakerDatabase(location, "fp", DIM) as two:
        one.add("alice", x)
        assert two.search(x)[0][0][0] == "alice"  # two loads everything
        two.add("bob", y)
        assert one.search(y)[0][0][0] == "bob"  # one fetches only the change
        two.remove("alice")
        assert [n for n, _ in one.search(x, top_k=5)[0]] == ["bob"]
        one.add("alice", x)
        one.add("alice", y, mode="append")  # a new mean for alice
        assert two.mean_embedding("alice").tolist() == one.mean_embedding("alice").tolist()
        assert two.search((x + y) / 2)[0][0][0] == "alice"


def test_a_search_that_overlaps_its_version_read_answers_from_the_newest_gallery(location, rng):
    """A replica searches its cached means while its version read is out (PostgreSQL: the query is sent first and
    answered meanwhile); when another replica wrote in between, that answer is dropped: it catches up and searches
    again, also when a name in ``among`` was unknown to its cache. The read always ends, so the connection serves
    the next call, even when the caller's work failed or another read came first."""
    x, y = unit(rng, 2)
    with SpeakerDatabase(location, "fp", DIM) as one, SpeakerDatabase(location, "fp", DIM) as two:
        one.add("alice", x)
        assert two.search(y)[0][0][0] == "alice"  # two's cache holds alice only
        one.add("bob", y)
        assert two.search(y)[0][0][0] == "bob"
        one.add("carol", -x)
        assert [n for n, _ in two.search(x, among=["carol"])[0]] == ["carol"]
        assert two.search(x, top_k=3, score_norm=None)[0][0][0] == "alice"
        gallery = two._gallery
        with pytest.raises(ValueError, match="failed"):
            with gallery.reading_version():
                raise ValueError("the caller's work failed")
        assert gallery.count() == 3 and gallery.version() == one._gallery.version() == 3
        with gallery.reading_version() as version_now:
            assert gallery.count() == 3  # another read on the connection first: the answer is taken before it
            assert version_now() == version_now() == 3
        one.remove("carol")
        with gallery.reading_version() as version_now:
            assert version_now() == 4


def test_the_record_of_removals_stays_bounded_and_a_replica_far_behind_reloads(location, rng, monkeypatch):
    """Each removal forgets the removal records more than REMOVALS_KEPT writes old; a replica that far behind
    cannot rely on them and reloads the whole gallery (so it still never names a removed speaker), one closer
    behind catches up from the records."""
    from mvector.store import base

    monkeypatch.setattr(base, "REMOVALS_KEPT", 4)
    rows = unit(rng, 12)
    with SpeakerDatabase(location, "fp", DIM) as writer, SpeakerDatabase(location, "fp", DIM) as near, \
            SpeakerDatabase(location, "fp", DIM) as far:  # fmt: skip
        writer.add_many({f"s{i:02d}": rows[i] for i in range(12)})
        assert far.search(rows[0])[0][0][0] == "s00" and near.search(rows[0])[0][0][0] == "s00"
        for i in range(8):  # eight writes: far falls more than four behind
            writer.remove(f"s{i:02d}")
            if i == 5:
                assert near.search(rows[11])[0][0][0] == "s11"  # near catches up two writes before the end
        version = writer._version
        remaining = [n for n, _ in far.search(rows[0], top_k=12)[0]]
        assert sorted(remaining) == [f"s{i:02d}" for i in range(8, 12)]  # a full reload: no removed speaker
        assert sorted(n for n, _ in near.search(rows[0], top_k=12)[0]) == sorted(remaining)
        records = _removal_versions(location)
        assert records and min(records) > version - 4 and len(records) <= 4  # the old records are gone


def _removal_versions(location: str) -> list[int]:
    """The versions in the gallery's record of removals, read straight from the store's tables."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location) as conn:
            return [int(r[0]) for r in conn.execute("SELECT version FROM mvector_removed WHERE gallery = 'default'")]
    import sqlite3

    from mvector.store.sqlite import DB_FILENAME

    db = Path(location) / DB_FILENAME
    conn = sqlite3.connect(db)
    try:
        return [int(r[0]) for r in conn.execute("SELECT version FROM removed")]
    finally:
        conn.close()


def test_create_races_between_handles_enrol_one_speaker(location, rng):
    """Many writers creating one name at once from two handles: exactly one wins, the others are refused."""
    dbs = [SpeakerDatabase(location, "fp", DIM) for _ in range(2)]
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def create(i: int) -> None:
        start.wait()
        try:
            dbs[i % 2].add("same", unit(np.random.default_rng(i)), mode="create")
            outcomes.append("created")
        except SpeakerExistsError:
            outcomes.append("exists")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert sorted(outcomes) == ["created"] + ["exists"] * 7
        assert dbs[0].num_utterances("same") == 1 and dbs[1].names() == ["same"]
    finally:
        for db in dbs:
            db.close()


def test_append_and_remove_of_one_name_are_serialised(location, rng):
    """Additions and removals of one speaker from two handles: a removed speaker is never brought back by an
    addition (append refuses an unknown name), and the final count matches the writes that succeeded."""
    one, two = SpeakerDatabase(location, "fp", DIM), SpeakerDatabase(location, "fp", DIM)
    one.add("zoe", unit(rng))
    appended, removed = [], []

    def appender() -> None:
        for i in range(15):
            try:
                one.add("zoe", unit(np.random.default_rng(100 + i)), mode="append")
                appended.append(i)
            except UnknownSpeakerError:
                pass

    def remover() -> None:
        time.sleep(0.01)
        try:
            two.remove("zoe")
            removed.append(True)
        except UnknownSpeakerError:
            pass

    threads = [threading.Thread(target=appender), threading.Thread(target=remover)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert removed == [True]
        assert "zoe" not in one and "zoe" not in two  # nothing appended after the removal revived her
    finally:
        one.close()
        two.close()


def test_idempotent_write_is_done_once(location, rng):
    with SpeakerDatabase(location, "fp", DIM) as db:
        record = IdempotentWrite("key-1", "retry-1", "hash-1", 201, lambda n: {"name": "a", "recordings": n})
        db.add("a", unit(rng, 2), record=record)
        with pytest.raises(Replayed) as replay:
            db.add("a", unit(rng, 2), record=record)
        assert replay.value.stored.answer == {"name": "a", "recordings": 2}
        assert db.num_utterances("a") == 2
        assert db.idempotent_answer("key-1", "retry-1").status == 201
        assert db.idempotent_answer("key-2", "retry-1") is None  # another owner: another scope


def test_galleries_keep_names_and_searches_apart(location, rng):
    x, y = unit(rng, 2)
    store = open_store(location)
    with SpeakerDatabase(store, "fp", DIM, gallery="house") as house, \
            SpeakerDatabase(store, "fp", DIM, gallery="office") as office, \
            SpeakerDatabase(store, "fp", DIM) as default:
        house.add("alice", x)
        office.add("alice", y)  # the same name in another gallery is another speaker
        office.add("bob", x)
        assert house.names() == ["alice"] and office.names() == ["alice", "bob"] and default.names() == []
        assert [n for n, _ in house.search(x, top_k=5)[0]] == ["alice"]  # bob (office) is never a candidate
        np.testing.assert_allclose(house.mean_embedding("alice"), x, atol=1e-6)
        np.testing.assert_allclose(office.mean_embedding("alice"), y, atol=1e-6)
        office.remove("alice")
        assert "alice" in house
        assert store.gallery_names() == [DEFAULT_GALLERY, "house", "office"]
    store.close()
    with pytest.raises(StoreError, match="gallery name"):
        SpeakerDatabase(location, "fp", DIM, gallery="../x")


def test_search_restricted_to_a_list_of_names(location, rng):
    x = unit(rng, 4)
    with SpeakerDatabase(location, "fp", DIM) as db:
        db.add_many({f"s{i}": x[i] for i in range(4)})
        full = dict(db.search(x[0], top_k=4)[0])
        hits = db.search(x[0], top_k=4, among=["s2", "s3", "s2"])[0]
        assert [n for n, _ in hits] == sorted(["s2", "s3"], key=lambda n: -full[n])
        assert all(abs(full[n] - s) < 1e-6 for n, s in hits)  # the same scores as over everyone
        with pytest.raises(UnknownSpeakerError, match="nobody"):
            db.search(x[0], among=["s1", "nobody"])
        with pytest.raises(SpeakerDBError, match="non-empty list"):
            db.search(x[0], among=[])


def test_bulk_enrolment_loads_in_a_fresh_handle(location, rng):
    many = unit(rng, 3000)
    with SpeakerDatabase(location, "fp", DIM) as db:
        db.add_many({f"spk{i:05d}": many[i] for i in range(len(many))})
    with SpeakerDatabase(location, "fp", DIM) as fresh:
        assert len(fresh) == 3000
        hits = fresh.search(many[[7, 2999]])
        assert [h[0][0] for h in hits] == ["spk00007", "spk02999"]


KILLED_WRITER = """
import os, sys
import numpy as np
from mvector.inference import speaker_db as sdb
location, dim = sys.argv[1], int(sys.argv[2])
db = sdb.SpeakerDatabase(location, "fp", dim)
db.add("before", np.ones(dim, "float32"))
sdb._before_commit = lambda: os._exit(9)  # killed after writing, before the commit
db.add_many({f"half{i}": np.ones(dim, "float32") for i in range(50)})
"""


def test_a_writer_killed_before_its_commit_leaves_nothing(location):
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, location, str(DIM)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 9, done.stderr
    with SpeakerDatabase(location, "fp", DIM) as db:
        assert db.names() == ["before"]
        db.add("after", np.ones(DIM, "float32"))  # the gallery is writable (no lock left behind)
        assert len(db) == 2


def test_keys_and_audit_shared_between_two_replicas(location):
    one, two = KeyStore(location, replica="replica-a"), KeyStore(location, replica="replica-b")
    try:
        info, token = one.create("write", name="app", galleries=["house"])
        seen = two.authenticate(token)
        assert seen is not None and seen.galleries == ("house",)
        assert seen.may_use("house") and not seen.may_use("office")
        two.revoke(info.key_id)
        assert one.authenticate(token) is None  # revoked on b, refused on a at once
        one.audit(seen, "enrol", "alice", 201, client="10.0.0.1", gallery="house")
        two.audit(None, "delete", "bob", 404, client="10.0.0.2")
        two.audit(None, "delete", "bob", 404, client="10.0.0.2")
        entries = one.audit_log(outcome="all")
        assert [(e.action, e.replica, e.gallery, e.count) for e in entries] == [
            ("delete", "replica-b", None, 2),
            ("enrol", "replica-a", "house", 1),
        ]
        admin, _ = one.create("admin", name="ops")
        assert admin.galleries is None and admin.may_use("anything")
        with pytest.raises(KeyStoreError, match="admin key reaches every gallery"):
            one.create("admin", galleries=["house"])
        with pytest.raises(KeyStoreError, match="gallery name"):
            one.create("read", galleries=["Bad Name"])
        assert [k.key_id for k in two.list()] == [info.key_id, admin.key_id]
    finally:
        one.close()
        two.close()


def test_a_url_of_another_kind_is_refused_not_taken_as_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match="unknown store URL scheme 'mysql'"):
        SpeakerDatabase("mysql://user:pw@host/db", "fp", DIM)
    assert list(tmp_path.iterdir()) == []  # no folder named "mysql:" was made
