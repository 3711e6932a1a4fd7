"""Tests of the SQLite speaker database: round trips, names, model checks, concurrency and crash safety."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mvector.errors import MVectorError, SpeakerDBError
from mvector.inference.speaker_db import DB_FILENAME, SpeakerDatabase
from mvector.inference.speaker_files import folder_name
from mvector.inference.speaker_names import validate_name

REPO = Path(__file__).resolve().parents[1]
DIM = 16
SIDE_FILES = [DB_FILENAME + "-shm", DB_FILENAME + "-wal"]  # while a connection is open


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def db(tmp_path: Path):
    with SpeakerDatabase(tmp_path / "audio_db", "fp-model-a", DIM) as database:
        yield database


def check_consistent(path: Path, dim: int) -> int:
    """Invariants that must hold after any crash; returns the number of speakers."""
    conn = sqlite3.connect(str(path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        speakers = conn.execute("SELECT id, mean, n_utts FROM speakers").fetchall()
        for sid, mean, n_utts in speakers:
            rows = conn.execute("SELECT embedding FROM utterances WHERE speaker_id = ?", (sid,)).fetchall()
            assert len(rows) == n_utts >= 1
            embs = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(-1, dim)
            expected = unit(unit(embs.astype(np.float64)).sum(axis=0))
            np.testing.assert_allclose(np.frombuffer(mean, dtype=np.float32), expected, atol=1e-5)
        orphans = conn.execute(
            "SELECT COUNT(*) FROM utterances WHERE speaker_id NOT IN (SELECT id FROM speakers)"
        ).fetchone()[0]
        assert orphans == 0
        return len(speakers)
    finally:
        conn.close()


def run_child(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env)


# ---------------------------------------------------------------------------------------------------- basics
def test_add_search_remove_round_trip(db: SpeakerDatabase, rng: np.random.Generator) -> None:
    centres = unit(rng.standard_normal((20, DIM)))
    db.add_many({f"spk{i:02d}": centres[i] for i in range(20)})
    assert len(db) == 20 and "spk07" in db and "nobody" not in db
    assert db.names() == [f"spk{i:02d}" for i in range(20)]
    queries = centres + 0.05 * rng.standard_normal(centres.shape)
    hits = db.search(queries)
    assert [row[0][0] for row in hits] == db.names()
    assert all(len(row) == 1 and 0.9 < row[0][1] <= 1.0 + 1e-6 for row in hits)
    db.remove("spk07")
    assert len(db) == 19 and "spk07" not in db
    assert db.search(queries[7], top_k=1)[0][0][0] != "spk07"
    assert db.search(queries[8])[0][0][0] == "spk08"  # the row moved into the hole is still found
    with pytest.raises(SpeakerDBError, match="unknown speaker 'spk07'.*spk0"):
        db.remove("spk07")


def test_top_k_order_and_scores(db: SpeakerDatabase, rng: np.random.Generator) -> None:
    embs = unit(rng.standard_normal((50, DIM))).astype(np.float32)
    db.add_many({f"s{i}": embs[i] for i in range(50)})
    query = rng.standard_normal((3, DIM))
    hits = db.search(query, top_k=5)
    expected = unit(query) @ embs.T
    for row, exp in zip(hits, expected):
        order = np.argsort(-exp)[:5]
        assert [name for name, _ in row] == [f"s{i}" for i in order]
        np.testing.assert_allclose([score for _, score in row], exp[order], atol=1e-5)
    # top_k larger than the database returns everyone, best first
    everyone = db.search(query[0], top_k=500)[0]
    assert len(everyone) == 50
    assert [s for _, s in everyone] == sorted((s for _, s in everyone), reverse=True)
    with pytest.raises(SpeakerDBError, match="top_k"):
        db.search(query, top_k=0)


def test_mean_and_appended_utterances(db: SpeakerDatabase, rng: np.random.Generator) -> None:
    a, b, c = rng.standard_normal((3, DIM)) * np.array([[1.0], [5.0], [0.2]])  # different norms
    db.add("alice", np.stack([a, b]))
    np.testing.assert_allclose(db.mean_embedding("alice"), unit(unit(a) + unit(b)), atol=1e-6)
    db.add("alice", c)  # appends a third utterance; the mean is over all three
    assert db.num_utterances("alice") == 3
    np.testing.assert_allclose(db.utterance_embeddings("alice"), np.stack([a, b, c]).astype(np.float32))
    np.testing.assert_allclose(db.mean_embedding("alice"), unit(unit(a) + unit(b) + unit(c)), atol=1e-6)
    db.add_many({"alice": np.stack([a, a]), "bob": b, "bob ": c})  # existing speaker + one name given twice
    assert db.num_utterances("alice") == 5 and db.num_utterances("bob") == 2 and len(db) == 2
    np.testing.assert_allclose(db.mean_embedding("bob"), unit(unit(b) + unit(c)), atol=1e-6)
    expected = unit(3 * unit(a) + unit(b) + unit(c))
    np.testing.assert_allclose(db.mean_embedding("alice"), expected, atol=1e-6)
    ((name, score),) = db.search(expected)[0]
    assert name == "alice" and score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(SpeakerDBError, match="unknown speaker 'alicia'.*alice"):
        db.mean_embedding("alicia")


def test_data_persists_and_reopens(tmp_path: Path, rng: np.random.Generator) -> None:
    embs = rng.standard_normal((5, DIM)).astype(np.float32)
    with SpeakerDatabase(tmp_path, "fp", DIM) as first:
        first.add_many({f"p{i}": embs[i] for i in range(5)})
        first.remove("p2")
    with SpeakerDatabase(tmp_path, "fp", DIM) as again:
        assert again.names() == ["p0", "p1", "p3", "p4"]
        assert again.search(embs[3])[0][0][0] == "p3"
    assert check_consistent(tmp_path / DB_FILENAME, DIM) == 4


def test_model_mismatch_refused(tmp_path: Path) -> None:
    SpeakerDatabase(tmp_path, "aaaaaaaaaaaaFIRST-model", DIM).close()
    with pytest.raises(SpeakerDBError, match=r"another model.*aaaaaaaaaaaa\b.*bbbbbbbbbbbb\b.*new database folder"):
        SpeakerDatabase(tmp_path, "bbbbbbbbbbbbOTHER-model", DIM)
    with pytest.raises(SpeakerDBError, match=f"embedding size {DIM}.*embedding size {DIM * 2}"):
        SpeakerDatabase(tmp_path, "aaaaaaaaaaaaFIRST-model", DIM * 2)
    SpeakerDatabase(tmp_path, "aaaaaaaaaaaaFIRST-model", DIM).close()  # the right model still opens it


def test_not_a_database_file(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SpeakerDBError, match=DB_FILENAME):
        SpeakerDatabase(tmp_path, "fp", DIM)


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("../x", "'/'"),
        ("a/b", "'/'"),
        ("a\\b", "'/'"),
        ("", "empty"),
        ("   ", "empty"),
        ("\x00", "NUL"),
        ("bob\x00", "NUL"),
        ("tab\there", "control"),
        ("new\nline", "control"),
        (".", "not allowed"),
        ("..", "not allowed"),
        ("x" * 101, "101 characters"),
        (DB_FILENAME, "reserved"),
        (None, "string"),
    ],
)
def test_bad_names_rejected(db: SpeakerDatabase, bad: object, reason: str) -> None:
    with pytest.raises(SpeakerDBError, match=reason):
        validate_name(bad)  # type: ignore[arg-type]
    with pytest.raises(SpeakerDBError, match=reason):
        db.add(bad, np.ones(DIM))  # type: ignore[arg-type]
    with pytest.raises(SpeakerDBError, match=reason):
        db.add_many({"fine": np.ones(DIM), bad: np.ones(DIM)})  # type: ignore[dict-item]
    assert len(db) == 0  # nothing of a rejected batch is written


def test_good_names_kept(db: SpeakerDatabase) -> None:
    for name in ["  Zoë Müller  ", "李雷", "x" * 100, ".hidden", "a.b", "O'Brien (2)"]:
        assert validate_name(name) == name.strip()
        db.add(name, np.ones(DIM))
    assert "Zoë Müller" in db and len(db) == 6


def test_bad_embeddings_rejected(db: SpeakerDatabase) -> None:
    with pytest.raises(SpeakerDBError, match=rf"shape \[{DIM}\] or \[n, {DIM}\].*\[8\]"):
        db.add("a", np.ones(8))
    with pytest.raises(SpeakerDBError, match="NaN"):
        db.add_many({"a": np.ones(DIM), "b": np.full(DIM, np.nan)})
    with pytest.raises(SpeakerDBError, match="'z'.*all zeros"):
        db.add_many({"a": np.ones(DIM), "z": np.zeros((2, DIM))})
    with pytest.raises(SpeakerDBError, match="no embeddings"):
        db.add("a", np.zeros((0, DIM)))
    db.add("a", np.ones(DIM))
    with pytest.raises(SpeakerDBError, match="search query.*shape"):
        db.search(np.ones((2, 3)))
    assert len(db) == 1


def test_empty_database_search(db: SpeakerDatabase) -> None:
    with pytest.raises(SpeakerDBError, match="no speakers enrolled"):
        db.search(np.ones(DIM))
    db.add("a", np.ones(DIM))
    db.remove("a")
    with pytest.raises(SpeakerDBError, match="no speakers enrolled") as info:
        db.search(np.ones(DIM))
    assert isinstance(info.value, MVectorError)


def test_keep_audio_writes_wavs(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "db"
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)  # 1 s at 8 kHz
    with SpeakerDatabase(folder, "fp", DIM, keep_audio=True) as db:
        db.add("carol", rng.standard_normal((2, DIM)), audio=[tone, tone[:4000]], sample_rate=8000)
        db.add("carol", rng.standard_normal(DIM), audio=[np.zeros(16000, np.float32)])
        files = db.audio_files("carol")
        carol = folder / folder_name("carol")
        assert len(files) == 3 and all(f.parent == carol and f.exists() for f in files)
        wave, sr = soundfile.read(str(files[0]), dtype="float32")
        assert sr == 16000 and abs(len(wave) - 16000) <= 2 and 0.45 < np.abs(wave).max() < 0.55
        assert soundfile.info(str(files[1])).frames == pytest.approx(8000, abs=2)
        assert not [p for p in carol.iterdir() if p.suffix != ".wav"]  # no temporary files left
        with pytest.raises(SpeakerDBError, match="one waveform per embedding"):
            db.add("dave", rng.standard_normal((2, DIM)), audio=[tone])
        with pytest.raises(SpeakerDBError, match="NaN"):
            db.add("dave", rng.standard_normal(DIM), audio=[np.full(100, np.nan)])
        assert "dave" not in db and not (folder / folder_name("dave")).exists()
        db.remove("carol")
        assert not carol.exists() and sorted(p.name for p in folder.iterdir()) == [DB_FILENAME, *SIDE_FILES]
    with SpeakerDatabase(tmp_path / "db2", "fp", DIM) as plain:  # keep_audio=False: no files
        plain.add("erin", rng.standard_normal(DIM), audio=[tone])
        assert plain.audio_files("erin") == [] and not (tmp_path / "db2" / "erin").exists()


def test_stale_cache_invalidated_between_connections(tmp_path: Path, rng: np.random.Generator) -> None:
    embs = unit(rng.standard_normal((4, DIM)))
    with SpeakerDatabase(tmp_path, "fp", DIM) as one, SpeakerDatabase(tmp_path, "fp", DIM) as two:
        one.add("a", embs[0])
        assert two.search(embs[0])[0][0][0] == "a"  # two loads its cache
        one.add("b", embs[1])
        assert two.search(embs[1])[0][0][0] == "b"  # picked up on the next search
        one.remove("a")
        assert [n for n, _ in two.search(embs[0], top_k=5)[0]] == ["b"]
        one.add("b", -embs[1] + 0.2 * embs[2])  # changes b's mean
        np.testing.assert_allclose(two.search(one.mean_embedding("b"))[0][0][1], 1.0, atol=1e-5)
        two.add("c", embs[3])  # two writes after its cache went stale: it must not lose one's changes
        assert [n for n, _ in one.search(embs[3], top_k=5)[0]][0] == "c"
        assert sorted(n for n, _ in two.search(embs[3], top_k=5)[0]) == ["b", "c"]


def test_stale_cache_invalidated_across_processes(tmp_path: Path, rng: np.random.Generator) -> None:
    embs = unit(rng.standard_normal((2, DIM)))
    with SpeakerDatabase(tmp_path, "fp", DIM) as db:
        db.add("local", embs[0])
        assert db.search(embs[1])[0][0][0] == "local"
        code = """
            import sys, numpy as np
            from mvector.inference.speaker_db import SpeakerDatabase
            with SpeakerDatabase(sys.argv[1], "fp", int(sys.argv[2])) as db:
                db.add("remote", np.array([float(x) for x in sys.argv[3].split(",")]))
        """
        child = run_child(code, str(tmp_path), str(DIM), ",".join(map(str, embs[1])))
        assert child.wait(timeout=60) == 0
        ((name, score),) = db.search(embs[1])[0]
        assert name == "remote" and score == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------------------------- processes
CONCURRENT_WRITER = """
    import sys, numpy as np
    from mvector.inference.speaker_db import SpeakerDatabase
    import os, time
    folder, prefix, dim, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rng = np.random.default_rng(len(prefix))
    while not os.path.exists(go):  # start together
        time.sleep(0.005)
    with SpeakerDatabase(folder, "fp", dim) as db:
        for i in range(50):
            db.add(f"{prefix}{i:02d}", rng.standard_normal(dim))
            if i % 10 == 0:
                db.search(rng.standard_normal(dim), top_k=3)
