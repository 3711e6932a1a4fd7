"""The classic diarization pipeline (speech detection, short windows, clustering, re-segmentation) and the parts
both pipelines share: the settings, the result, reading audio in blocks, naming speakers.

The pipeline (:class:`Diarizer`):

1. **Speech detection**: the built-in energy/spectral detector (:mod:`mvector.audio.vad`) over the whole
   recording, read block by block.
2. **Windows**: sliding windows of ``window`` seconds every ``hop`` seconds over each speech region (the last
   one flush with the region's end); a region shorter than ``min_window`` gets one window of ``min_window``
   seconds centred on it.
3. **Embeddings**: the recording is read a second time, block by block, and the windows are embedded in batches
   by any object with ``embed_waveforms(list of float32 arrays) -> [N, D]`` and a ``sample_rate``
   (:class:`PredictorEmbedder` wraps an :class:`~mvector.inference.predictor.MVectorPredictor`).
4. **Clustering** (:mod:`mvector.inference.clustering`): with ``clustering="auto"``, agglomerative (average
   linkage) with the model's cosine threshold when the number of speakers is open (bounded by
   ``min_speakers``/``max_speakers``), spectral clustering when it is given; clusters of fewer than
   ``min_cluster_windows`` windows join the nearest larger one. ``"spectral"`` estimates an open number of
   speakers from the eigengap (NME-SC) instead.
5. **Re-segmentation**: on a grid of ``frame`` seconds, each speaker's score is the cosine similarity of the
   windows covering the frame to the speaker's centroid, weighted towards each window's centre; a Viterbi pass
   with a cost per speaker change picks the best labelling, which places turn boundaries between window
   centres instead of at window edges and removes one-window blips.
6. **Turns**: one speaker at a time (overlap-free), written as RTTM and JSON.
7. **Names**: with a speaker database, a cluster whose centroid scores at least the threshold against an
   enrolled speaker gets that name (clusters matching the same person are joined); the rest are ``speaker_0``,
   ``speaker_1``, ... in order of first appearance.

Memory: the audio is never held whole when it comes from a file: it is read in ``block_seconds`` blocks, twice.
What grows with the length is small: 8 bytes per 10 ms frame for speech detection, one embedding per window,
and the clustering, which works on at most ``max_cluster_windows`` windows (more are subsampled evenly and the
rest assigned to the nearest centroid). An hour of 16 kHz audio (230 MB as float32) needs about 10 MB of that.

>>> import numpy as np
>>> class ToneEmbedder:                        # "speakers" told apart by their pitch, for the example
...     sample_rate = 8000
...     def embed_waveforms(self, waves):
...         out = []
...         for w in waves:
...             spec = np.abs(np.fft.rfft(w, 8000))[100:600]
...             out.append([spec[:250].sum(), spec[250:].sum()])
...         return np.array(out)
>>> t = np.arange(8000 * 3) / 8000
>>> a, b = np.sin(2 * np.pi * 150 * t), np.sin(2 * np.pi * 500 * t)
>>> gap = np.zeros(4000)
>>> audio = np.concatenate([gap, a, gap, b, gap, a, gap]).astype("float32") * 0.3
>>> result = Diarizer(ToneEmbedder(), DiarizationConfig(clustering="agglomerative", threshold=0.5))(
...     audio, sample_rate=8000)
>>> [(round(s.start, 1), round(s.end, 1), s.speaker) for s in result.turns]
[(0.4, 3.6, 'speaker_0'), (3.9, 7.1, 'speaker_1'), (7.4, 10.6, 'speaker_0')]
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, Union

import numpy as np

from mvector.audio.vad import FrameAnalyzer, VADConfig, speech_segments
from mvector.data.conversations import overlap_regions
from mvector.data.rttm import Segment, format_rttm
from mvector.errors import AudioError, ConfigError
from mvector.inference.clustering import METHODS, cluster_centroids, cluster_embeddings, normalize_rows, relabel
from mvector.utils.files import atomic_write_text

__all__ = [
    "SegmentEmbedder",
    "PredictorEmbedder",
    "DiarizationConfig",
    "DiarizationResult",
    "Diarizer",
    "AudioBlocks",
    "DEFAULT_THRESHOLD",
    "PIPELINES",
    "VADS",
]

#: Accepted values of ``pipeline``: ``auto`` (segmentation when its model is found, else classic).
PIPELINES = ("auto", "segmentation", "classic")

#: Accepted values of ``vad`` (the speech detector of the classic pipeline; the segmentation pipeline's is its
#: own network): ``auto`` (energy), ``energy``, ``silero``, ``segmentation``.
VADS = ("auto", "energy", "silero", "segmentation")

#: Cosine threshold used for agglomerative clustering and naming when neither the config nor the embedder has one.
DEFAULT_THRESHOLD = 0.5

PathLike = Union[str, os.PathLike]

_FRAME_CHUNK = 2000  # re-segmentation frames handled at once (100 s at 50 ms)


class SegmentEmbedder(Protocol):
    """What the diarization pipelines need from a model: its sample rate and a batch embedding of waveforms (not
    :class:`mvector.embedding.backends.Embedder`, the inference backends; :class:`PredictorEmbedder` adapts a
    predictor to this)."""

    sample_rate: int

    def embed_waveforms(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings ``[len(waves), D]`` of mono float32 waveforms at ``sample_rate``."""
        ...


