"""The approximate index (mvector.inference.ann_index): agrees with exact search on genuine probes, follows a
changing gallery (a replaced mean, a removed speaker are never answered again, dead slots are rebuilt away), answers
exactly under its row threshold, and refuses bad input with a clear error. Small galleries only (5 000 rows).

The ``pq`` kind keeps only codes and reads exact rows from its owner (``rows_of``); here the owner is
:class:`RowTable`, an id-indexed array that the tests keep up to date as a gallery's mean cache would."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from mvector.errors import SpeakerDBError
from mvector.inference import ann_index
from mvector.inference.ann_index import ApproximateIndex

pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'mvector[ann]')")

DIM = 32


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def probes(rng: np.random.Generator, rows: np.ndarray, picks: np.ndarray, cos: float = 0.75) -> np.ndarray:
    sigma = np.sqrt((1 / cos**2 - 1) / DIM)
    q = rows[picks] + sigma * rng.standard_normal((len(picks), DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


class RowTable:
    """Exact rows by speaker id, for the pq kind's ``rows_of``."""

    def __init__(self) -> None:
        self.rows = np.zeros((0, DIM), np.float32)
        self.calls = 0

    def put(self, ids: np.ndarray, rows: np.ndarray) -> None:
        if ids.max() >= len(self.rows):
            grown = np.zeros((int(ids.max()) + 1, DIM), np.float32)
            grown[: len(self.rows)] = self.rows
            self.rows = grown
        self.rows[ids] = rows

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.rows[ids]


def make(kind: str, **kwargs) -> tuple[ApproximateIndex, RowTable]:
    table = RowTable()
    return ApproximateIndex(DIM, kind=kind, rows_of=table if kind == "pq" else None, **kwargs), table


def put(index: ApproximateIndex, table: RowTable, ids: np.ndarray, rows: np.ndarray) -> None:
    table.put(ids, rows)  # the owner's rows change first, as in the mean cache
    index.add(ids, rows)


KINDS = ["pq", "hnsw", "ivf"]


