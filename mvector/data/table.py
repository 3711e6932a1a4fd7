"""A compact, read-only sequence of utterances: flat numpy arrays instead of one Python object per list line.

A million :class:`~mvector.data.lists.Utterance` objects hold about 250 bytes each (object, dict, path string,
ints); here an utterance costs 40 bytes plus its path's UTF-8 bytes, and DataLoader workers forked from the
trainer share the arrays without touching reference counts (no copy-on-write of the whole list).

>>> table = UtteranceTable.from_utterances([Utterance("/d/a.wav", 3, 1), Utterance("/d/b.wav", 0, 2)])
>>> len(table), table[1], table.path(0), table.labels.tolist()
(2, Utterance(path='/d/b.wav', label=0, line=2), '/d/a.wav', [3, 0])
>>> table.subset([1])[0].path
'/d/b.wav'
"""

from __future__ import annotations

from typing import Iterator, Sequence, overload

import numpy as np

from mvector.data.lists import Utterance

__all__ = ["UtteranceTable"]


class UtteranceTable(Sequence[Utterance]):
    """Utterances as arrays: ``blob`` (all paths' UTF-8 bytes), ``starts`` / ``ends`` (each path's byte range),
    ``labels`` (int64), ``lines`` (int64, 0 when not from a file) and optional ``durations`` (float64 seconds from
    the headers, NaN for an unreadable header). Indexing returns an :class:`Utterance`."""

    def __init__(
        self,
        blob: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        labels: np.ndarray,
        lines: np.ndarray,
        durations: np.ndarray | None = None,
    ):
        n = len(labels)
        if not (len(starts) == len(ends) == len(lines) == n) or (durations is not None and len(durations) != n):
            raise ValueError("UtteranceTable: the arrays must have one entry per utterance")
        self.blob = np.ascontiguousarray(blob, dtype=np.uint8)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.asarray(ends, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.lines = np.asarray(lines, dtype=np.int64)
        self.durations = None if durations is None else np.asarray(durations, dtype=np.float64)

    @classmethod
    def from_utterances(cls, utterances: Sequence[Utterance], durations: Sequence[float | None] | None = None):
        """Pack utterances (and optional header durations, None for unreadable) into a table.

        >>> UtteranceTable.from_utterances([Utterance("/a.wav", 1)], [None]).durations.tolist()
        [nan]
        """
        if isinstance(utterances, UtteranceTable):
            return utterances
        encoded = [u.path.encode("utf-8", "surrogateescape") for u in utterances]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        ends = np.cumsum(lengths)
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        labels = np.fromiter((u.label for u in utterances), dtype=np.int64, count=len(encoded))
        lines = np.fromiter((u.line for u in utterances), dtype=np.int64, count=len(encoded))
        dur = None
        if durations is not None:
            dur = np.fromiter((np.nan if d is None else d for d in durations), dtype=np.float64, count=len(encoded))
        return cls(blob, ends - lengths, ends, labels, lines, dur)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, index: int) -> str:
        """The path of utterance ``index``."""
        return self.blob[self.starts[index] : self.ends[index]].tobytes().decode("utf-8", "surrogateescape")

    def paths(self) -> Iterator[str]:
        """Every path, in order (decoded one at a time)."""
        blob = self.blob.tobytes() if len(self.blob) else b""
        for start, end in zip(self.starts.tolist(), self.ends.tolist()):
            yield blob[start:end].decode("utf-8", "surrogateescape")

    @overload
    def __getitem__(self, index: int) -> Utterance: ...

    @overload
    def __getitem__(self, index: slice) -> UtteranceTable: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.subset(np.arange(len(self))[index])
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"utterance {index} is outside 0..{len(self) - 1}")
        return Utterance(self.path(index), int(self.labels[index]), int(self.lines[index]))

    def __iter__(self) -> Iterator[Utterance]:
        for path, label, line in zip(self.paths(), self.labels.tolist(), self.lines.tolist()):
            yield Utterance(path, label, line)

    def subset(self, indices: Sequence[int] | np.ndarray) -> UtteranceTable:
        """The utterances at ``indices`` (sharing the path bytes)."""
        idx = np.asarray(indices, dtype=np.int64)
        durations = None if self.durations is None else self.durations[idx]
        return UtteranceTable(self.blob, self.starts[idx], self.ends[idx], self.labels[idx], self.lines[idx], durations)

    def first_of_each_label(self) -> UtteranceTable:
        """The first utterance of each label, in list order: all that label checks need (the largest label, its
        first line, the set of labels), for thousands of speakers instead of a million lines.

        >>> t = UtteranceTable.from_utterances([Utterance("/a", 1, 1), Utterance("/b", 0, 2), Utterance("/c", 1, 3)])
        >>> [u.line for u in t.first_of_each_label()]
        [1, 2]
        """
        _, first = np.unique(self.labels, return_index=True)
        return self.subset(np.sort(first))

    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        arrays = (self.blob, self.starts, self.ends, self.labels, self.lines, self.durations)
        return int(sum(a.nbytes for a in arrays if a is not None))
