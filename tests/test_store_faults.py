"""PostgreSQL faults at the store: a server killed under a burst of writes, wrong credentials, a wrong host.

The module runs its own throwaway server (it kills and restarts it). What must hold: every call ends within a
bounded time with :class:`StoreUnavailableError` while the server is away; the same objects work again once it is
back (no reopening); every write that returned is there afterwards; no speaker is half-written.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mvector.errors import StoreUnavailableError
from mvector.inference.speaker_db import SpeakerDatabase
from mvector.service.keys import KeyStore
from mvector.store import open_store

DIM = 8
BOUND_S = 20.0  # the longest any call may take while the server is away (connect timeout 5 s, statements 15 s)


@pytest.fixture
def server(own_postgres_server):
    yield own_postgres_server
    if not (own_postgres_server.data / "postmaster.pid").exists():  # a failed test left it stopped
        own_postgres_server.start()


def test_writes_during_a_kill_lose_nothing_acknowledged_and_recover(server):
    url = server.new_database()
    db = SpeakerDatabase(url, "fp", DIM)
    keys = KeyStore(url, replica="r1")
    info, token = keys.create("write", name="app")
    rng = np.random.default_rng(3)
    acknowledged: list[str] = []
    acked_at: list[float] = []
    refused: list[tuple[str, float]] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            name = f"spk{i:03d}"
            started = time.monotonic()
            try:
                db.add(name, rng.standard_normal((2, DIM)).astype(np.float32))
                acknowledged.append(name)
                acked_at.append(time.monotonic())
            except StoreUnavailableError as err:
                refused.append((str(err), time.monotonic() - started))
                time.sleep(0.05)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(1.0)
    server.kill()  # SIGKILL the server in the middle of the burst
    time.sleep(2.0)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="mv_test"):
        db.search(np.ones(DIM, np.float32))
    with pytest.raises(StoreUnavailableError):
        keys.authenticate(token)
    assert time.monotonic() - started < 2 * BOUND_S
    server.start()
    restarted = time.monotonic()
    time.sleep(1.5)
    stop.set()
    thread.join(60)
    assert refused, "no write was refused while the server was down"
    assert any(t < restarted - 3 for t in acked_at), "no write before the kill"
    assert any(t > restarted for t in acked_at), "the writer did not recover by itself after the restart"
    assert all(seconds < BOUND_S for _, seconds in refused), max(s for _, s in refused)
    assert "password" not in " ".join(m for m, _ in refused) and "test-password" not in refused[0][0]
    # the same objects work again, and every acknowledged enrolment is there, whole
    assert keys.authenticate(token) is not None
    db.add("after", np.ones(DIM, np.float32))
    names = set(db.names())
    assert set(acknowledged) <= names, sorted(set(acknowledged) - names)
    for name in names:
        assert db.num_utterances(name) == len(db.utterance_embeddings(name))  # no half-written speaker
    fresh = SpeakerDatabase(url, "fp", DIM)
    assert fresh.names() == db.names()
    assert fresh.search(db.mean_embedding("after"))[0][0][0] == "after"
    for handle in (fresh, db, keys):
        handle.close()


def test_a_server_lost_while_a_version_read_is_out_is_a_clear_error_and_recovers(server):
    """The version read of a search goes out before the search: the server killed before its answer is read gives
    StoreUnavailableError from whichever call comes next (never a psycopg error), and the objects work again."""
    url = server.new_database()
    with SpeakerDatabase(url, "fp", DIM) as db:
        db.add("alice", np.ones(DIM, np.float32))
        gallery = db._gallery
        import psycopg

        def lost() -> None:
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        gallery._conn.get()
        gallery._conn.pending = lost  # an answer still to read when the connection broke
        with pytest.raises(StoreUnavailableError, match="version failed.*closed the connection"):
            gallery.count()
        assert gallery.count() == 1  # connected again
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="mv_test"):
            with gallery.reading_version() as version_now:
                server.kill()
                gallery.count()  # another read first: the answer, or the lost connection, is taken before it
                version_now()
        with pytest.raises(StoreUnavailableError, match="mv_test"):
            db.search(np.ones(DIM, np.float32))
        assert time.monotonic() - started < 2 * BOUND_S
        server.start()
        assert db.search(np.ones(DIM, np.float32))[0][0][0] == "alice"
        assert gallery.version() == 1


def test_wrong_credentials_and_wrong_host_fail_at_once_with_one_line(server):
    url = server.new_database()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as wrong_password:
        open_store(url.replace("test-password-1", "not-it")).check()
    with pytest.raises(StoreUnavailableError) as wrong_port:
        open_store(url.replace(f":{server.port}/", ":1/")).check()
    assert time.monotonic() - started < BOUND_S
    for err in (wrong_password.value, wrong_port.value):
        text = str(err)
        assert "\n" not in text and "not-it" not in text and "***" in text
    assert "password authentication failed" in str(wrong_password.value)
