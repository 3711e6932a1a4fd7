"""Diarization with a neural segmentation stage: local speakers per window, clustered, stitched with overlap.

The pipeline (:class:`SegmentationDiarizer`, what ``mvector diarize`` runs when the segmentation model is there):

1. **Local segmentation** (:class:`~mvector.inference.segmentation.Segmenter`): 10 s chunks every
   ``segmentation_step`` seconds; the network says frame by frame (every 16.9 ms) which of up to 3 *local*
   speakers talk, two at once included.
2. **Embeddings per piece of a local speaker**: the frames where a local speaker talks *alone* in the chunk are
   cut into runs of at most ``max_piece`` seconds (3 s) and every run of at least ``min_embedding_speech``
   seconds (0.5 s) is embedded (batched through the embedder: the imported CAM++ by default). Pieces rather than
   one embedding per local speaker, because on voices the network was not trained on it sometimes keeps two
   people under one local label within a 10 s window. A local speaker without such a run is embedded from all its
   frames and only *assigned* to a cluster later, never used to form one. (``max_piece=0`` gives one embedding
   per chunk and local speaker, whose local speakers then go to distinct clusters by the Hungarian method.)
3. **Clustering with an estimated count** (:meth:`SegmentationDiarizer.cluster_pieces`): spectral clustering
   of the clean pieces with the count open (:func:`~mvector.inference.clustering.count_by_eigengap`): the count
   at the largest eigengap of the neighbour graph whose pruning minimises ``p / eigengap`` (NME-SC), lowered
   while a cluster holds fewer than ``min_cluster_pieces`` pieces (8), one speaker when every two centroids of
   that partition are more alike than :data:`ONE_SPEAKER_SIMILARITY` or the halves of a bisection are alike
   (:data:`ONE_SPEAKER_HALVES`), unless the pieces of two local speakers of one window (:func:`cannot_links`)
   mostly fall across the halves (:data:`TWO_VOICE_CANNOT_SHARE`); then clusters sharing many pieces of the
   same audio (:func:`same_audio_links`) merge (:data:`LINKED_MERGE_RATIO`) and a cluster whose halves are plainly
   two voices splits (:data:`DISTINCT_SPLIT_SIMILARITY`). No similarity threshold decides the count,
   because the similarity levels of short pieces vary with the voices and the recording (see that constant and
   docs/diarization.md for the tuning). With ``threshold`` given (or ``clustering`` not ``auto``) the
   threshold rule runs instead: average-linkage clustering stopped at ``threshold`` sets the count (clusters of
   fewer than ``min_cluster_pieces`` pieces absorbed), spectral clustering at it draws the partition. With
   ``num_speakers``, spectral clustering at that count.
4. **Reconstruction**: every active frame of a local speaker takes the cluster of its nearest piece; on the global
   frame grid each cluster's activity is the mean over the chunks covering the frame, and the number of speakers
   talking is the rounded mean of the chunks' local counts; each frame keeps that many most active clusters.
   Runs of active frames become turns (gaps under ``min_gap`` filled, turns under ``min_turn`` dropped), which may
   overlap between speakers (RTTM turns overlap; the JSON marks the overlapped time).

What grows with the recording's length: the local activities (3 bytes per 17 ms frame per chunk), one embedding
per chunk and local speaker, and the global frame arrays (a few bytes per 17 ms per speaker); the audio itself
is read once, block by block, and only the chunks in flight are held.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mvector.data.rttm import Segment
from mvector.errors import AudioError, ConfigError
from mvector.inference.classic_diarization import (
    DEFAULT_THRESHOLD,
    AudioBlocks,
    DiarizationConfig,
    DiarizationResult,
    Diarizer,
    seconds_progress,
)
from mvector.inference.clustering import (
    cluster_centroids,
    count_by_eigengap,
    merge_linked_clusters,
    merge_similar_clusters,
    normalize_rows,
    one_voice,
    relabel,
    split_distinct_clusters,
)
from mvector.inference.segmentation import Segmenter, runs_to_regions

#: Added to :data:`DEFAULT_THRESHOLD` (when ``threshold`` is not given) for clustering <= 3 s pieces: on generated
#: conversations of 2-7 unseen voices and pyannote's real sample it counted speakers right more often than 0.5
#: with the imported CAM++. Not the model's decision threshold: that is a verification operating point (the
#: imported CAM++ carries one at 1 % false acceptance, 0.79, far too strict for clustering).
PIECE_THRESHOLD_MARGIN = 0.05

#: With the count open and no ``threshold`` given, one speaker when every two centroids of the estimated
#: partition of the pieces are more similar than this (cosine). Measured with the imported CAM++ on the tuning
#: sets (the shared corpus' *train* voices, seed 0, and *dev* voices, seed 100000; 37 recordings): the least
#: alike centroids of a multi-speaker recording's partition were at most 0.50 alike (pyannote's real sample:
#: 0.499), while the pieces of each single voice of those recordings, partitioned the same way, gave 0.60 or more
#: for 147 of 163 voices and more than 0.65 for 137 of 163. The segmentation can overrule it
#: (:data:`TWO_VOICE_CANNOT_SHARE`): a held-out 2-voice recording's voices were 0.70 alike.
ONE_SPEAKER_SIMILARITY = 0.65

#: ... or, when that partition holds no two clusters less alike than :data:`ONE_SPEAKER_DISTINCT`, when the two
#: halves of a spectral bisection of all pieces are more alike than this: one voice that the eigengap split into
#: several clusters (:func:`~mvector.inference.clustering.one_voice`). Measured on generated one-voice recordings
#: (the conversation generator with one speaker: 6 of dev voices, seed 500000, and 8 of train voices, seed
#: 600000; the second-round rule counted 6 of these 14 as 6-8 speakers): their halves were 0.78-0.94 alike, while
#: on the four tuning sets (88 recordings of 2-7 voices) the halves were at most 0.76 alike (0.66 or less but for
#: a 2-voice recording at 0.70 and a 76 s one of 7 voices at 0.76, whose partition held clusters 0.30 alike).
ONE_SPEAKER_HALVES = 0.75

#: See :data:`ONE_SPEAKER_HALVES`: the eigengap partitions of the one-voice recordings held no two clusters less
#: alike than 0.44 (the 7-voice recording whose halves looked alike: 0.30).
ONE_SPEAKER_DISTINCT = 0.4

#: Never one speaker when at least :data:`TWO_VOICE_MIN_CANNOT` pairs of pieces of two local speakers of one
#: window (:func:`cannot_links`) exist and at least this share of them fall across the bisection: the
#: segmentation told the two halves apart. Two-voice recordings of the tuning sets: 0.73-0.98 across (the
#: 2-voice recording whose voices' centroids were 0.70 alike: 0.93); the one-voice recordings, where the network
#: now and then keeps one voice under two local labels of a window: 0.20-0.75.
TWO_VOICE_CANNOT_SHARE = 0.8

#: See :data:`TWO_VOICE_CANNOT_SHARE`.
TWO_VOICE_MIN_CANNOT = 20

#: With the count open and no ``threshold`` given, two clusters of the eigengap partition are joined when the
#: pieces of different windows over the same stretch of audio (:func:`same_audio_links`, 97-100 % one voice)
#: that they share number more than this times those inside the less linked of the two: one voice split in
#: two. On the tuning sets the correct clusters shared at most 0.24 times; over-counted recordings 0.26-0.5.
LINKED_MERGE_RATIO = 0.3

#: ... and then a cluster is split in two while the halves of its spectral bisection are less alike than this
#: (cosine of their centroids), each holding at least ``min_cluster_pieces`` pieces: two voices the eigengap
#: kept together. The halves of one voice stayed 0.69 alike or more (5th percentile 0.69 over 229 clusters of
#: the tuning sets).
DISTINCT_SPLIT_SIMILARITY = 0.6

#: A piece of a local speaker whose global span shares more than this part of its union with a piece already
#: embedded from an earlier window (same clean / not clean kind) takes that piece's embedding instead of its own:
#: windows every 2.5 s see each second of speech up to four times, and pieces of different windows over the same
#: audio are the same voice 97-100 % of the time. Measured by finishing the pipeline on the cached pieces of the
#: five tuning sets (113 recordings of 2-7 voices) and 20 one-voice recordings, the embeddings shared this way:
#: a third fewer seconds embedded (0.66-0.71 of them), count exact on 81 of 113 against 82, count-open DER
#: 4.9 / 9.0 / 7.2 / 8.4 / 8.2 % against 5.2 / 9.0 / 7.7 / 8.4 / 8.5 %, every one-voice recording still one
#: speaker. Shared more loosely the count rules lost exact counts (0.85: 0.61 embedded, 73 of 113 exact; 0.7:
#: 0.48 embedded, 34 of 63 on three of the sets against 45); 0.95 shared less and scored worse too (79).
SAME_AUDIO_SHARE = 0.9

#: Pieces gathered before the embedder runs, in multiples of ``batch_size``: the embedder sorts them by length
#: into batches, so a batch pads its pieces (0.5-3 s) to a similar length rather than all to 3 s.
PIECES_PER_FLUSH = 16

__all__ = [
    "DISTINCT_SPLIT_SIMILARITY",
    "LINKED_MERGE_RATIO",
    "ONE_SPEAKER_SIMILARITY",
    "ONE_SPEAKER_DISTINCT",
    "ONE_SPEAKER_HALVES",
    "TWO_VOICE_CANNOT_SHARE",
    "TWO_VOICE_MIN_CANNOT",
    "PIECE_THRESHOLD_MARGIN",
    "PIECES_PER_FLUSH",
    "SAME_AUDIO_SHARE",
    "SegmentationDiarizer",
    "LocalSpeakers",
    "assign_local_speakers",
    "reconstruct",
    "same_audio_links",
    "shared_piece",
    "SameAudioPieces",
    "cannot_links",
]


def cannot_links(owners: list[tuple[int, int, int, int, bool]]) -> np.ndarray:
    """Pairs ``[L, 2]`` of pieces ``(chunk, local speaker, first frame, end frame, clean)`` of one chunk and
    different local speakers: the segmentation says they are two people (92 % of such pairs were on the tuning
    sets). The work grows with the square of the pieces per chunk, not of all pieces.

    >>> cannot_links([(0, 0, 0, 9, True), (0, 1, 9, 20, True), (0, 0, 30, 40, True), (1, 2, 0, 9, True)]).tolist()
    [[0, 1], [1, 2]]
    """
    by_chunk: dict[int, list[int]] = {}
    for row, owner in enumerate(owners):
        by_chunk.setdefault(int(owner[0]), []).append(row)
    pairs = [(i, j) for rows in by_chunk.values() for n, i in enumerate(rows) for j in rows[n + 1 :]
             if owners[i][1] != owners[j][1]]
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def same_audio_links(owners: list[tuple[int, int, int, int, bool]], offsets: list[int]) -> np.ndarray:
    """Pairs ``[L, 2]`` of pieces ``(chunk, local speaker, first frame, end frame, clean)`` from *different*
    chunks whose global frame spans share more than half of their union: the same stretch of audio, seen by
    overlapping windows, hence the same voice (a must-link). A sweep over the pieces sorted by start: the work
    and the output grow with the number of pieces, not its square.

    >>> same_audio_links([(0, 0, 0, 10, True), (1, 1, 0, 8, True), (0, 2, 40, 50, True), (1, 0, 0, 3, True)],
    ...                  [0, 2]).tolist()
    [[0, 1]]
    """
    if not owners:
        return np.zeros((0, 2), dtype=np.int64)
    start = np.array([offsets[o[0]] + o[2] for o in owners], dtype=np.int64)
    end = np.array([offsets[o[0]] + o[3] for o in owners], dtype=np.int64)
    chunk = np.array([o[0] for o in owners], dtype=np.int64)
    order = np.argsort(start, kind="stable")
    pairs: list[tuple[int, int]] = []
    for pos, i in enumerate(order):
        for j in order[pos + 1 :]:
            if start[j] >= end[i]:
                break
            if chunk[i] == chunk[j]:
                continue
            shared = min(end[i], end[j]) - max(start[i], start[j])
            if shared / (max(end[i], end[j]) - min(start[i], start[j])) > 0.5:
                pairs.append((int(min(i, j)), int(max(i, j))))
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def shared_piece(recent: list[tuple[int, int, bool, int]], start: int, end: int, clean: bool,
                 share: float) -> int | None:
    """The row of the embedded piece in ``recent`` (``(first frame, end frame, clean, row)``, global frames) of the
    same kind whose span shares more than ``share`` of its union with ``start:end`` (the most shared one), or None.

    >>> shared_piece([(0, 100, True, 0), (95, 200, True, 1)], 96, 199, True, 0.9)
    1
    >>> shared_piece([(0, 100, True, 0)], 0, 100, False, 0.9) is None
    True
    """
    best, row = share, None
    for first, last, kind, index in recent:
        if kind != clean:
            continue
        inter = min(end, last) - max(start, first)
        ratio = inter / (max(end, last) - min(start, first)) if inter > 0 else 0.0
        if ratio > best:
            best, row = ratio, index
    return row


class SameAudioPieces:
    """The embedded pieces that a later window's pieces may share (:data:`SAME_AUDIO_SHARE`), window by window:
    a piece is shared only with pieces of *earlier* windows, and pieces ending before a window starts are dropped.

    >>> pieces = SameAudioPieces(0.9)
    >>> pieces.next_window(0); pieces.add(0, 100, True, 0); pieces.find(0, 100, True) is None  # same window
    True
    >>> pieces.next_window(50); pieces.find(1, 100, True)
    0
    >>> pieces.next_window(120); pieces.find(1, 100, True) is None  # ended before this window
    True
    """

    def __init__(self, share: float) -> None:
        self.share = float(share)
        self._recent: list[tuple[int, int, bool, int]] = []  # (global first frame, end frame, clean, row)
        self._fresh: list[tuple[int, int, bool, int]] = []  # this window's, shared from the next one on

    def next_window(self, offset: int) -> None:
        """Start the window whose first global frame is ``offset``."""
        self._recent = [r for r in self._recent + self._fresh if r[1] > offset]
        self._fresh = []

    def find(self, start: int, end: int, clean: bool) -> int | None:
        """The row of an earlier window's piece over (nearly) the same frames, or None (:func:`shared_piece`)."""
        return shared_piece(self._recent, start, end, clean, self.share)

    def add(self, start: int, end: int, clean: bool, row: int) -> None:
        """Remember a piece of this window embedded as ``row``."""
        self._fresh.append((start, end, clean, row))


