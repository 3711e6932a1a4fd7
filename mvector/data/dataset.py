"""Training and evaluation datasets, the padding collate and length-bucketed batches.

Training clips are cropped to ``max_duration``; clips shorter than that are returned whole (no repetition, no
padding in the dataset). :func:`collate_batch` zero-pads every batch to its longest clip and returns the true
``lengths``, which the featurizer, normalisation and pooling use to ignore the padding — so a short clip is seen
exactly as it is, wherever it lands. A file that fails to load mid-epoch does not stop training: the dataset
returns an :class:`Unreadable` marker, and the collate drops it into ``Batch.skipped``.

>>> import numpy as np
>>> batch = collate_batch([(np.ones(3, np.float32), 1), Unreadable("/x/bad.wav", "cannot decode"),
...                        (np.ones(5, np.float32), 0)])
>>> batch.waveforms.shape, batch.lengths.tolist(), batch.labels.tolist(), batch.skipped
(torch.Size([2, 5]), [3, 5], [1, 0], [('/x/bad.wav', 'cannot decode')])
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from mvector.audio import audio_duration, crop, load_audio
from mvector.audio.io import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from mvector.audio.wav_header import wav_duration
from mvector.data.lists import Utterance
from mvector.data.table import UtteranceTable
from mvector.errors import AudioError, ConfigError
from mvector.utils.threads import usable_cpus

__all__ = [
    "Unreadable",
    "TrainDataset",
    "EvalDataset",
    "Batch",
    "collate_batch",
    "header_durations",
]

#: How :class:`TrainDataset` fills a crop from a clip shorter than it: zero padding in the batch, or repetition.
SHORT_CLIP_MODES = ("pad", "repeat")

#: Errors from decoding (or augmenting) one file that turn into an :class:`Unreadable` marker instead of stopping
#: training: any per-file failure, including a MemoryError from a hostile file; only interrupts propagate.
_LOAD_ERRORS = (Exception,)


@dataclass(frozen=True)
class Unreadable:
    """Returned by a dataset in place of an item whose file could not be loaded.

    >>> Unreadable("/data/a.wav", "cannot decode audio")
    Unreadable(path='/data/a.wav', reason='cannot decode audio')
    """

    path: str
    reason: str


def _duration_or_none(path: str) -> float | None:
    try:
        return audio_duration(path)
    except (AudioError, OSError, ValueError, RuntimeError):
        return None


def header_durations(paths: Sequence[str], threads: int | None = None) -> list[float | None]:
    """Durations (s) read from the file headers, None for a file whose header cannot be read.

    Plain WAV headers are parsed in Python, one after the other (:func:`mvector.audio.wav_header.wav_duration`,
    about 20 us a file: threads would only fight over the GIL); the other files (FLAC, MP3, unusual WAV) are asked
    of the decoder, with a small thread pool for many of them (those reads release the GIL and wait on the disk).

    >>> header_durations(["/no/such/file.wav"])
    [None]
    """
    paths = list(paths)
    durations: list[float | None] = [wav_duration(p, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE) for p in paths]
    rest = [i for i, d in enumerate(durations) if d is None]
    if threads is None:
        threads = min(8, usable_cpus() * 2)
    if len(rest) < 256 or threads <= 1:
        found = [_duration_or_none(paths[i]) for i in rest]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            found = list(pool.map(_duration_or_none, [paths[i] for i in rest], chunksize=64))
    for i, seconds in zip(rest, found):
        durations[i] = seconds
    return durations


def _reason(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


class TrainDataset(torch.utils.data.Dataset):
    """Training clips: load → (VAD) → dB-normalise → random crop → augment, as ``(waveform, label)``.

    At construction, clips shorter than ``min_duration`` (by their header) are left out and counted in
    ``num_filtered_short``; files whose header cannot be read are left out and counted in ``num_unreadable``
    (``min_duration <= 0`` skips the header reads, and then nothing is filtered). ``utterances`` may be an
    :class:`~mvector.data.table.UtteranceTable` whose ``durations`` are already known (the cached list of
    :func:`~mvector.data.header_cache.indexed_utterances`): then no header is read. ``__getitem__`` returns
    ``(float32 waveform, label)`` or, when the file fails to load, an :class:`Unreadable` marker.

    Crops: a clip longer than ``max_duration`` is cut at a random offset to ``max_duration``; a shorter one is
    returned whole, and :func:`collate_batch` pads it and records its length (``short_clips="pad"``), or it is
    repeated end to end up to ``max_duration`` (``short_clips="repeat"``), so every crop of a batch is full speech
    and no batch statistic sees padding. With speed perturbation the clip
    is first cropped ``augmenter.max_speed`` times longer, augmented, then cropped to ``max_duration``, so fast
    speeds still fill the crop. With ``speed_label_stride`` (the number of speakers) and an augmenter that
    trains speeds as speakers of their own (``speed.speaker_per_speed``), a clip played at the ``k``-th such
    speed is returned with label ``label + k × speed_label_stride``.

    Randomness: each item draws from its own ``np.random.Generator`` seeded from ``(seed, epoch, index)``, so an
    epoch gives the same clips whatever the number of DataLoader workers. Call :meth:`set_epoch` before each
    epoch (DataLoader workers are re-created per epoch unless ``persistent_workers``, which would keep the old
    epoch).

    >>> import tempfile, pathlib
    >>> from mvector.audio import save_wav
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> save_wav(d / "a.wav", np.sin(np.arange(32000) * 0.1).astype(np.float32), 16000)
    >>> ds = TrainDataset([Utterance(str(d / "a.wav"), 3)], max_duration=1.5, seed=1)
    >>> wave, label = ds[0]
    >>> wave.shape, label, np.array_equal(wave, ds[0][0])
    ((24000,), 3, True)
    """

    def __init__(
        self,
        utterances: Sequence[Utterance] | UtteranceTable,
        sample_rate: int = 16000,
        max_duration: float = 3.0,
        min_duration: float = 0.5,
        augmenter: Callable[[np.ndarray, int, np.random.Generator], np.ndarray] | None = None,
        normalize: bool = True,
        target_db: float = -20.0,
        vad: bool = False,
        seed: int = 0,
        short_clips: str = "pad",
        speed_label_stride: int = 0,
    ):
        if max_duration is None or not max_duration > 0:
            raise ConfigError(f"max_duration must be > 0 seconds, got {max_duration!r}")
        if short_clips not in SHORT_CLIP_MODES:
            raise ConfigError(f"short_clips must be one of {', '.join(SHORT_CLIP_MODES)}, got {short_clips!r}")
        min_duration = float(min_duration or 0.0)
        if min_duration > max_duration:
            raise ConfigError(f"min_duration ({min_duration}) is larger than max_duration ({max_duration})")
        self.sample_rate = int(sample_rate)
        self.max_duration = float(max_duration)
        self.min_duration = min_duration
        self.augmenter = augmenter
        self.normalize = bool(normalize)
        self.target_db = float(target_db)
        self.vad = bool(vad)
        self.seed = int(seed)
        self.short_clips = short_clips
        self.speed_label_stride = int(speed_label_stride)
        self.epoch = 0
        self.num_filtered_short = 0
        self.num_unreadable = 0
        self.unreadable: list[str] = []
        table = UtteranceTable.from_utterances(utterances)
        if min_duration > 0:
            durations = table.durations
            if durations is None:
                durations = np.array([np.nan if d is None else d for d in header_durations(table.paths())])
            unreadable = np.isnan(durations)
            short = ~unreadable & (durations < min_duration)
            self.num_unreadable = int(unreadable.sum())
            self.num_filtered_short = int(short.sum())
            self.unreadable = [table.path(i) for i in np.flatnonzero(unreadable).tolist()]
            table = table.subset(np.flatnonzero(~unreadable & ~short))
        #: The kept utterances, as compact arrays (indexing gives an :class:`Utterance`).
        self.utterances: UtteranceTable = table

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops and augmentations ``__getitem__`` produces."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.utterances)

    def item_rng(self, index: int) -> np.random.Generator:
        """The generator item ``index`` uses in the current epoch."""
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch & 0xFFFFFFFF, int(index)])

    def __getitem__(self, index: int) -> Union[tuple[np.ndarray, int], Unreadable]:
        utt = self.utterances[index]
        rng = self.item_rng(index)
        crop_samples = int(round(self.max_duration * self.sample_rate))
        stretch = float(getattr(self.augmenter, "max_speed", 1.0)) if self.augmenter is not None else 1.0
        first_crop = int(math.ceil(crop_samples * max(1.0, stretch)))
        try:
            wave = load_audio(
                utt.path,
                self.sample_rate,
                normalize=self.normalize,
                target_db=self.target_db,
                vad=self.vad,
                max_duration=first_crop / self.sample_rate,
                crop_mode="random",
                rng=rng,
            )
            group = 0
            if self.augmenter is not None:
                if self.speed_label_stride:  # the augmenter says which speed group the clip fell in
                    wave, group = self.augmenter.augment(wave, self.sample_rate, rng)
                else:
                    wave = self.augmenter(wave, self.sample_rate, rng)
                wave = crop(wave, crop_samples, mode="random", rng=rng)
        except _LOAD_ERRORS as err:
            return Unreadable(utt.path, _reason(err))
        if self.short_clips == "repeat" and 0 < len(wave) < crop_samples:
            wave = np.tile(wave, -(-crop_samples // len(wave)))[:crop_samples]
        return np.ascontiguousarray(wave, dtype=np.float32), int(utt.label) + group * self.speed_label_stride


class EvalDataset(torch.utils.data.Dataset):
    """Whole utterances for evaluation / embedding: no augmentation, cut to the first ``max_duration`` seconds.

    ``items`` are paths or :class:`~mvector.data.lists.Utterance` objects. ``__getitem__`` returns
    ``(float32 waveform, index)`` — the index lets batches formed by length be put back in order — or an
    :class:`Unreadable` marker. ``max_duration=None`` keeps whole files. ``speed`` other than 1.0 plays each
    utterance that many times faster (resampled, pitch and formants moved, as the training speed augmentation
    does; after the cut to ``max_duration``).

    >>> import tempfile, pathlib
    >>> from mvector.audio import save_wav
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> save_wav(d / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    >>> ds = EvalDataset([str(d / "a.wav"), str(d / "missing.wav")], max_duration=0.25)
    >>> ds[0][0].shape, ds[0][1], isinstance(ds[1], Unreadable), ds.durations()
    ((4000,), 0, True, [0.25, 0.0])
    """

    def __init__(
        self,
        items: Sequence[Union[str, os.PathLike, Utterance]],
        sample_rate: int = 16000,
        max_duration: float | None = 20.0,
        normalize: bool = True,
        target_db: float = -20.0,
        vad: bool = False,
        speed: float = 1.0,
    ):
        if max_duration is not None and not max_duration > 0:
            raise ConfigError(f"max_duration must be > 0 seconds or None, got {max_duration!r}")
        if not 0.5 <= speed <= 2.0:
            raise ConfigError(f"speed must lie in [0.5, 2.0], got {speed!r}")
        self.speed = float(speed)
        self.paths: list[str] = [item.path if isinstance(item, Utterance) else os.fspath(item) for item in items]
        self.sample_rate = int(sample_rate)
        self.max_duration = None if max_duration is None else float(max_duration)
        self.normalize = bool(normalize)
        self.target_db = float(target_db)
        self.vad = bool(vad)
        self._durations: list[float] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def durations(self) -> list[float]:
        """Header durations in seconds, capped at ``max_duration``; 0.0 for an unreadable header (cached)."""
        if self._durations is None:
            cap = self.max_duration if self.max_duration is not None else math.inf
            self._durations = [
                min(d, cap) / self.speed if d is not None else 0.0 for d in header_durations(self.paths)
            ]
        return list(self._durations)

    def __getitem__(self, index: int) -> Union[tuple[np.ndarray, int], Unreadable]:
        path = self.paths[index]
        try:
            wave = load_audio(
                path,
                self.sample_rate,
                normalize=self.normalize,
                target_db=self.target_db,
                vad=self.vad,
                max_duration=self.max_duration,
                crop_mode="leading",
            )
        except _LOAD_ERRORS as err:
            return Unreadable(path, _reason(err))
        if self.speed != 1.0 and wave.shape[0] > 1:
            from mvector.audio import resample

            wave = resample(wave, int(round(self.sample_rate * self.speed)), self.sample_rate)
        return wave, int(index)


@dataclass
class Batch:
    """A padded batch: ``waveforms [B, T]`` float32, ``lengths [B]`` and ``labels [B]`` int64, and the
    ``(path, reason)`` of items dropped because their file could not be loaded.

    With every item unreadable, ``B`` is 0 (``waveforms`` is ``[0, 0]``).

    >>> b = collate_batch([(np.ones(2, np.float32), 4)])
    >>> b.waveforms.tolist(), b.lengths.tolist(), b.labels.tolist(), len(b)
    ([[1.0, 1.0]], [2], [4], 1)
    """

    waveforms: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.waveforms.shape[0])

    def pin_memory(self) -> Batch:
        """Pinned-memory copy (called by ``DataLoader(pin_memory=True)``)."""
        return Batch(self.waveforms.pin_memory(), self.lengths.pin_memory(), self.labels.pin_memory(), self.skipped)

    def to(self, device: Any, non_blocking: bool = False) -> Batch:
        """The batch with its tensors on ``device``."""
        return Batch(
            self.waveforms.to(device, non_blocking=non_blocking),
            self.lengths.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.skipped,
        )


def collate_batch(items: Sequence[Union[tuple[Any, int], Unreadable]]) -> Batch:
    """Zero-pad ``(waveform, label)`` items to the longest one; :class:`Unreadable` markers go to ``skipped``.

    >>> b = collate_batch([(np.ones(3, np.float32), 0), (np.ones(1, np.float32), 2)])
    >>> b.waveforms.tolist(), b.lengths.tolist()
    ([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], [3, 1])
    """
    skipped: list[tuple[str, str]] = []
    waves: list[np.ndarray] = []
    labels: list[int] = []
    for item in items:
        if isinstance(item, Unreadable):
            skipped.append((item.path, item.reason))
            continue
        wave, label = item
        wave = wave.numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
        if wave.ndim != 1:
            raise ValueError(f"collate_batch expects 1-D waveforms, got shape {tuple(wave.shape)}")
        waves.append(wave)
        labels.append(int(label))
    longest = max((w.shape[0] for w in waves), default=0)
    out = np.zeros((len(waves), longest), dtype=np.float32)
    for row, wave in enumerate(waves):
        out[row, : wave.shape[0]] = wave
    return Batch(
        torch.from_numpy(out),
        torch.tensor([w.shape[0] for w in waves], dtype=torch.int64),
        torch.tensor(labels, dtype=torch.int64),
        skipped,
    )

