"""The speaker database under misuse and crashes: one rule for names, writes serialised with their checks, private
files, folder names that cannot collide, clean-up of what a kill left, and idempotency records that exist exactly
when their write committed. Real SQLite files and real subprocesses killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mvector.errors import InvalidNameError, SpeakerDBError, SpeakerExistsError, UnknownSpeakerError
from mvector.inference import speaker_db as sdb
from mvector.inference.idempotency import IdempotentWrite, Replayed
from mvector.inference.speaker_db import DB_FILENAME, SpeakerDatabase
from mvector.inference.speaker_files import folder_name
from mvector.inference.speaker_names import validate_name

REPO = Path(__file__).resolve().parents[1]
DIM = 8


def emb(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------------------------- names
LOOK_ALIKE_REFUSED = {
    "alice\u200b": "invisible",  # zero-width space
    "\u200b\u200b\u200b": "invisible",  # a name made only of zero-width spaces
    "al\u00adice": "invisible",  # soft hyphen
    "ali\u2060ce": "invisible",  # word joiner
    "\u3164": "invisible",  # Hangul filler (a letter that draws nothing)
    "\uffa0x": "invisible",  # halfwidth Hangul filler (NFKC makes it U+3164)
    "alice\u202e": "bidirectional",  # right-to-left override
    "\u2066alice\u2069": "bidirectional",  # isolates
    "\u0430lice": "mixes Cyrillic and Latin",  # Cyrillic а
    "\u03bfscar": "mixes Greek and Latin",  # Greek ο
    "\u0410\u03b1": "mixes Cyrillic and Greek",
    "bob\x1b[2J": "control",
    "a\u2028b": "control",  # line separator
    "x\ue000": "control",  # private use
}


@pytest.mark.parametrize("name,reason", sorted(LOOK_ALIKE_REFUSED.items()))
def test_look_alike_and_hidden_names_are_refused(name: str, reason: str) -> None:
    with pytest.raises(InvalidNameError, match=reason):
        validate_name(name)


@pytest.mark.parametrize(
    "name,stored",
    [
        ("\uff41\uff4c\uff49\uff43\uff45", "alice"),  # fullwidth
        ("Jose\u0301", "José"),  # decomposed accent: composed
        ("\ufb01ona", "fiona"),  # ligature
        ("Ann \u3000 Lee", "Ann Lee"),  # ideographic and repeated spaces
        ("Αλέξανδρος", "Αλέξανδρος"),
        ("Иван", "Иван"),
        ("山田 Taro", "山田 Taro"),
        ("やまだ 山田 ヤマダ", "やまだ 山田 ヤマダ"),
        ("김철수 Kim", "김철수 Kim"),
        ("محمد", "محمد"),
        ("Zoë-O'Brien 2", "Zoë-O'Brien 2"),
        ("Bob 👍", "Bob 👍"),
    ],
)
def test_names_are_normalised_and_real_names_pass(name: str, stored: str) -> None:
    assert validate_name(name) == stored


def test_the_database_applies_the_rule_so_look_alikes_are_one_speaker(tmp_path: Path) -> None:
    with SpeakerDatabase(tmp_path, "fp", DIM) as db:
        db.add("alice", emb(0))
        db.add("\uff41\uff4c\uff49\uff43\uff45", emb(1))  # fullwidth: the same speaker, one more recording
        assert db.names() == ["alice"] and db.num_utterances("alice") == 2
        assert "\uff41\uff4c\uff49\uff43\uff45" in db and db.num_utterances("\uff41lice") == 2
        with pytest.raises(SpeakerExistsError):
            db.add("ａｌｉｃｅ", emb(2), mode="create")
        for bad in LOOK_ALIKE_REFUSED:
            with pytest.raises(InvalidNameError):
                db.add(bad, emb(3))
            with pytest.raises(InvalidNameError):
                db.add_many({bad: emb(3)})
        assert db.names() == ["alice"]


def test_a_name_stored_before_the_rule_can_still_be_read_and_removed(tmp_path: Path) -> None:
    with SpeakerDatabase(tmp_path, "fp", DIM) as db:
        db.add("x", emb(0))
    with sqlite3.connect(str(tmp_path / DB_FILENAME)) as conn:  # as an older mvector stored it
        conn.execute("UPDATE speakers SET name = ? WHERE name = 'x'", ("\u0430lice",))
    with SpeakerDatabase(tmp_path, "fp", DIM) as db:
        assert db.names() == ["\u0430lice"] and db.num_utterances("\u0430lice") == 1
        with pytest.raises(InvalidNameError):
            db.add("\u0430lice", emb(1))  # no new writes under the old name
        db.remove("\u0430lice")
        assert len(db) == 0


# ---------------------------------------------------------------------------------------------- serialised writes
def test_append_and_create_check_existence_inside_the_write(tmp_path: Path) -> None:
    with SpeakerDatabase(tmp_path, "fp", DIM) as db:
        with pytest.raises(UnknownSpeakerError):
            db.add("carol", emb(0), mode="append")
        db.add("carol", emb(0), mode="create")
        with pytest.raises(SpeakerExistsError):
            db.add("carol", emb(1), mode="create")
        db.add("carol", emb(1), mode="append")
        assert db.num_utterances("carol") == 2
        with pytest.raises(SpeakerDBError, match="mode must be one of"):
            db.add("carol", emb(1), mode="upsert")


@pytest.mark.parametrize("first", ["add", "remove"])
def test_an_add_and_a_remove_of_one_speaker_never_interleave(tmp_path: Path, first: str) -> None:
    """Two connections (as two processes): whichever takes the write lock first wins as a whole; a removal is
    never undone by an addition that started before it."""
    with SpeakerDatabase(tmp_path, "fp", DIM, keep_audio=True) as setup:
        setup.add("carol", emb(0), audio=[np.zeros(1600, np.float32)])
    adder, remover = SpeakerDatabase(tmp_path, "fp", DIM, keep_audio=True), SpeakerDatabase(tmp_path, "fp", DIM)
    inside, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def stall() -> None:
        if threading.current_thread().name == "stalled":
            inside.set()
            assert release.wait(20)

    def run(name: str, action) -> threading.Thread:
        def target() -> None:
            try:
                action()
                outcome[name] = "ok"
            except SpeakerDBError as err:
                outcome[name] = err

        thread = threading.Thread(target=target, name=name)
        thread.start()
        return thread

    sdb._before_commit = stall
    try:
        add = lambda: adder.add("carol", emb(1, 3), audio=[np.zeros(1600, np.float32)] * 3, mode="append")  # noqa: E731
        remove = lambda: remover.remove("carol")  # noqa: E731
        if first == "add":
            t1 = run("stalled", add)
            assert inside.wait(20)
            t2 = run("second", remove)
        else:
            t1 = run("stalled", remove)
            assert inside.wait(20)
            t2 = run("second", add)
        time.sleep(0.3)
        assert "second" not in outcome  # waiting for the write lock, not interleaving
        release.set()
        t1.join(30), t2.join(30)
    finally:
        sdb._before_commit = None
    if first == "add":
        assert outcome == {"stalled": "ok", "second": "ok"}
    else:
        assert outcome["stalled"] == "ok" and isinstance(outcome["second"], UnknownSpeakerError)
    with SpeakerDatabase(tmp_path, "fp", DIM) as db:
        assert "carol" not in db and len(db) == 0
    assert not (tmp_path / folder_name("carol")).exists() and not (tmp_path / ".trash").exists()
    adder.close(), remover.close()


REMOVER = """
import sys
from mvector.inference.speaker_db import SpeakerDatabase
print("removing", flush=True)
with SpeakerDatabase(sys.argv[1], "fp", 8) as db:
    db.remove("carol")
    print("removed", flush=True)