def assign_local_speakers(similarity: np.ndarray) -> np.ndarray:
    """Cluster of each local speaker ``[k]`` from its similarity to the centroids ``[k, K]``: distinct clusters
    maximising the total similarity (Hungarian method); with more local speakers than clusters the rest take
    their most similar cluster.

    >>> assign_local_speakers(np.array([[0.9, 0.8], [0.85, 0.1]])).tolist()
    [1, 0]
    >>> assign_local_speakers(np.array([[0.9], [0.3]])).tolist()
    [0, 0]
    """
    from scipy.optimize import linear_sum_assignment

    sim = np.asarray(similarity, dtype=np.float64)
    out = np.argmax(sim, axis=1)
    rows, cols = linear_sum_assignment(-sim)
    out[rows] = cols
    return out.astype(np.int64)


def reconstruct(
    scores: np.ndarray, cover: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Global binary activity ``[frames, K]`` from summed assigned activities ``scores``, the number of chunks
    covering each frame ``cover`` and the summed local speaker counts ``counts``.

    Each frame keeps the ``round(counts / cover)`` clusters with the highest mean activity (those above 0).

    >>> s = np.array([[2.0, 0.0], [2.0, 1.0], [0.0, 0.0]])
    >>> reconstruct(s, np.array([2, 2, 2]), np.array([2, 3, 0])).astype(int).tolist()
    [[1, 0], [1, 1], [0, 0]]
    """
    frames, k = scores.shape
    covered = np.maximum(cover, 1)[:, None]
    mean = scores / covered
    wanted = np.minimum(np.floor(counts / np.maximum(cover, 1) + 0.5).astype(np.int64), k)
    order = np.argsort(-mean, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(k)[None, :].repeat(frames, axis=0), axis=1)
    return (rank < wanted[:, None]) & (mean > 0)


@dataclass
class LocalSpeakers:
    """What one pass over a recording gives: per chunk its first global frame (``offsets``), its local
    activities ``[frames, 3]`` and its number of real frames; per embedded local speaker ``(chunk, speaker,
    clean enough to form clusters)`` and its embedding (rows of ``embeddings``)."""

    duration: float
    offsets: list[int]
    activities: list[np.ndarray]
    valid: list[int]
    owners: list[tuple[int, int, int, int, bool]]
    embeddings: np.ndarray

    def save(self, path: str | os.PathLike) -> Path:
        """Write everything to one ``.npz`` file (atomically), so clustering rules can be tried again in seconds.

        >>> import tempfile
        >>> local = LocalSpeakers(12.0, [0, 148], [np.ones((5, 3), np.uint8)] * 2, [5, 4],
        ...                       [(0, 1, 0, 5, True)], np.ones((1, 4), np.float32))
        >>> again = LocalSpeakers.load(local.save(Path(tempfile.mkdtemp()) / "c.npz"))
        >>> again.duration, again.offsets, again.valid, again.owners, again.activities[1].shape
        (12.0, [0, 148], [5, 4], [(0, 1, 0, 5, True)], (5, 3))
        """
        from mvector.utils.files import atomic_write_bytes

        lengths = np.array([len(a) for a in self.activities], dtype=np.int64)
        stacked = np.concatenate(self.activities) if self.activities else np.zeros((0, 3), np.uint8)
        buffer = io.BytesIO()
        np.savez(
            buffer, duration=np.float64(self.duration), offsets=np.asarray(self.offsets, dtype=np.int64),
            valid=np.asarray(self.valid, dtype=np.int64), lengths=lengths, activities=stacked.astype(np.uint8),
            owners=np.asarray(self.owners, dtype=np.int64).reshape(-1, 5),
            embeddings=np.asarray(self.embeddings, dtype=np.float32),
        )
        return Path(atomic_write_bytes(path, buffer.getvalue()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LocalSpeakers:
        """Read what :meth:`save` wrote (no pickle)."""
        with np.load(path, allow_pickle=False) as data:
            try:
                lengths = data["lengths"]
                acts = np.split(data["activities"], np.cumsum(lengths)[:-1]) if len(lengths) else []
                owners = [(int(a), int(b), int(c), int(d), bool(e)) for a, b, c, d, e in data["owners"]]
                return cls(float(data["duration"]), data["offsets"].tolist(), list(acts), data["valid"].tolist(),
                           owners, data["embeddings"])
            except KeyError as err:
                raise ConfigError(f"{path}: not a saved LocalSpeakers file (missing {err})") from None


def _split_runs(mask: np.ndarray, longest: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the runs of True in ``mask``, runs longer than ``longest`` cut into equal parts.

    >>> _split_runs(np.array([0, 1, 1, 1, 1, 1, 0, 1], bool), 3)
    [(1, 4), (4, 6), (7, 8)]
    """
    padded = np.concatenate(([False], mask.astype(bool), [False]))
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    out: list[tuple[int, int]] = []
    for a, b in zip(edges[::2], edges[1::2]):
        parts = max(1, int(math.ceil((b - a) / max(1, longest))))
        bounds = np.linspace(a, b, parts + 1).round().astype(int)
        out += [(int(x), int(y)) for x, y in zip(bounds[:-1], bounds[1:])]
    return out


class SegmentationDiarizer(Diarizer):
    """The segmentation-based diarization pipeline (see the module docs).

    Args:
        embedder: ``sample_rate`` and ``embed_waveforms(waves) -> [N, D]`` (an optional ``threshold`` is the
            default clustering and naming threshold), as for :class:`~mvector.inference.classic_diarization.Diarizer`.
        segmentation: the segmentation network (:func:`mvector.pretrained.frame_models.load_frame_model`).
        config: a :class:`~mvector.inference.classic_diarization.DiarizationConfig`.
        speaker_db: optional speaker database naming the clusters.
    """

    def __init__(self, embedder: Any, segmentation: Any, config: DiarizationConfig | None = None,
                 speaker_db: Any = None) -> None:
        super().__init__(embedder, config, speaker_db)
        c = self.config
        self.segmenter = Segmenter(segmentation, duration=10.0, step=c.segmentation_step)
        self.seg_rate = self.segmenter.sample_rate

    def _pieces(self, wave: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The samples of the frames in ``mask`` (each frame owns ``frame_step`` samples at its centre), joined."""
        spf = self.segmenter.samples_per_frame
        shift = int(round(self.segmenter.frame_duration * self.seg_rate / 2)) - spf // 2
        padded = np.concatenate(([False], mask, [False]))
        edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
        parts = [wave[max(0, a * spf + shift) : b * spf + shift] for a, b in zip(edges[::2], edges[1::2])]
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def _to_embedder_rate(self, wave: np.ndarray) -> np.ndarray:
        if self.sample_rate == self.seg_rate:
            return wave
        import soxr

        return soxr.resample(wave, self.seg_rate, self.sample_rate).astype(np.float32)

    def __call__(self, audio: Any, sample_rate: int | None = None, progress: bool = False) -> DiarizationResult:
        """Diarize ``audio`` (a path, streamed; bytes; a file object; ``(samples, rate)``; or samples with
        ``sample_rate``)."""
        return self.finish(self.segment_and_embed(audio, sample_rate, progress))

    def segment_and_embed(self, audio: Any, sample_rate: int | None = None, progress: bool = False) -> LocalSpeakers:
        """Steps 1-2 (one pass over the audio): local activities of every chunk and the embeddings of its local
        speakers. :meth:`finish` does the rest; several configurations can finish the same :class:`LocalSpeakers`.
        """
        c = self.config
        source = AudioBlocks(audio, self.seg_rate, c.block_seconds, source_sample_rate=sample_rate)
        seg = self.segmenter
        fs = seg.frame_step
        min_clean = int(math.ceil(c.min_embedding_speech / fs))
        chunk_offsets: list[int] = []
        chunk_acts: list[np.ndarray] = []
        chunk_valid: list[int] = []
        # (chunk, local speaker, first frame, end frame, clean enough to form clusters) per embedded piece
        owners: list[tuple[int, int, int, int, bool]] = []
        waves: list[np.ndarray] = []
        embeddings: list[np.ndarray] = []
        # per piece: the row of the embedded piece whose embedding it takes (its own row when embedded itself)
        source_rows: list[int] = []
        sharing = SameAudioPieces(SAME_AUDIO_SHARE)
        embedded = 0
        group = max(1, int(c.batch_size)) * PIECES_PER_FLUSH

        def flush() -> None:
            if waves:
                emb = np.asarray(self.embedder.embed_waveforms(waves), dtype=np.float32)
                if emb.ndim != 2 or emb.shape[0] != len(waves):
                    raise ConfigError(f"the embedder returned shape {emb.shape} for {len(waves)} pieces")
                embeddings.append(emb)
                waves.clear()

        bar = seconds_progress(source.duration, "segmentation", progress)
        total = 0

        def advance(n: int) -> None:
            nonlocal total
            total += n
            if bar is not None:
                bar.update(round(n / self.seg_rate, 1))

        longest = int(c.max_piece / fs) if c.max_piece > 0 else 1 << 30
        quantum = max(1, int(round(0.25 * self.sample_rate)))
        for chunk in seg.chunks(source.blocks(), on_block=advance):
            index = len(chunk_offsets)
            real = min(chunk.activity.shape[0], int(math.ceil(chunk.valid / self.seg_rate / fs)))
            act = chunk.activity[:real]
            offset = int(round(chunk.start / self.seg_rate / fs))
            chunk_offsets.append(offset)
            sharing.next_window(offset)
            chunk_acts.append(act)
            chunk_valid.append(real)
            alone = act.sum(axis=1) == 1
            for k in range(act.shape[1]):
                active = act[:, k].astype(bool)
                if not active.any():
                    continue
                spans = [(a, b) for a, b in _split_runs(active & alone, longest) if b - a >= min_clean]
                good = bool(spans)
                if not good:  # too little clean speech: all its frames, to be placed but not to form clusters
                    where = np.flatnonzero(active)
                    spans = [(int(where[0]), int(where[-1]) + 1)]
                for a, b in spans:
                    mask = np.zeros(len(active), dtype=bool)
                    mask[a:b] = True
                    frames = mask & (active & alone if good else active)
                    # lengths in whole quarter seconds: few distinct batch shapes keep the allocator's memory flat
                    samples = int(frames.sum()) * seg.samples_per_frame * self.sample_rate // self.seg_rate
                    if samples < quantum:  # under a quarter second: too little even to place it
                        continue
                    twin = sharing.find(offset + a, offset + b, good)
                    if twin is None:
                        piece = self._to_embedder_rate(self._pieces(chunk.wave, frames))
                        piece = piece[: len(piece) // quantum * quantum]
                        if not len(piece):
                            continue
                        sharing.add(offset + a, offset + b, good, embedded)
                        source_rows.append(embedded)
                        embedded += 1
                        waves.append(piece)
                    else:
                        source_rows.append(twin)
                    owners.append((index, k, a, b, good))
                    if len(waves) >= group:
                        flush()
        flush()
        if bar is not None:
            bar.close()
        if total == 0:
            raise AudioError(f"{source.path or '<audio>'}: empty audio (0 samples)")
        emb = np.concatenate(embeddings) if embeddings else np.zeros((0, 1), dtype=np.float32)
        emb = emb[np.asarray(source_rows, dtype=np.int64)] if source_rows else emb
        return LocalSpeakers(total / self.seg_rate, chunk_offsets, chunk_acts, chunk_valid, owners, emb)

    def finish(self, local: LocalSpeakers) -> DiarizationResult:
        """Steps 3-5: cluster the local speakers' embeddings, assign them per chunk, stitch the global timeline."""
        c = self.config
        duration = local.duration
        owners, emb = local.owners, local.embeddings
        chunk_offsets, chunk_acts, chunk_valid = local.offsets, local.activities, local.valid
        if not owners:
            return DiarizationResult(turns=[], duration=duration, speech=[], config=c, pipeline="segmentation")
        good = np.array([o[4] for o in owners], dtype=bool)
        if good.sum() < 2:
            good[:] = True
        seconds = np.array([(o[3] - o[2]) * self.segmenter.frame_step for o in owners], dtype=np.float64)
        kept = [o for o, g in zip(owners, good) if g]
        labels_fit = self.cluster_pieces(emb[good], seconds[good], same_audio_links(kept, chunk_offsets),
                                         cannot_links(kept))
        centroids = cluster_centroids(emb[good], labels_fit)
        sims = normalize_rows(emb) @ centroids.T
        labels = np.argmax(sims, axis=1)
        if c.max_piece > 0:  # pieces: the clustering's own labels; the rest to the nearest centroid
            labels[good] = labels_fit
        else:  # one embedding per local speaker: distinct clusters within a window
            by_chunk: dict[int, list[int]] = {}
            for row, owner in enumerate(owners):
                by_chunk.setdefault(owner[0], []).append(row)
            for rows in by_chunk.values():
                labels[rows] = assign_local_speakers(sims[rows])
        turns, speech = self._stitch(owners, labels, chunk_offsets, chunk_acts, chunk_valid, len(centroids), duration)
        used = sorted({int(t.speaker) for t in turns})
        if not used:
            return DiarizationResult(turns=[], duration=duration, speech=[], config=c, pipeline="segmentation")
        remap = {k: i for i, k in enumerate(used)}
        keep = np.isin(labels, used)
        turns = [Segment(t.start, t.end, str(remap[int(t.speaker)])) for t in turns]
        named, speakers = self.name_speakers(turns, emb[keep], np.array([remap[int(x)] for x in labels[keep]]))
        named.sort(key=lambda t: (t.start, t.end, t.speaker))
        return DiarizationResult(
            turns=named, duration=duration, speech=speech, speakers=speakers, num_windows=len(chunk_offsets),
            config=c, pipeline="segmentation",
        )

    def cluster_pieces(self, embeddings: np.ndarray, seconds: np.ndarray, links: np.ndarray | None = None,
                       cannot: np.ndarray | None = None) -> np.ndarray:
        """Step 3: speaker labels ``0..K-1`` of the clean pieces' embeddings ``[N, D]`` (``seconds``: each piece's
        span; ``links``: pairs of pieces over the same audio, :func:`same_audio_links`; ``cannot``: pairs of
        pieces of two local speakers of one window, :func:`cannot_links`), the count estimated unless
        ``num_speakers`` is given."""
        c = self.config
        if c.clustering == "auto" and c.num_speakers is None and c.threshold is None:
            labels = count_by_eigengap(embeddings, c.min_speakers, c.max_speakers, c.min_cluster_pieces, 1.0,
                                       c.seed, c.max_cluster_windows)
            if c.min_speakers <= 1 and labels.max() >= 1 and one_voice(
                embeddings, labels, cannot, ONE_SPEAKER_SIMILARITY, ONE_SPEAKER_HALVES, ONE_SPEAKER_DISTINCT,
                TWO_VOICE_CANNOT_SHARE, TWO_VOICE_MIN_CANNOT, c.seed, c.max_cluster_windows,
            ):
                return np.zeros(len(labels), dtype=np.int64)
            if labels.max() >= 1:  # one voice split in two (many must-links across), then two voices in one
                if links is not None and len(links):
                    labels = merge_linked_clusters(labels, links, LINKED_MERGE_RATIO, max(2, c.min_speakers))
                labels = split_distinct_clusters(embeddings, labels, DISTINCT_SPLIT_SIMILARITY,
                                                 c.min_cluster_pieces, c.max_speakers, c.seed, c.max_cluster_windows)
            if c.merge_threshold is not None:
                labels = merge_similar_clusters(embeddings, labels, float(c.merge_threshold), c.min_speakers)
            return labels
        threshold = c.threshold if c.threshold is not None else DEFAULT_THRESHOLD + PIECE_THRESHOLD_MARGIN
        settings = {"threshold": threshold, "min_cluster_windows": c.min_cluster_pieces, "merge_threshold": 1.0}
        labels = relabel(self.cluster_with(embeddings, **settings))
        if c.clustering == "auto" and c.num_speakers is None and labels.max() >= 1 and len(embeddings) >= 8:
            # the threshold sets the count; spectral clustering at that count draws the partition
            count = int(labels.max()) + 1
            labels = relabel(self.cluster_with(embeddings, num_speakers=count, **settings))
        if c.merge_threshold is not None and c.num_speakers is None:
            labels = merge_similar_clusters(embeddings, labels, float(c.merge_threshold), c.min_speakers)
        return labels

    def _stitch(
        self,
        owners: list[tuple[int, int, int, int, bool]],
        labels: np.ndarray,
        offsets: list[int],
        acts: list[np.ndarray],
        valid: list[int],
        k: int,
        duration: float,
    ) -> tuple[list[Segment], list[tuple[float, float]]]:
        """Turns (speaker = cluster index as text, overlapping allowed) and speech regions from assigned chunks."""
        c = self.config
        seg = self.segmenter
        frames = max(o + v for o, v in zip(offsets, valid))
        scores = np.zeros((frames, k), dtype=np.float32)
        cover = np.zeros(frames, dtype=np.float32)
        counts = np.zeros(frames, dtype=np.float32)
        assigned: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for (index, spk, a, b, _), label in zip(owners, labels):
            assigned.setdefault((index, spk), []).append((a, b, int(label)))
        for index, (offset, act) in enumerate(zip(offsets, acts)):
            n = act.shape[0]
            cover[offset : offset + n] += 1
            counts[offset : offset + n] += act.sum(axis=1)
            local = np.zeros((n, k), dtype=np.float32)
            for spk in range(act.shape[1]):
                pieces = assigned.get((index, spk))
                if not pieces:
                    continue
                frames = np.flatnonzero(act[:, spk])
                starts = np.array([p[0] for p in pieces])[None, :]
                ends = np.array([p[1] for p in pieces])[None, :] - 1
                distance = np.maximum(np.maximum(starts - frames[:, None], frames[:, None] - ends), 0)
                owner = np.array([p[2] for p in pieces])[np.argmin(distance, axis=1)]
                local[frames, owner] = 1.0
            scores[offset : offset + n] += local
        active = reconstruct(scores, cover, counts)
        turns: list[Segment] = []
        for label in range(k):
            for start, end in runs_to_regions(active[:, label], seg.frame_step, seg.frame_duration,
                                               c.min_gap, c.min_turn):
                turns.append(Segment(start, min(end, duration), str(label)))
        speech = runs_to_regions(active.any(axis=1), seg.frame_step, seg.frame_duration, c.min_gap, c.min_turn)
        return turns, [(s, min(e, duration)) for s, e in speech]