def clustering_threshold(predictor: Any) -> float:
    """The cosine score above which two segments are more likely one speaker than two (see :class:`PredictorEmbedder`).

    >>> from types import SimpleNamespace
    >>> from mvector.evaluation.calibration import Calibration
    >>> clustering_threshold(SimpleNamespace(threshold=0.8, threshold_info={"rule": "far"},
    ...                                      calibration=Calibration(weights={"score": 10.0}, bias=-5.0)))
    0.5
    >>> clustering_threshold(SimpleNamespace(threshold=0.8, threshold_info={"rule": "given"}, calibration=None))
    0.8
    """
    calibration = getattr(predictor, "calibration", None)
    given = (getattr(predictor, "threshold_info", None) or {}).get("rule") == "given"
    if calibration is not None and not given:
        even = calibration.score_for_llr(0.0)
        if even is not None and -1.0 < even < 1.0:
            return float(even)
    return float(predictor.threshold)


class PredictorEmbedder:
    """A :class:`SegmentEmbedder` over :class:`~mvector.inference.predictor.MVectorPredictor` (its ``embed_batch``).

    Each window goes through the predictor's own preprocessing (dB normalisation as the model was trained), and
    windows are batched by length. ``threshold`` (the default clustering and naming threshold) is the score at which a
    calibrated model says "same" and "different" are equally likely (LLR 0), when the model folder holds a
    calibration and the predictor was given no threshold; else the predictor's decision threshold. A verification
    operating point (say 1 % false acceptance) is far stricter than "more likely the same speaker", and clustering
    with it splits speakers.

    >>> import tempfile
    >>> from mvector.demo import tiny_checkpoint
    >>> from mvector.inference.predictor import MVectorPredictor
    >>> emb = PredictorEmbedder(MVectorPredictor(tiny_checkpoint(tempfile.mkdtemp()), use_gpu=False))
    >>> emb.sample_rate, emb.embed_waveforms([np.ones(8000, "float32") * 0.1] * 3).shape
    (16000, (3, 32))
    """

    def __init__(self, predictor: Any, batch_size: int = 32) -> None:
        self.predictor = predictor
        self.sample_rate = int(predictor.sample_rate)
        self.threshold = clustering_threshold(predictor)
        self.batch_size = int(batch_size)

    def embed_waveforms(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings ``[N, D]`` of the windows."""
        rate = self.sample_rate
        items = [(np.asarray(w, np.float32), rate) for w in waves]
        return self.predictor.embed_batch(items, batch_size=self.batch_size)


@dataclass(frozen=True)
class DiarizationConfig:
    """Settings of the pipeline (seconds unless noted). See the module docs for what each step does.

    ``threshold``: cosine threshold of agglomerative clustering (default: the embedder's decision threshold, else
    :data:`DEFAULT_THRESHOLD`). ``merge_threshold``: after clustering without a fixed number of speakers, clusters
    whose centroids are more similar than this are joined (default: the same as ``threshold``; 1.0 turns it off).
    ``min_cluster_windows``: clusters of fewer windows are handed to the nearest larger cluster.
    ``switch_penalty``: cost of a speaker change in re-segmentation, in cosine-similarity units per change.
    ``name_threshold``: minimum score of a cluster centroid against an enrolled speaker to take its name
    (default: ``threshold``'s default).

    >>> DiarizationConfig(window=2.0).hop, DiarizationConfig().clustering
    (0.75, 'auto')
    """

    window: float = 1.5
    hop: float = 0.75
    min_window: float = 0.5
    clustering: str = "auto"
    num_speakers: int | None = None
    min_speakers: int = 1
    max_speakers: int = 8
    threshold: float | None = None
    merge_threshold: float | None = None
    min_cluster_windows: int = 3
    resegment: bool = True
    frame: float = 0.05
    switch_penalty: float = 0.3
    name_threshold: float | None = None
    block_seconds: float = 60.0
    batch_size: int = 16
    max_cluster_windows: int = 2000
    seed: int = 0
    vad_conf: VADConfig = field(default_factory=VADConfig)
    pipeline: str = "auto"
    vad: str = "auto"
    segmentation_model: str | None = None
    segmentation_step: float = 2.5
    min_embedding_speech: float = 0.5
    max_piece: float = 3.0
    min_cluster_pieces: int = 8
    min_gap: float = 0.1
    min_turn: float = 0.05

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ConfigError(f"unknown diarization pipeline {self.pipeline!r}; valid: {', '.join(PIPELINES)}")
        if self.vad not in VADS:
            raise ConfigError(f"unknown vad {self.vad!r}; valid: {', '.join(VADS)}")
        if not 0 < self.segmentation_step <= 10.0:
            raise ConfigError(f"segmentation_step must be in (0, 10] seconds, got {self.segmentation_step}")
        for key in ("min_embedding_speech", "min_gap", "min_turn", "max_piece"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"{key} must be >= 0 seconds, got {getattr(self, key)!r}")
        if not (self.window > 0 and 0 < self.hop <= self.window):
            raise ConfigError(f"need window > 0 and 0 < hop <= window, got window={self.window}, hop={self.hop}")
        if not 0 < self.min_window:
            raise ConfigError(f"min_window must be > 0 seconds, got {self.min_window}")
        if self.clustering not in METHODS:
            raise ConfigError(f"unknown clustering {self.clustering!r}; valid: {', '.join(METHODS)}")
        if self.num_speakers is not None and (isinstance(self.num_speakers, bool) or int(self.num_speakers) < 1):
            raise ConfigError(f"num_speakers must be >= 1, got {self.num_speakers!r}")
        if not 1 <= int(self.min_speakers) <= int(self.max_speakers):
            raise ConfigError(
                f"need 1 <= min_speakers <= max_speakers, got {self.min_speakers} and {self.max_speakers}"
            )
        if not 0 < self.frame <= self.hop:
            raise ConfigError(f"frame must be in (0, hop], got {self.frame}")
        if self.switch_penalty < 0:
            raise ConfigError(f"switch_penalty must be >= 0, got {self.switch_penalty}")
        if self.block_seconds < 4 * self.window:
            raise ConfigError(
                f"block_seconds must be at least 4 windows ({4 * self.window} s), got {self.block_seconds}"
            )
        if int(self.batch_size) < 1 or int(self.max_cluster_windows) < 2:
            raise ConfigError("batch_size must be >= 1 and max_cluster_windows >= 2")
        for key in ("threshold", "merge_threshold", "name_threshold"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(float(value)):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")

    @classmethod
    def keys(cls) -> list[str]:
        """The option names (what :func:`diarize_with_predictor` accepts as keyword arguments).

        >>> "num_speakers" in DiarizationConfig.keys()
        True
        """
        return [f.name for f in fields(cls)]


@dataclass
class DiarizationResult:
    """Turns (sorted, overlap-free), the speakers, and facts about the run.

    ``speakers`` maps each output label to ``{"cluster", "name", "score", "seconds"}``: ``name`` is the
    enrolled speaker it matched (or None), ``score`` the centroid's best score against the database (None
    without one), ``seconds`` its speaking time.

    >>> r = DiarizationResult(turns=[Segment(0.0, 1.0, "speaker_0")], duration=2.0)
    >>> print(r.to_rttm("rec"), end="")
    SPEAKER rec 1 0.000 1.000 <NA> <NA> speaker_0 <NA> <NA>
    """

    turns: list[Segment]
    duration: float
    speech: list[tuple[float, float]] = field(default_factory=list)
    speakers: dict[str, dict[str, Any]] = field(default_factory=dict)
    num_windows: int = 0
    config: DiarizationConfig = field(default_factory=DiarizationConfig)
    pipeline: str = "classic"

    @property
    def num_speakers(self) -> int:
        """How many distinct speakers the turns hold."""
        return len({t.speaker for t in self.turns})

    def to_rttm(self, file_id: str) -> str:
        """RTTM text (``SPEAKER <file_id> 1 <start> <dur> <NA> <NA> <name> <NA> <NA>`` per turn)."""
        return format_rttm(file_id, self.turns)

    def overlaps(self) -> list[tuple[float, float]]:
        """Regions (seconds) where two or more speakers talk at once, merged and sorted.

        >>> r = DiarizationResult([Segment(0, 4, "a"), Segment(3, 6, "b"), Segment(5, 7, "a")], duration=7.0)
        >>> r.overlaps()
        [(3, 4), (5, 6)]
        """
        return overlap_regions(self.turns)

    def to_dict(self, file_id: str | None = None) -> dict[str, Any]:
        """A JSON-ready summary: file, duration, speech seconds, speakers, turns (each with the seconds of it
        another speaker talks over: ``overlap``), the overlapped regions, and the settings used."""
        conf = asdict(self.config)
        overlaps = self.overlaps()
        turns = []
        for t in self.turns:
            shared = sum(max(0.0, min(t.end, b) - max(t.start, a)) for a, b in overlaps)
            turns.append({"start": round(t.start, 3), "end": round(t.end, 3), "speaker": t.speaker,
                          "overlap": round(shared, 3)})
        return {
            "file": file_id,
            "pipeline": self.pipeline,
            "duration": round(self.duration, 3),
            "speech_seconds": round(sum(e - s for s, e in self.speech), 3),
            "overlap_seconds": round(sum(b - a for a, b in overlaps), 3),
            "num_speakers": self.num_speakers,
            "num_windows": self.num_windows,
            "speakers": {k: dict(v) for k, v in self.speakers.items()},
            "turns": turns,
            "overlaps": [[round(a, 3), round(b, 3)] for a, b in overlaps],
            "config": conf,
        }

    def save(self, output_dir: PathLike, file_id: str) -> tuple[Path, Path]:
        """Write ``output_dir/<file_id>.rttm`` and ``.json`` atomically; return their paths."""
        folder = Path(output_dir)
        rttm = atomic_write_text(folder / f"{file_id}.rttm", self.to_rttm(file_id))
        js = atomic_write_text(
            folder / f"{file_id}.json", json.dumps(self.to_dict(file_id), indent=2, ensure_ascii=False) + "\n"
        )
        return rttm, js


class AudioBlocks:
    """Mono float32 blocks of a recording at ``sample_rate``, read from a file a block at a time.

    ``audio`` is a path (streamed with soundfile and resampled with a soxr stream), or anything
    :func:`mvector.audio.load_audio` takes (bytes, a file object, an array with ``source_sample_rate``, or an
    ``(array, rate)`` tuple), which is decoded whole. Each call of :meth:`blocks` reads from the start again.

    >>> src = AudioBlocks((np.zeros(20000, "float32"), 8000), 16000, block_seconds=1.0)
    >>> [len(b) for b in src.blocks()], src.duration
    ([16000, 16000, 8000], 2.5)
    """

    def __init__(
        self, audio: Any, sample_rate: int, block_seconds: float = 60.0, source_sample_rate: int | None = None
    ) -> None:
        from mvector.audio import load_audio

        self.sample_rate = int(sample_rate)
        self.block = max(1, int(block_seconds * self.sample_rate))
        self.path: Path | None = None
        self._array: np.ndarray | None = None
        if isinstance(audio, tuple):
            if len(audio) != 2:
                raise AudioError(f"audio tuples must be (samples, sample_rate), got a tuple of {len(audio)}")
            audio, source_sample_rate = audio
        if isinstance(audio, (str, os.PathLike)):
            import soundfile

            self.path = Path(audio)
            if not self.path.is_file():
                raise AudioError(f"{self.path}: file not found")
            try:
                info = soundfile.info(str(self.path))
            except (RuntimeError, TypeError, ValueError, OSError, soundfile.SoundFileError) as err:
                raise AudioError(f"{self.path}: cannot read audio ({err})") from err
            if info.samplerate <= 0 or info.frames <= 0:
                raise AudioError(f"{self.path}: empty audio or no valid sample rate in the header")
            self.source_rate = int(info.samplerate)
            self.duration = info.frames / info.samplerate
        else:
            self._array = load_audio(audio, self.sample_rate, source_sample_rate=source_sample_rate)
            self.source_rate = self.sample_rate
            self.duration = len(self._array) / self.sample_rate

    def blocks(self) -> Iterator[np.ndarray]:
        """Yield consecutive blocks (the last may be shorter)."""
        if self._array is not None:
            for start in range(0, len(self._array), self.block):
                yield self._array[start : start + self.block]
            return
        import soundfile
        import soxr

        assert self.path is not None
        stream = None
        if self.source_rate != self.sample_rate:
            stream = soxr.ResampleStream(self.source_rate, self.sample_rate, 1, dtype="float32", quality="HQ")
        in_block = max(1, int(self.block * self.source_rate / self.sample_rate))
        try:
            with soundfile.SoundFile(str(self.path)) as handle:
                for raw in handle.blocks(blocksize=in_block, dtype="float32", always_2d=True):
                    mono = raw[:, 0] if raw.shape[1] == 1 else raw.mean(axis=1, dtype=np.float32)
                    if not np.isfinite(mono).all():
                        raise AudioError(f"{self.path}: audio contains NaN or infinite samples")
                    out = stream.resample_chunk(mono, last=False) if stream is not None else mono
                    if len(out):
                        yield np.ascontiguousarray(out, dtype=np.float32)
                if stream is not None:
                    tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                    if len(tail):
                        yield np.ascontiguousarray(tail, dtype=np.float32)
        except (RuntimeError, OSError, soundfile.SoundFileError) as err:
            raise AudioError(f"{self.path}: cannot read audio ({err})") from err


def seconds_progress(total: float, desc: str, enabled: bool):
    """A tqdm bar on stderr counting ``total`` seconds of audio, or None when not ``enabled``.

    >>> seconds_progress(12.0, "embedding", enabled=False) is None
    True
    """
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=round(total, 1), desc=desc, unit="s", file=sys.stderr, leave=False)


def window_spans(
    speech: list[tuple[float, float]], total: int, rate: int, config: DiarizationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Window sample spans ``[N, 2]`` and the speech region of each ``[N]``, sorted by start.

    >>> spans, owner = window_spans([(0.0, 3.0)], 48000, 16000, DiarizationConfig(window=1.5, hop=0.75))
    >>> spans.tolist()[:2], owner.tolist()[:2]
    ([[0, 24000], [12000, 36000]], [0, 0])
    """
    win, hop, short = (int(round(x * rate)) for x in (config.window, config.hop, config.min_window))
    spans, owner = [], []
    for region, (start_s, end_s) in enumerate(speech):
        start, end = int(round(start_s * rate)), min(total, int(round(end_s * rate)))
        length = end - start
        if length <= 0:
            continue
        if length < short:
            centre = (start + end) // 2
            first = max(0, min(centre - short // 2, total - short))
            spans.append((first, min(total, first + short)))
        elif length <= win:
            spans.append((start, end))
        else:
            count = int(math.ceil((length - win) / hop)) + 1
            for i in range(count):
                first = min(start + i * hop, end - win)
                spans.append((first, first + win))
        owner += [region] * (len(spans) - len(owner))
    if not spans:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    spans_arr, owner_arr = np.asarray(spans, dtype=np.int64), np.asarray(owner, dtype=np.int64)
    order = np.lexsort((spans_arr[:, 1], spans_arr[:, 0]))
    return spans_arr[order], owner_arr[order]


def _viterbi(scores: np.ndarray, penalty: float) -> np.ndarray:
    """Best label path through ``scores`` [T, K] (to maximise) with ``penalty`` per change of label."""
    steps, k = scores.shape
    back = np.zeros((steps, k), dtype=np.int64)
    total = scores[0].copy()
    for t in range(1, steps):
        best = int(np.argmax(total))
        switch = total[best] - penalty
        stay = total >= switch
        back[t] = np.where(stay, np.arange(k), best)
        total = np.where(stay, total, switch) + scores[t]
    path = np.zeros(steps, dtype=np.int64)
    path[-1] = int(np.argmax(total))
    for t in range(steps - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


class Diarizer:
    """The diarization pipeline over an :class:`SegmentEmbedder` (see the module docs).

    Args:
        embedder: ``sample_rate`` and ``embed_waveforms(waves) -> [N, D]``; an optional ``threshold`` attribute
            is the default clustering / naming threshold.
        config: a :class:`DiarizationConfig`.
        speaker_db: optional :class:`~mvector.inference.speaker_db.SpeakerDatabase` (anything with
            ``search(emb, top_k)`` and ``__len__``) whose enrolled speakers name the clusters.
        speech_detector: optional ``detector(blocks) -> speech regions (seconds)`` over mono float32 blocks at
            the embedder's rate, replacing the built-in energy detector (Silero VAD, the segmentation network).
    """

    def __init__(
        self,
        embedder: SegmentEmbedder,
        config: DiarizationConfig | None = None,
        speaker_db: Any = None,
        speech_detector: Any = None,
    ) -> None:
        if not hasattr(embedder, "embed_waveforms") or not hasattr(embedder, "sample_rate"):
            raise ConfigError("the embedder needs a sample_rate and an embed_waveforms(waves) method")
        self.embedder = embedder
        self.config = config or DiarizationConfig()
        self.speaker_db = speaker_db
        self.speech_detector = speech_detector
        self.sample_rate = int(embedder.sample_rate)
        model_threshold = getattr(embedder, "threshold", None)
        self.default_threshold = float(model_threshold) if model_threshold is not None else DEFAULT_THRESHOLD

    # ---------------------------------------------------------------- steps
    def detect_speech(self, source: AudioBlocks, progress: bool = False) -> tuple[list[tuple[float, float]], int]:
        """Speech regions (seconds) and the number of samples, from one pass over ``source``."""
        if self.speech_detector is not None:
            seen = [0]

            def counted() -> Iterator[np.ndarray]:
                for block in source.blocks():
                    seen[0] += len(block)
                    yield block

            regions = list(self.speech_detector(counted()))
            if seen[0] == 0:
                raise AudioError(f"{source.path or '<audio>'}: empty audio (0 samples)")
            return [(float(a), float(b)) for a, b in regions], seen[0]
        analyzer = FrameAnalyzer(self.sample_rate, self.config.vad_conf)
        energies, flats, total = [], [], 0
        bar = seconds_progress(source.duration, "speech detection", progress)
        for block in source.blocks():
            e, f = analyzer.feed(block)
            energies.append(e)
            flats.append(f)
            total += len(block)
            if bar is not None:
                bar.update(round(len(block) / self.sample_rate, 1))
        if bar is not None:
            bar.close()
        if total == 0:
            raise AudioError(f"{source.path or '<audio>'}: empty audio (0 samples)")
        speech = speech_segments(
            np.concatenate(energies),
            np.concatenate(flats),
            analyzer.hop_seconds,
            analyzer.frame / self.sample_rate,
            self.config.vad_conf,
            duration=total / self.sample_rate,
        )
        return speech, total

    def embed_windows(self, source: AudioBlocks, spans: np.ndarray, progress: bool = False) -> np.ndarray:
        """Embeddings ``[N, D]`` of the sample ``spans`` (sorted by start), reading ``source`` once more."""
        out: np.ndarray | None = None
        pending: list[np.ndarray] = []
        pending_idx: list[int] = []
        group = max(1, int(self.config.batch_size)) * 4
        buffer = np.zeros(0, dtype=np.float32)
        base = 0
        nxt = 0
        bar = seconds_progress(source.duration, "embedding", progress)

        def flush() -> None:
            nonlocal out
            if not pending:
                return
            emb = np.asarray(self.embedder.embed_waveforms(pending), dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(pending):
                raise ConfigError(f"the embedder returned shape {emb.shape} for {len(pending)} windows")
            if out is None:
                out = np.zeros((len(spans), emb.shape[1]), dtype=np.float32)
            out[pending_idx] = emb
            pending.clear()
            pending_idx.clear()

        for block in source.blocks():
            buffer = np.concatenate((buffer, block))
            end = base + len(buffer)
            while nxt < len(spans) and spans[nxt, 1] <= end:
                pending.append(buffer[spans[nxt, 0] - base : spans[nxt, 1] - base].copy())
                pending_idx.append(nxt)
                nxt += 1
                if len(pending) >= group:
                    flush()
            keep_from = spans[nxt, 0] if nxt < len(spans) else end
            if keep_from > base:
                cut = min(len(buffer), int(keep_from - base))
                buffer = buffer[cut:]
                base += cut
            if bar is not None:
                bar.update(round(len(block) / self.sample_rate, 1))
        while nxt < len(spans):  # spans reaching past the decoded end (rounding): take what is there
            piece = buffer[max(0, spans[nxt, 0] - base) :]
            if len(piece) == 0:
                piece = np.zeros(int(self.config.min_window * self.sample_rate), dtype=np.float32)
            pending.append(piece.copy())
            pending_idx.append(nxt)
            nxt += 1
        flush()
        if bar is not None:
            bar.close()
        assert out is not None
        return out

    def cluster(self, embeddings: np.ndarray) -> np.ndarray:
        """Cluster labels ``[N]`` of the window embeddings, with the configured method and speaker bounds."""
        return self.cluster_with(embeddings)

    def cluster_with(self, embeddings: np.ndarray, **overrides: Any) -> np.ndarray:
        """:meth:`cluster` with some :class:`DiarizationConfig` fields replaced (e.g. ``num_speakers=3``)."""
        c = replace(self.config, **overrides) if overrides else self.config
        threshold = c.threshold if c.threshold is not None else self.default_threshold
        return cluster_embeddings(
            embeddings,
            method=c.clustering,
            num_speakers=c.num_speakers,
            min_speakers=c.min_speakers,
            max_speakers=c.max_speakers,
            threshold=threshold,
            merge_threshold=c.merge_threshold if c.merge_threshold is not None else threshold,
            min_cluster_size=c.min_cluster_windows,
            max_points=c.max_cluster_windows,
            seed=c.seed,
        )

    def segment(
        self,
        speech: list[tuple[float, float]],
        spans: np.ndarray,
        owner: np.ndarray,
        embeddings: np.ndarray,
        labels: np.ndarray,
    ) -> list[Segment]:
        """Turns ``[Segment(start, end, cluster_index_as_str)]`` from labelled windows (re-segmented if set)."""
        c = self.config
        rate = self.sample_rate
        centroids = cluster_centroids(embeddings, labels)
        scores = normalize_rows(embeddings) @ centroids.T  # [N, K]
        turns: list[Segment] = []
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(len(speech) + 1))
        for region, (start_s, end_s) in enumerate(speech):
            members = order[bounds[region] : bounds[region + 1]]
            if not len(members):
                continue
            steps = max(1, int(math.ceil((end_s - start_s) / c.frame - 1e-9)))
            grid = start_s + (np.arange(steps) + 0.5) * (end_s - start_s) / steps
            w_start, w_end = spans[members, 0] / rate, spans[members, 1] / rate
            centre, half = (w_start + w_end) / 2.0, np.maximum((w_end - w_start) / 2.0, 1e-6)
            frame_scores = np.zeros((steps, scores.shape[1]))
            nearest = np.zeros(steps, dtype=np.int64)
            for first in range(0, steps, _FRAME_CHUNK):  # [frames, windows] arrays stay small in long regions
                g = grid[first : first + _FRAME_CHUNK]
                near = np.flatnonzero((w_end >= g[0] - c.window) & (w_start <= g[-1] + c.window))
                near = near if len(near) else np.arange(len(members))
                distance = np.abs(g[:, None] - centre[near][None, :])  # [T, W]
                nearest[first : first + len(g)] = near[np.argmin(distance, axis=1)]
                if c.resegment:
                    inside = distance <= half[near][None, :]
                    weight = np.clip(1.0 - distance / half[near][None, :], 0.0, None) + 1e-6 * inside
                    weight = np.where(weight.sum(axis=1, keepdims=True) > 0, weight, np.exp(-distance))
                    frame_scores[first : first + len(g)] = (weight @ scores[members[near]]) / weight.sum(
                        axis=1, keepdims=True
                    )
            if c.resegment:
                path = _viterbi(frame_scores, c.switch_penalty)
            else:  # each frame takes the label of the window whose centre is nearest
                path = labels[members][nearest]
            edges = np.flatnonzero(np.diff(path)) + 1
            cuts = np.concatenate(([0], edges, [steps]))
            step = (end_s - start_s) / steps
            for a, b in zip(cuts[:-1], cuts[1:]):
                turns.append(Segment(float(start_s + a * step), float(start_s + b * step), str(int(path[a]))))
        return turns

    def name_speakers(
        self, turns: list[Segment], embeddings: np.ndarray, labels: np.ndarray
    ) -> tuple[list[Segment], dict[str, dict[str, Any]]]:
        """Give every cluster its output name (enrolled name or ``speaker_N``); join turns that then touch."""
        count = int(labels.max()) + 1
        centroids = cluster_centroids(embeddings, labels)
        matched: dict[int, tuple[str | None, float | None]] = {k: (None, None) for k in range(count)}
        if self.speaker_db is not None and len(self.speaker_db) > 0:
            limit = self.config.name_threshold
            limit = float(limit) if limit is not None else self.default_threshold
            for k, hits in enumerate(self.speaker_db.search(centroids.astype(np.float32), top_k=1)):
                name, score = hits[0]
                matched[k] = (name if score >= limit else None, float(score))
        first_seen = list(dict.fromkeys(int(t.speaker) for t in turns))
        names: dict[int, str] = {}
        anonymous = 0
        taken = {n for n, _ in matched.values() if n is not None}
        for k in first_seen:
            name = matched[k][0]
            if name is None:
                while f"speaker_{anonymous}" in taken:
                    anonymous += 1
                name = f"speaker_{anonymous}"
                anonymous += 1
            names[k] = name
        renamed: list[Segment] = []
        for t in turns:
            name = names[int(t.speaker)]
            if renamed and renamed[-1].speaker == name and t.start - renamed[-1].end < 1e-6:
                renamed[-1] = Segment(renamed[-1].start, t.end, name)
            else:
                renamed.append(Segment(t.start, t.end, name))
        info: dict[str, dict[str, Any]] = {}
        for k in first_seen:
            entry = info.setdefault(names[k], {"clusters": [], "name": matched[k][0], "score": None, "seconds": 0.0})
            entry["clusters"].append(k)
            score = matched[k][1]
            if score is not None:
                entry["score"] = round(max(score, entry["score"] if entry["score"] is not None else -1.0), 4)
        for t in renamed:
            info[t.speaker]["seconds"] = round(info[t.speaker]["seconds"] + t.end - t.start, 3)
        return renamed, info

    # ---------------------------------------------------------------- all together
    def __call__(self, audio: Any, sample_rate: int | None = None, progress: bool = False) -> DiarizationResult:
        """Diarize ``audio``: a path (streamed), bytes, a file object, ``(samples, rate)``, or samples with
        ``sample_rate``."""
        source = AudioBlocks(audio, self.sample_rate, self.config.block_seconds, source_sample_rate=sample_rate)
        speech, total = self.detect_speech(source, progress)
        duration = total / self.sample_rate
        spans, owner = window_spans(speech, total, self.sample_rate, self.config)
        if not len(spans):
            return DiarizationResult(turns=[], duration=duration, speech=speech, config=self.config)
        embeddings = self.embed_windows(source, spans, progress)
        labels = relabel(self.cluster(embeddings))
        turns = self.segment(speech, spans, owner, embeddings, labels)
        turns, speakers = self.name_speakers(turns, embeddings, labels)
        return DiarizationResult(
            turns=turns, duration=duration, speech=speech, speakers=speakers, num_windows=len(spans), config=self.config
        )