"""


def test_a_remove_in_another_process_waits_for_an_add_in_progress(tmp_path: Path) -> None:
    with SpeakerDatabase(tmp_path, "fp", DIM) as db:
        db.add("carol", emb(0))
        inside = threading.Event()

        def stall() -> None:
            inside.set()
            child = subprocess.Popen(
                [sys.executable, "-c", REMOVER, str(tmp_path)], env=child_env(), stdout=subprocess.PIPE, text=True
            )
            assert child.stdout.readline().strip() == "removing"
            time.sleep(0.5)  # the other process is blocked on the write lock meanwhile
            assert child.poll() is None
            holder.append(child)

        holder: list[subprocess.Popen] = []
        sdb._before_commit = stall
        try:
            db.add("carol", emb(1), mode="append")
        finally:
            sdb._before_commit = None
        child = holder[0]
        assert child.stdout.readline().strip() == "removed" and child.wait(30) == 0
        assert "carol" not in db
        with pytest.raises(UnknownSpeakerError):
            db.add("carol", emb(2), mode="append")  # a late addition does not bring carol back
        assert "carol" not in db


# ---------------------------------------------------------------------------------------------- files
def test_files_and_folders_are_private_whatever_the_umask(tmp_path: Path) -> None:
    from mvector.service.keys import KeyStore

    old = os.umask(0o022)
    try:
        folder = tmp_path / "new" / "db"
        with SpeakerDatabase(folder, "fp", DIM, keep_audio=True) as db:
            db.add("alice", emb(0, 2), audio=[np.zeros(1600, np.float32)] * 2)
            db.search(emb(0)[0])
            with KeyStore(folder) as store:
                store.create("read")
                bases = (DB_FILENAME, "service.sqlite")
                wal = [folder / f"{base}{suffix}" for base in bases for suffix in ("-wal", "-shm")]
                assert all(p.exists() for p in wal)
                for path in [folder / DB_FILENAME, folder / "service.sqlite", *wal, *db.audio_files("alice")]:
                    assert mode_of(path) == 0o600, path
                for path in (folder, folder.parent, folder / folder_name("alice")):
                    assert mode_of(path) == 0o700, path
    finally:
        os.umask(old)


def test_folder_names_cannot_collide_and_old_folders_still_open(tmp_path: Path) -> None:
    long = "語" * 100
    short = folder_name(long)  # a name equal to another speaker's folder name
    silence = [np.zeros(1600, np.float32)]
    with SpeakerDatabase(tmp_path, "fp", DIM, keep_audio=True) as db:
        db.add(long, emb(0), audio=silence)
        db.add(short, emb(1), audio=silence)
        folders = {p.parent.name for n in (long, short) for p in db.audio_files(n)}
        assert len(folders) == 2 and all(len(f.encode()) <= 120 for f in folders)
        db.remove(short)
        assert [p.exists() for p in db.audio_files(long)] == [True]
        # the layout of earlier versions: plain names, and two speakers sharing one folder
        db.add("bob", emb(2), audio=silence)
        db.add("bob2", emb(3), audio=silence)
    with sqlite3.connect(str(tmp_path / DB_FILENAME)) as conn:
        for name in ("bob", "bob2"):
            (path,) = conn.execute(
                "SELECT u.audio FROM utterances u JOIN speakers s ON s.id = u.speaker_id WHERE s.name = ?", (name,)
            ).fetchone()
            old = f"bob/{Path(path).name}"
            (tmp_path / "bob").mkdir(exist_ok=True)
            os.replace(tmp_path / path, tmp_path / old)
            os.rmdir((tmp_path / path).parent)
            conn.execute("UPDATE utterances SET audio = ? WHERE audio = ?", (old, path))
    with SpeakerDatabase(tmp_path, "fp", DIM, keep_audio=True) as db:  # opens; nothing referenced is cleaned away
        assert [p.parent.name for p in db.audio_files("bob")] == ["bob"] and db.audio_files("bob")[0].exists()
        db.add("bob", emb(4), audio=silence)  # new recordings go to the hashed folder
        assert [p.parent.name for p in db.audio_files("bob")] == ["bob", folder_name("bob")]
        db.remove("bob")
        (left,) = db.audio_files("bob2")
        assert left.exists() and left.parent.name == "bob"  # the shared old folder keeps bob2's file
        assert not (tmp_path / folder_name("bob")).exists()


def test_opening_removes_what_a_kill_left_and_nothing_else(tmp_path: Path) -> None:
    silence = [np.zeros(1600, np.float32)]
    with SpeakerDatabase(tmp_path, "fp", DIM, keep_audio=True) as db:
        db.add("alice", emb(0), audio=silence)
        (kept,) = db.audio_files("alice")
    spk = kept.parent
    (tmp_path / ".trash" / "0123abcd").mkdir(parents=True)
    (tmp_path / ".trash" / "0123abcd" / "5-00000000.wav").write_bytes(b"RIFF")
    tmp = spk / f".7-89abcdef.wav.{os.getpid()}.0badf00d.tmp"
    orphan = spk / "8-0123abcd.wav"
    lone = tmp_path / folder_name("ghost")
    lone.mkdir()
    (lone / "9-0123abcd.wav").write_bytes(b"RIFF")
    users = [tmp_path / "imports" / "erin" / "take1.wav", spk / "notes.txt", tmp_path / "readme.tmp"]
    for path in (tmp, orphan, *users):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF")
    with SpeakerDatabase(tmp_path, "fp", DIM) as db:
        assert db.audio_files("alice") == [kept] and kept.exists()
    assert not (tmp_path / ".trash").exists() and not tmp.exists() and not orphan.exists() and not lone.exists()
    assert all(p.exists() for p in users)


# ---------------------------------------------------------------------------------------------- idempotency
def test_an_idempotency_record_is_stored_with_its_write_only(tmp_path: Path) -> None:
    def record(key: str, digest: str = "h1") -> IdempotentWrite:
        return IdempotentWrite("key-1", key, digest, 201, lambda n: {"name": "dora", "recordings": n})

    with SpeakerDatabase(tmp_path, "fp", DIM) as db:
        db.add("dora", emb(0, 2), mode="create", record=record("k1"))
        assert db.idempotent_answer("key-1", "k1").answer == {"name": "dora", "recordings": 2}
        with pytest.raises(Replayed) as replay:
            db.add("dora", emb(0, 2), mode="create", record=record("k1"))
        assert replay.value.stored.matches("h1") and db.num_utterances("dora") == 2
        with pytest.raises(SpeakerExistsError):  # a refused write stores nothing
            db.add("dora", emb(1), mode="create", record=record("k2"))
        assert db.idempotent_answer("key-1", "k2") is None
        assert db.idempotent_answer("key-2", "k1") is None  # scoped per owner
        db.remove("dora", record=IdempotentWrite("key-1", "k3", "h3", 200, lambda n: {"removed": "dora"}))
        assert db.idempotent_answer("key-1", "k3").answer == {"removed": "dora"}


# ---------------------------------------------------------------------------------------------- kill loop
def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


ENROLLER = """
import os, signal, sys
import numpy as np
from mvector.inference import speaker_db as sdb
from mvector.inference.idempotency import IdempotentWrite