"""


def test_two_processes_register_concurrently(tmp_path: Path) -> None:
    folder = tmp_path / "shared"  # created concurrently by both processes
    go = tmp_path / "go"
    children = [run_child(CONCURRENT_WRITER, str(folder), prefix, str(DIM), str(go)) for prefix in ("left", "right")]
    time.sleep(0.3)
    go.touch()
    assert [c.wait(timeout=120) for c in children] == [0, 0]
    assert check_consistent(folder / DB_FILENAME, DIM) == 100
    with SpeakerDatabase(folder, "fp", DIM) as db:
        names = db.names()
        assert sorted(names) == sorted([f"left{i:02d}" for i in range(50)] + [f"right{i:02d}" for i in range(50)])
        for name in ("left00", "right49"):
            assert db.search(db.mean_embedding(name))[0][0][0] == name


CRASHING_WRITER = """
    import os, sys, time, numpy as np
    import mvector.inference.speaker_db as sdb
    folder, dim, mode, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    rng = np.random.default_rng(os.getpid())
    if mode == "hook":
        def stall():
            open(flag, "w").close()
            time.sleep(60)
        sdb._before_commit = stall
    db = sdb.SpeakerDatabase(folder, "fp", dim)
    open(flag + ".ready", "w").close()
    round_ = 0
    while True:
        round_ += 1
        names = {f"r{os.getpid()}-{round_}-{i}": rng.standard_normal((1 + i % 3, dim)) for i in range(100)}
        db.add_many(names)
        db.add(f"r{os.getpid()}-{round_}-0", rng.standard_normal(dim))
        db.remove(f"r{os.getpid()}-{round_}-1")
