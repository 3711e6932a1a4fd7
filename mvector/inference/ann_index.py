"""An optional approximate nearest-neighbour index over a gallery's unit mean vectors (faiss-cpu).

Exact search (one matrix-vector product over every enrolled mean) is the default and stays so: at a million 192-d
speakers it is bound by reading the matrix once (about 30 ms on two cores). Past that, or where a query must answer
in a couple of milliseconds, an approximate index reads much less:

* ``pq`` (the recommended kind): every mean compressed to a product-quantised code of 4 bits per 4 dimensions
  (faiss ``IndexPQFastScan``: 24 bytes for 192-d, 1/32 of the float row), scanned in full with SIMD lookup tables;
  the ``effort`` best codes are then re-scored exactly against the gallery's own float rows (``rows_of``), so the
  scores returned are exact and the index adds about 5 % to a replica's memory (codes and slot tables). It needs
  no cluster structure in the data: a speaker is missed only when the codes' error pushes its true row out of the
  ``effort`` best, rare for a same-speaker probe (cosine 0.5-0.75) among a million random means whose best
  stranger scores about 0.35 (measured in the benchmark). Building a million rows takes seconds;
* ``hnsw``: a navigable small-world graph (faiss ``IndexHNSWFlat``, 32 links per node); a search walks the graph,
  visiting about ``effort`` (efSearch) candidates. Memory: the vectors again plus the links (about 1.3x the
  matrix); building a million rows takes many minutes on two cores;
* ``ivf``: an inverted file (faiss ``IndexIVFFlat``, about 4·√n clusters); a search scans the ``effort`` (nprobe)
  nearest clusters. Cheaper to build than HNSW, but on embeddings without cluster structure it needs many probes
  for a high recall.

All three were measured side by side in ``benchmarks/bench_gallery_scale.py`` (``--ann_kind``).

Scores are the exact inner products (cosine: the vectors are unit length) of the rows the search looks at; a
speaker in a part it does not look at is missed, so the top-1 agrees with exact search for a measured fraction of
queries (the recall), never by construction.

A gallery changes one speaker at a time. Every row added goes into the next *slot* of the faiss index; replacing or
removing a speaker marks its old slot dead, and searches skip dead slots (a faiss ID selector; ``pq``, whose scan
takes none, fetches as many more candidates as the dead share asks and drops dead ones). When a quarter of the
slots are dead, or a small gallery (under ``min_rows``, answered by an exact flat index) has grown past it, the
index is rebuilt from its live rows (for ``pq`` read back through ``rows_of``: its codes cannot give them back).
Speaker ids are the gallery's own (non-negative int64).

Needs ``pip install mvector[ann]`` (faiss-cpu); without it, :class:`ApproximateIndex` raises a clear error.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> rows = rng.standard_normal((500, 16)).astype("float32")
>>> rows /= np.linalg.norm(rows, axis=1, keepdims=True)
>>> index = ApproximateIndex(16, kind="hnsw", min_rows=100)
>>> index.add(np.arange(500), rows)
>>> ids, scores = index.search(rows[[7]], k=1)
>>> int(ids[0, 0]), index.approximate
(7, True)
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import numpy as np

from mvector.errors import SpeakerDBError

__all__ = [
    "APPROXIMATE_KINDS",
    "ApproximateIndex",
    "DEFAULT_EFFORT",
    "MIN_ROWS",
    "RowSource",
    "SEARCH_INDEXES",
    "default_nlist",
    "faiss_available",
    "pq_subcodes",
]

#: The approximate index kinds.
APPROXIMATE_KINDS = ("pq", "hnsw", "ivf")
#: How a gallery's plain searches run: ``exact`` (every mean scored) or one of the approximate kinds.
SEARCH_INDEXES = ("exact", *APPROXIMATE_KINDS)
#: The default search effort of each kind: PQ rows re-scored exactly, HNSW efSearch, IVF nprobe.
DEFAULT_EFFORT = {"pq": 64, "hnsw": 64, "ivf": 64}
#: Where a kind's exact rows are read from for a re-score or a rebuild: ``rows_of(ids) -> [len(ids), dim]``.
RowSource = Callable[[np.ndarray], np.ndarray]
#: Below this many rows an exact flat index answers (an approximate one gains nothing there).
MIN_ROWS = 20_000
_HNSW_LINKS = 32
_HNSW_BUILD_EFFORT = 40
_TRAIN_PER_CLUSTER = 64  # IVF training rows per cluster (faiss asks for 39 at least)
_PQ_DIMS_PER_CODE = 4  # dimensions per 4-bit PQ sub-code
_PQ_TRAIN_ROWS = 65_536  # rows the PQ codebooks are trained on
_DEAD_SHARE = 0.25  # rebuild when this share of the slots is dead


def faiss_available() -> bool:
    """Whether faiss-cpu can be imported (the ``mvector[ann]`` extra).

    >>> isinstance(faiss_available(), bool)
    True
    """
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise SpeakerDBError(
            "the approximate search index needs faiss-cpu: pip install 'mvector[ann]' (or search exactly, the default)"
        ) from None
    return faiss


def default_nlist(rows: int) -> int:
    """IVF clusters for ``rows`` vectors: about 4·√rows (1 M rows -> 4000), at least 1.

    >>> default_nlist(1_000_000), default_nlist(10_000), default_nlist(0)
    (4000, 400, 1)
    """
    return max(1, int(round(4 * math.sqrt(max(0, rows)))))


def pq_subcodes(dim: int) -> int:
    """PQ sub-codes for ``dim``-d vectors: the divisor of ``dim`` nearest to one code per 4 dimensions.

    >>> pq_subcodes(192), pq_subcodes(512), pq_subcodes(80), pq_subcodes(7)
    (48, 128, 20, 1)
    """
    want = max(1, dim // _PQ_DIMS_PER_CODE)
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - want), -m))


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SpeakerDBError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class ApproximateIndex:
    """An approximate inner-product index over unit vectors keyed by speaker ids (see the module docstring).

    Args:
        dim: the vector size.
        kind: ``pq``, ``hnsw`` or ``ivf``.
        effort: search effort (PQ rows re-scored exactly, HNSW efSearch, IVF nprobe); more is slower and closer to
            exact. Default: :data:`DEFAULT_EFFORT`.
        min_rows: below this many live rows searches are exact (a flat index); default :data:`MIN_ROWS`.
        rows_of: where the exact rows of given ids are read (:data:`RowSource`); ``pq`` needs it (its codes are
            lossy), the others read their own stored rows. A gallery's mean cache attaches itself here.

    Thread-safe: one lock around every change and search.

    >>> import numpy as np
    >>> rows = np.eye(4, dtype="float32")[:2]
    >>> index = ApproximateIndex(4, min_rows=10**9, rows_of=lambda ids: rows[ids - 5])
    >>> index.add(np.array([5, 6]), rows)
    >>> index.search(np.eye(4, dtype="float32")[[1]], k=1)[0].tolist()
    [[6]]
    """

    def __init__(
        self,
        dim: int,
        kind: str = "pq",
        effort: int | None = None,
        min_rows: int | None = None,
        rows_of: RowSource | None = None,
    ) -> None:
        if kind not in APPROXIMATE_KINDS:
            raise SpeakerDBError(f"approximate index kind must be one of {', '.join(APPROXIMATE_KINDS)}, got {kind!r}")
        self._faiss = _faiss()
        self.dim = _positive(dim, "dim")
        self.kind = kind
        self.effort = _positive(DEFAULT_EFFORT[kind] if effort is None else effort, "effort")
        min_rows = MIN_ROWS if min_rows is None else min_rows
        if isinstance(min_rows, bool) or not isinstance(min_rows, (int, np.integer)) or min_rows < 0:
            raise SpeakerDBError(f"min_rows must be a non-negative integer, got {min_rows!r}")
        self.min_rows = int(min_rows)
        if kind == "pq" and rows_of is None:
            raise SpeakerDBError("the pq index re-scores its candidates against the exact rows: give it rows_of")
        self.rows_of = rows_of
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._index = self._faiss.IndexFlatIP(self.dim)
        self._exact = True
        self._owner = np.empty(0, np.int64)  # slot -> speaker id (-1: dead)
        self._slot_of = np.empty(0, np.int64)  # speaker id -> slot (-1: none)
        self._alive = np.empty(0, np.uint8)  # one bit per slot, for faiss's ID selector
        self._slots = 0
        self._dead = 0

    # ------------------------------------------------------------------ building
    def _new_index(self, rows: np.ndarray) -> Any:
        """An empty faiss index for ``rows`` (trained on them for IVF); flat below ``min_rows``."""
        faiss = self._faiss
        if len(rows) < max(1, self.min_rows):
            self._exact = True
            return faiss.IndexFlatIP(self.dim)
        self._exact = False
        if self.kind == "pq":
            index = faiss.IndexPQFastScan(self.dim, pq_subcodes(self.dim), 4, faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.seed = 0
            index.train(np.ascontiguousarray(_sample(rows, _PQ_TRAIN_ROWS)))
            return index
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, _HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = _HNSW_BUILD_EFFORT
            return index
        nlist = max(1, min(default_nlist(len(rows)), len(rows)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0
        index.train(np.ascontiguousarray(_sample(rows, nlist * _TRAIN_PER_CLUSTER)))
        index.set_direct_map_type(faiss.DirectMap.Array)  # rows can be read back for a rebuild
        return index

    def _checked(self, ids: Any, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        rows = np.ascontiguousarray(np.asarray(rows, dtype=np.float32))
        if rows.ndim != 2 or rows.shape[1] != self.dim or rows.shape[0] != ids.shape[0]:
            raise SpeakerDBError(
                f"approximate index: expected {len(ids)} rows of size {self.dim}, got shape {list(rows.shape)}"
            )
        if len(ids) and ids.min() < 0:
            raise SpeakerDBError("approximate index: speaker ids must be non-negative")
        if len(np.unique(ids)) != len(ids):
            raise SpeakerDBError("approximate index: an id is given twice in one call")
        return ids, rows

    def build(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Replace the contents with ``rows`` (``[n, dim]`` unit float32) keyed by ``ids`` (``[n]``).

        >>> import numpy as np
        >>> index = ApproximateIndex(2, kind="hnsw", min_rows=10**9)
        >>> index.build(np.array([1, 2]), np.eye(2, dtype="float32")); len(index)
        2
        """
        ids, rows = self._checked(ids, rows)
        with self._lock:
            self._build(ids, rows)

    def _build(self, ids: np.ndarray, rows: np.ndarray) -> None:
        self._clear()
        self._index = self._new_index(rows)
        self._append(ids, rows)

    def _append(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Put rows into the next slots (ids known to have no live slot)."""
        n = len(ids)
        if not n:
            return
        start = self._slots
        self._index.add(rows)
        self._owner = _grown(self._owner, start + n, -1)
        self._owner[start : start + n] = ids
        self._slot_of = _grown(self._slot_of, int(ids.max()) + 1, -1)
        self._slot_of[ids] = np.arange(start, start + n)
        self._alive = _grown(self._alive, (start + n + 7) // 8, 0)
        self._set_alive(np.arange(start, start + n), True)
        self._slots = start + n

    def _set_alive(self, slots: np.ndarray, alive: bool) -> None:
        bytes_, bits = slots >> 3, (1 << (slots & 7)).astype(np.uint8)
        if alive:
            np.bitwise_or.at(self._alive, bytes_, bits)
        else:
            np.bitwise_and.at(self._alive, bytes_, ~bits)

    def _kill(self, ids: np.ndarray) -> None:
        """Mark the live slots of ``ids`` dead (ids without one are skipped)."""
        known = ids[ids < len(self._slot_of)]
        live = known[self._slot_of[known] >= 0]
        if not len(live):
            return
        slots = self._slot_of[live]
        self._set_alive(slots, False)
        self._owner[slots] = -1
        self._slot_of[live] = -1
        self._dead += len(slots)

    def _live(self) -> tuple[np.ndarray, np.ndarray]:
        """Every live (id, row)."""
        slots = np.flatnonzero(self._owner[: self._slots] >= 0)
        if not len(slots):
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        ids = self._owner[slots].copy()
        if self.rows_of is not None:
            return ids, np.ascontiguousarray(self.rows_of(ids), dtype=np.float32)
        rows = self._index.reconstruct_n(0, self._slots)[slots]
        return ids, np.ascontiguousarray(rows, dtype=np.float32)

    def _maybe_rebuild(self) -> None:
        live = self._slots - self._dead
        outgrown = self._exact and live >= max(1, self.min_rows)
        if outgrown or self._dead > max(64, _DEAD_SHARE * self._slots):
            self._build(*self._live())

    # ------------------------------------------------------------------ changes
    def add(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Add rows under new ids, or replace the rows of ids already present (an updated speaker mean).

        >>> import numpy as np
        >>> index = ApproximateIndex(2, kind="hnsw", min_rows=10**9)
        >>> index.add(np.array([3]), np.eye(2, dtype="float32")[:1]); index.add(np.array([3]), np.eye(2)[1:])
        >>> len(index), index.search(np.array([[0.0, 1.0]]), k=1)[0].tolist()
        (1, [[3]])
        """
        ids, rows = self._checked(ids, rows)
        if not len(ids):
            return
        with self._lock:
            self._kill(ids)
            self._append(ids, rows)
            self._maybe_rebuild()

    def remove(self, ids: np.ndarray) -> None:
        """Remove the rows of ``ids`` (ids not in the index are skipped).

        >>> import numpy as np
        >>> index = ApproximateIndex(2, kind="hnsw", min_rows=10**9)
        >>> index.add(np.array([1, 2]), np.eye(2, dtype="float32")); index.remove(np.array([1, 9])); len(index)
        1
        """
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not len(ids):
            return
        with self._lock:
            self._kill(ids[ids >= 0])
            self._maybe_rebuild()

    def set_effort(self, effort: int) -> None:
        """Change the search effort (PQ rows re-scored, HNSW efSearch, IVF nprobe) for later searches."""
        self.effort = _positive(effort, "effort")

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        with self._lock:
            return self._slots - self._dead

    @property
    def approximate(self) -> bool:
        """Whether searches are approximate now, or exact (a gallery under ``min_rows``)."""
        return not self._exact

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best speaker ids and their inner-product scores for each unit query (``[B, dim]``), best
        first; where fewer than ``k`` rows are found the id is -1.

        >>> import numpy as np
        >>> index = ApproximateIndex(2, kind="hnsw", min_rows=10**9)
        >>> index.add(np.array([10, 20]), np.eye(2, dtype="float32"))
        >>> index.search(np.array([[0.0, 1.0]], dtype="float32"), k=2)[0].tolist()
        [[20, 10]]
        """
        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise SpeakerDBError(f"approximate index: queries must be [B, {self.dim}], got {list(queries.shape)}")
        k = _positive(k, "k")
        faiss = self._faiss
        with self._lock:
            if self.kind == "pq" and not self._exact:
                return self._search_codes(queries, k)
            alive = self._alive  # kept referenced while faiss reads it
            selector = faiss.IDSelectorBitmap(self._slots, faiss.swig_ptr(alive)) if self._dead else None
            if self._exact:
                params = faiss.SearchParameters(sel=selector)
            elif self.kind == "hnsw":
                params = faiss.SearchParametersHNSW(efSearch=max(self.effort, k), sel=selector)
            else:
                params = faiss.SearchParametersIVF(nprobe=self.effort, sel=selector)
            scores, slots = self._index.search(queries, k, params=params)
            ids = np.where(slots >= 0, self._owner[np.maximum(slots, 0)], -1)
        return ids, scores

    def _search_codes(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """PQ: the ``effort`` best codes of each query (more where slots are dead: fast-scan indexes take no ID
        selector), their dead slots dropped, the rest re-scored exactly from ``rows_of``; the best ``k`` of those."""
        live = self._slots - self._dead
        want = min(self._slots, math.ceil(max(self.effort, k) * self._slots / max(1, live)))
        _, slots = self._index.search(queries, want)
        ids = np.where(slots >= 0, self._owner[np.maximum(slots, 0)], -1)
        found = ids >= 0
        scores = np.full(ids.shape, -np.inf, np.float32)
        rows = np.asarray(self.rows_of(ids[found]), dtype=np.float32)
        scores[found] = np.einsum("ij,ij->i", rows, queries[np.nonzero(found)[0]])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_ids, best = np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
        best_ids[~np.isfinite(best)] = -1
        if best_ids.shape[1] < k:  # fewer rows than k
            pad = k - best_ids.shape[1]
            best_ids = np.pad(best_ids, ((0, 0), (0, pad)), constant_values=-1)
            best = np.pad(best, ((0, 0), (0, pad)), constant_values=-np.inf)
        return best_ids, best

    def memory_bytes(self) -> int:
        """An estimate of the index's own memory: vectors, HNSW links or IVF centres, slot tables.

        >>> ApproximateIndex(4, kind="ivf", min_rows=10**9).memory_bytes()
        0
        """
        with self._lock:
            if self.kind == "pq" and not self._exact:  # 4-bit codes (in blocks of 32 rows) and 16 centres per code
                codes = -(-self._slots // 32) * 32 * pq_subcodes(self.dim) // 2
                tables = self._owner.nbytes + self._slot_of.nbytes + self._alive.nbytes
                return int(codes + 16 * 4 * self.dim + tables)
            vectors = self._slots * 4 * self.dim
            links = self._slots * 4 * 2 * _HNSW_LINKS * 1.1 if (self.kind == "hnsw" and not self._exact) else 0
            centres = 4 * self.dim * getattr(self._index, "nlist", 0)
            tables = self._owner.nbytes + self._slot_of.nbytes + self._alive.nbytes
            return int(vectors + links + centres + tables)


def _sample(rows: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of ``rows`` (a fixed random choice, in their order) for training codebooks or centres."""
    if len(rows) <= count:
        return rows
    return rows[np.sort(np.random.default_rng(0).choice(len(rows), count, replace=False))]


def _grown(array: np.ndarray, size: int, fill: int) -> np.ndarray:
    """``array`` with at least ``size`` entries (new ones ``fill``), grown by half again to keep appends cheap."""
    if size <= len(array):
        return array
    out = np.full(max(size, len(array) + len(array) // 2), fill, dtype=array.dtype)
    out[: len(array)] = array
    return out