folder, point, after, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
seen = {"n": 0}

def hook(where):
    if where == point:
        seen["n"] += 1
        if seen["n"] > after:
            os.kill(os.getpid(), signal.SIGKILL)

sdb._test_hook = hook
rng = np.random.default_rng(start)
with sdb.SpeakerDatabase(folder, "fp", 8, keep_audio=True) as db:
    for i in range(start, start + 100000):
        name = f"spk{i:03d}"
        rec = IdempotentWrite("owner", name, "h", 201, lambda n, name=name: {"name": name, "recordings": n})
        db.add(name, rng.standard_normal((2, 8)), audio=[np.zeros(800, np.float32)] * 2, record=rec, mode="create")
        print("ack", name, flush=True)
        if (i - start) % 3 == 2:
            gone = f"spk{i - 1:03d}"
            print("removing", gone, flush=True)
            db.remove(gone, record=IdempotentWrite("owner", "rm-" + gone, "h", 200, lambda n: {}))
            print("removed", gone, flush=True)
"""


def audit_folder(folder: Path, acked: set[str], removing: set[str], removed: set[str]) -> None:
    """Integrity, no leftovers, no acknowledged write lost, records exactly for committed writes."""
    with SpeakerDatabase(folder, "fp", DIM, keep_audio=True) as db:  # the open cleans up
        names = set(db.names())
        referenced = {p for n in names for p in db.audio_files(n)}
    conn = sqlite3.connect(str(folder / DB_FILENAME))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = {k for (k,) in conn.execute("SELECT key FROM idempotency")}
        counts = dict(conn.execute("SELECT name, n_utts FROM speakers").fetchall())
    finally:
        conn.close()
    gone = removing - names  # the removals that committed
    assert acked - removing <= names, "an acknowledged enrolment was lost"
    assert removed <= gone, "an acknowledged removal was undone"
    assert set(counts.values()) <= {2}
    assert {k for k in keys if not k.startswith("rm-")} == names | gone  # a record iff the write committed
    assert {k[3:] for k in keys if k.startswith("rm-")} == gone
    on_disk = {p for p in folder.rglob("*") if p.is_file() and p.parent != folder}
    assert on_disk == referenced, f"leftovers: {sorted(map(str, on_disk - referenced))}"
    assert all(p.stat().st_size > 44 for p in referenced)
    assert not (folder / ".trash").exists()
    assert not [p for p in folder.iterdir() if p.is_dir() and not any(p.iterdir())], "an empty folder was left"


@pytest.mark.slow
def test_kill_loop_while_enrolling_with_kept_audio(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    seen: dict[str, set[str]] = {"ack": set(), "removing": set(), "removed": set()}
    # a kill at each point of a write (the nth time it is reached), then a few at random moments
    plan = [("wav_tmp", 0), ("wav_written", 1), ("before_commit", 0), ("after_commit", 1), ("files_deleting", 0),
            ("wav_tmp", 3), ("before_commit", 2), ("random", 0.15), ("random", 0.35)]  # fmt: skip
    start = 0
    for point, after in plan:
        args = [sys.executable, "-c", textwrap.dedent(ENROLLER), str(folder), point, str(int(after)), str(start)]
        child = subprocess.Popen(args, env=child_env(), stdout=subprocess.PIPE, text=True)
        if point == "random":
            time.sleep(1.0 + after)  # the child needs ~1 s to start writing on a shared machine
            child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, out
        for line in out.splitlines():
            word, name = line.split()
            seen[word].add(name)
        start += 100000
        audit_folder(folder, seen["ack"], seen["removing"], seen["removed"])
    assert len(seen["ack"]) >= 8 and seen["removed"]


def test_empty_database_file_is_refused(tmp_path):
    from mvector.inference.speaker_db import DB_FILENAME, SpeakerDatabase

    (tmp_path / DB_FILENAME).write_bytes(b"")
    with pytest.raises(SpeakerDBError, match="empty .*0 bytes"):
        SpeakerDatabase(tmp_path, "fingerprint", 4)
    assert (tmp_path / DB_FILENAME).stat().st_size == 0  # left as it was