"""


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"child never wrote {path}"
        time.sleep(0.01)


def test_kill_inside_write_transaction_leaves_db_consistent(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "db"
    with SpeakerDatabase(folder, "fp", DIM) as db:
        db.add_many({f"base{i}": rng.standard_normal(DIM) for i in range(10)})
    flag = tmp_path / "inside-commit"
    child = run_child(CRASHING_WRITER, str(folder), str(DIM), "hook", str(flag))
    try:
        wait_for(flag)  # the child is inside add_many's transaction, just before COMMIT
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert check_consistent(folder / DB_FILENAME, DIM) == 10  # the killed write left no trace
    with SpeakerDatabase(folder, "fp", DIM) as db:
        assert sorted(db.names()) == sorted(f"base{i}" for i in range(10))
        db.add("after", rng.standard_normal(DIM))  # still writable
        assert db.search(db.mean_embedding("after"))[0][0][0] == "after"


def test_kill_at_random_times_leaves_db_consistent(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    randomiser = random.Random(7)
    counts = []
    for attempt in range(3):
        flag = tmp_path / f"flag{attempt}"
        child = run_child(CRASHING_WRITER, str(folder), str(DIM), "random", str(flag))
        try:
            wait_for(Path(str(flag) + ".ready"))
            time.sleep(randomiser.uniform(0.02, 0.3))
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=30)
        counts.append(check_consistent(folder / DB_FILENAME, DIM))
    print("speakers after each kill:", counts)
    assert counts == sorted(counts)  # committed writes survive later crashes
    with SpeakerDatabase(folder, "fp", DIM) as db:
        assert len(db) == counts[-1]
        db.add("survivor", np.ones(DIM))
        assert db.search(np.ones(DIM))[0][0] == ("survivor", pytest.approx(1.0, abs=1e-5))


def test_folder_layout_default_gallery_and_named_galleries(tmp_path: Path, rng: np.random.Generator) -> None:
    """A folder's own speakers.sqlite is the gallery 'default' (the layout of earlier versions, unchanged); other
    galleries are galleries/<name>/speakers.sqlite, each with its own version counter."""
    folder = tmp_path / "audio_db"
    emb = rng.standard_normal(DIM).astype(np.float32)
    with SpeakerDatabase(folder, "fp", DIM) as db:
        db.add("alice", emb)
    with SpeakerDatabase(folder, "fp", DIM, gallery="house", keep_audio=True) as house:
        house.add("alice", emb, audio=[np.zeros(1600, np.float32)])
        kept = house.audio_files("alice")[0]
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(DB_FILENAME)) == ["galleries"]
    assert (folder / "galleries" / "house" / DB_FILENAME).is_file()
    assert kept.parent.parent == folder / "galleries" / "house"  # its kept audio lives beside it
    with sqlite3.connect(str(folder / DB_FILENAME)) as conn:  # the default gallery is the plain old file
        assert conn.execute("SELECT name FROM speakers").fetchall() == [("alice",)]
        assert conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0] == 1


def test_best_columns_equal_a_full_sort_on_long_rows():
    """The top-k shortcut (argmax for one, block maxima for a few of a long row) picks what a full sort picks,
    the tail past the last whole block and rows with ties included."""
    from mvector.inference.speaker_db import _best_columns

    rng = np.random.default_rng(0)
    for n in (10, 4096 * 16, 4096 * 16 + 17, 200_003):
        for k in (1, 2, 5, 16, 17):
            if k >= n:
                continue
            scores = rng.standard_normal((3, n)).astype(np.float32)
            scores[1, -3:] = 10.0  # the best three in the tail
            scores[2] = np.round(scores[2], 1)  # many ties
            got = np.sort(np.take_along_axis(scores, _best_columns(scores, k), axis=1), axis=1)
            np.testing.assert_array_equal(got, np.sort(scores, axis=1)[:, -k:])
            assert all(len(set(row)) == k for row in _best_columns(scores, k).tolist())  # k distinct columns


def test_a_reopened_gallery_searches_without_the_name_map(tmp_path: Path, rng: np.random.Generator) -> None:
    """A full load keeps no name -> id map until something needs it (a replica that only searches never does);
    changes caught up from another writer before it is built, and writes after, give the same answers."""
    voices = {f"s{i}": rng.standard_normal(8) for i in range(6)}
    with SpeakerDatabase(tmp_path, "model-a", embd_dim=8) as db:
        db.add_many(voices)
    with SpeakerDatabase(tmp_path, "model-a", embd_dim=8) as reader, \
            SpeakerDatabase(tmp_path, "model-a", embd_dim=8) as writer:
        assert reader.search(voices["s3"], top_k=1)[0][0][0] == "s3"
        assert reader._cache._id_of is None  # searched by row: the map is not built
        writer.remove("s1")
        writer.add("s9", voices["s1"])
        assert reader.search(voices["s1"], top_k=1)[0][0][0] == "s9"  # caught up: a removal and a new speaker
        assert reader._cache._id_of is None
        assert [n for n, _ in reader.search(voices["s2"], top_k=6, among=["s2", "s9"])[0]] == ["s2", "s9"]
        cache = reader._cache
        assert cache._id_of == {n: int(cache.ids[cache.names.index(n)]) for n in cache.names}
        reader.add("s2", voices["s4"], mode="append")  # through the built map
        reader.remove("s0")
        assert sorted(cache.id_of) == ["s2", "s3", "s4", "s5", "s9"]
        with pytest.raises(SpeakerDBError):
            reader.add("s3", voices["s3"], mode="create")
    with SpeakerDatabase(tmp_path, "model-a", embd_dim=8) as db:
        assert sorted(db.names()) == ["s2", "s3", "s4", "s5", "s9"]
        assert db.search(voices["s1"], top_k=1)[0][0][0] == "s9"