@pytest.mark.parametrize("kind", KINDS)
def test_recall_against_exact_search(kind):
    rng = np.random.default_rng(1)
    rows = unit(rng, 5000)
    ids = np.arange(100, 5100)  # speaker ids need not start at 0
    index, table = make(kind, min_rows=1000, effort=48 if kind == "ivf" else 64)
    table.put(ids, rows)
    index.build(ids, rows)
    assert index.approximate and len(index) == 5000
    q = probes(rng, rows, rng.choice(5000, 200, replace=False))
    exact = ids[np.argmax(q @ rows.T, axis=1)]
    found, scores = index.search(q, k=3)
    assert np.mean(found[:, 0] == exact) >= 0.95
    hit = found[:, 0] == exact  # the scores are the exact inner products of the rows found
    np.testing.assert_allclose(scores[hit, 0], np.max(q @ rows.T, axis=1)[hit], atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


@pytest.mark.parametrize("kind", KINDS)
def test_follows_a_changing_gallery(kind):
    rng = np.random.default_rng(2)
    rows = unit(rng, 3000)
    index, table = make(kind, min_rows=500)
    put(index, table, np.arange(3000), rows)
    assert index.approximate
    # a speaker's mean replaced: its new vector finds it, its old one no longer does
    new = unit(rng, 1)
    put(index, table, np.array([42]), new)
    assert index.search(new, k=1)[0][0, 0] == 42
    assert 42 not in index.search(rows[[42]], k=5)[0][0]
    # removed speakers are never answered, even when the query is their own vector
    gone = np.arange(0, 300)
    index.remove(gone)
    found = index.search(rows[gone], k=5)[0]
    assert not np.isin(found, gone).any() and len(index) == 2700
    # past a quarter of dead slots the index is rebuilt from its live rows, and still answers the same
    index.remove(np.arange(300, 1200))
    assert index._dead == 0 and len(index) == 1800
    keep = np.arange(1200, 3000)
    found = index.search(rows[keep[:100]], k=1)[0][:, 0]
    assert np.mean(found == keep[:100]) >= 0.98
    assert index.search(new, k=1)[0][0, 0] == 42 or 42 < 1200  # 42 was removed with 0..1199


def test_small_gallery_is_exact_and_grows_into_approximate():
    rng = np.random.default_rng(3)
    rows = unit(rng, 1000)
    index, table = make("pq", min_rows=700)  # the default kind
    assert index.kind == "pq"
    put(index, table, np.arange(200), rows[:200])
    assert not index.approximate
    q = unit(rng, 50)
    found, scores = index.search(q, k=4)
    exact = np.argsort(-(q @ rows[:200].T), axis=1)[:, :4]
    np.testing.assert_array_equal(found, exact)
    put(index, table, np.arange(200, 1000), rows[200:])  # crossing min_rows rebuilds as PQ codes
    assert index.approximate and len(index) == 1000
    calls = table.calls
    found, scores = index.search(rows[:50], k=1)
    assert (found[:, 0] == np.arange(50)).all() and table.calls == calls + 1  # candidates re-scored exactly
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert index.memory_bytes() < rows.nbytes / 4  # codes, not rows
    # fewer rows than k: the missing places are -1
    small, small_table = make("pq", min_rows=10**9)
    put(small, small_table, np.array([7]), rows[:1])
    assert small.search(rows[:1], k=3)[0].tolist() == [[7, -1, -1]]
    tiny, tiny_table = make("pq", min_rows=0, effort=2)  # approximate with fewer rows than k
    put(tiny, tiny_table, np.arange(700), rows[:700])
    found, scores = tiny.search(rows[:2], k=800)
    assert found.shape == (2, 800) and (found[:, 700:] == -1).all() and found[0, 0] == 0 and found[1, 0] == 1


def test_bad_input_is_refused_clearly(monkeypatch):
    with pytest.raises(SpeakerDBError, match="kind must be one of pq, hnsw, ivf"):
        ApproximateIndex(DIM, kind="lsh")
    with pytest.raises(SpeakerDBError, match="give it rows_of"):
        ApproximateIndex(DIM, kind="pq")
    index = ApproximateIndex(DIM, kind="hnsw", min_rows=10**9)
    with pytest.raises(SpeakerDBError, match="expected 2 rows of size 32"):
        index.add(np.arange(2), np.zeros((2, 8), np.float32))
    with pytest.raises(SpeakerDBError, match="non-negative"):
        index.add(np.array([-1]), np.zeros((1, DIM), np.float32))
    with pytest.raises(SpeakerDBError, match="given twice"):
        index.add(np.array([1, 1]), np.zeros((2, DIM), np.float32))
    with pytest.raises(SpeakerDBError, match="queries must be"):
        index.search(np.zeros((1, 3), np.float32))
    with pytest.raises(SpeakerDBError, match="effort must be a positive integer"):
        index.set_effort(0)
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    assert not ann_index.faiss_available()
    with pytest.raises(SpeakerDBError, match=r"pip install 'mvector\[ann\]'"):
        ApproximateIndex(DIM)


@pytest.mark.parametrize("kind", ["pq", "hnsw"])
def test_speaker_database_with_an_approximate_index(tmp_path, monkeypatch, kind):
    """Replicas on one folder: one searching exactly, one through an approximate index; enrolments and removals of
    either are seen by the other's index at its next search, and searches with among / score_norm stay exact."""
    from mvector.inference.speaker_db import SpeakerDatabase

    monkeypatch.setattr(ann_index, "MIN_ROWS", 500)  # approximate from 500 speakers on
    rng = np.random.default_rng(4)
    rows = unit(rng, 2000)
    folder = str(tmp_path / "db")
    with pytest.raises(SpeakerDBError, match="search_index must be one of exact, pq, hnsw, ivf"):
        SpeakerDatabase(folder, "m", DIM, search_index="annoy")
    writer = SpeakerDatabase(folder, "m", DIM)
    reader = SpeakerDatabase(folder, "m", DIM, search_index=kind, index_effort=64)
    writer.add_many({f"s{i:04d}": rows[i] for i in range(1500)})
    assert reader.search(rows[10])[0][0][0] == "s0010" and reader._index.approximate
    q = probes(rng, rows, np.arange(0, 1500, 10))
    exact = [r[0][0] for r in writer.search(q)]
    approx = [r[0][0] for r in reader.search(q)]
    assert np.mean(np.array(exact) == np.array(approx)) >= 0.95
    writer.add_many({f"s{i:04d}": rows[i] for i in range(1500, 2000)})  # another process enrols
    writer.remove("s0010")
    assert reader.search(rows[1700])[0][0][0] == "s1700"
    assert "s0010" not in [n for n, _ in reader.search(rows[10], top_k=5)[0]]
    reader.add("late", rows[10])  # the reader's own write goes into its index too
    assert reader.search(rows[10])[0][0][0] == "late"
    # among= and score_norm searches stay exact, and so does a search for many (the index is not asked)
    assert reader.search(rows[5], among=["s0005", "s0006"])[0][0][0] == "s0005"

    def not_asked(*args, **kwargs):
        raise AssertionError("the approximate index was asked for a search of many")

    monkeypatch.setattr(reader._index, "search", not_asked)
    every = reader.search(rows[5], top_k=2000)[0]
    assert len(every) == 2000 and every[0][0] == "s0005"
    writer.close()
    reader.close()
