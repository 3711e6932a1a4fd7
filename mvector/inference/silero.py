"""Speech detection with Silero VAD: a speech probability every 32 ms, turned into speech regions.

:class:`SileroDetector` streams mono blocks through the network (state and context carried from block to block,
so a recording of any length runs in bounded memory) and applies hysteresis: speech starts where the
probability reaches ``threshold`` and ends where it stays below ``threshold - 0.15`` for ``min_silence`` seconds;
regions shorter than ``min_speech`` are dropped and the rest padded by ``pad`` seconds each side.

>>> import tempfile
>>> from mvector.models.silero_vad import SileroVAD
>>> from mvector.pretrained.frame_models import import_frame_model
>>> folder = import_frame_model(SileroVAD().state_dict(), tempfile.mkdtemp() + "/v", "silero_vad",
...                             check_hash=False).output_dir
>>> det = SileroDetector(folder)
>>> probs = det.probabilities(iter([np.zeros(16000, "float32")]))
>>> probs.shape
(32,)
>>> hysteresis(np.array([0.1, 0.9, 0.9, 0.2, 0.9, 0.1, 0.1, 0.1, 0.1]), 0.032, min_silence=0.05, min_speech=0.0,
...            pad=0.0)
[(0.032, 0.16)]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Union

import numpy as np
import torch

from mvector.errors import ConfigError
from mvector.inference.segmentation import find_offline

__all__ = ["SileroDetector", "hysteresis", "find_silero_model", "SILERO_MODEL"]

PathLike = Union[str, os.PathLike]

#: The catalogued Silero VAD model.
SILERO_MODEL = "silero_vad"


def find_silero_model(model: PathLike | None = None, log: Callable[[str], None] | None = None) -> Path | None:
    """The imported Silero VAD folder (cache, installed silero-vad, or its wheel in ``$MVECTOR_WHEEL_DIRS``), or
    None; never downloads."""
    return find_offline(SILERO_MODEL, model, log=log)


def hysteresis(
    probs: np.ndarray, step: float, threshold: float = 0.5, min_silence: float = 0.1, min_speech: float = 0.25,
    pad: float = 0.03,
) -> list[tuple[float, float]]:
    """Speech regions (seconds) from per-step speech probabilities (see the module docs)."""
    low = threshold - 0.15
    regions: list[list[float]] = []
    start = None
    quiet_since = None
    for i, p in enumerate(np.asarray(probs, dtype=np.float64)):
        t = i * step
        if start is None:
            if p >= threshold:
                start, quiet_since = t, None
            continue
        if p >= low:
            quiet_since = None
            continue
        if quiet_since is None:
            quiet_since = t
        if t + step - quiet_since >= min_silence:
            regions.append([start, quiet_since])
            start, quiet_since = None, None
    if start is not None:
        regions.append([start, quiet_since if quiet_since is not None else len(probs) * step])
    out: list[list[float]] = []
    for a, b in regions:
        if b - a < min_speech:
            continue
        a, b = max(0.0, a - pad), b + pad
        if out and a <= out[-1][1]:
            out[-1][1] = b
        else:
            out.append([a, b])
    total = len(probs) * step
    return [(round(a, 4), round(min(b, total), 4)) for a, b in out]


class SileroDetector:
    """Silero VAD over a stream of blocks (see the module docs); ``regions(blocks)`` is the speech detector
    :class:`~mvector.inference.classic_diarization.Diarizer` takes."""

    def __init__(
        self, folder: PathLike, sample_rate: int = 16000, threshold: float = 0.5, min_silence: float = 0.1,
        min_speech: float = 0.25, pad: float = 0.03,
    ) -> None:
        from mvector.pretrained.frame_models import load_frame_model

        if not 0.15 < threshold < 1.0:
            raise ConfigError(f"Silero threshold must be in (0.15, 1), got {threshold}")
        self.model = load_frame_model(folder, kind="vad")
        self.sample_rate = int(sample_rate)
        self.threshold, self.min_silence, self.min_speech, self.pad = threshold, min_silence, min_speech, pad

    def probabilities(self, blocks: Iterable[np.ndarray]) -> np.ndarray:
        """Speech probability of every 32 ms step of the stream (the tail is zero-padded to a full step)."""
        import soxr

        chunk = self.model.chunk
        stream = None if self.sample_rate == 16000 else soxr.ResampleStream(self.sample_rate, 16000, 1, "float32")
        rest = np.zeros(0, dtype=np.float32)
        state, context = None, None
        out: list[np.ndarray] = []

        def run(wave: np.ndarray) -> None:
            nonlocal state, context
            x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).unsqueeze(0)
            with torch.inference_mode():
                probs, state = self.model(x, state, context)
            context = x[:, -64:]
            out.append(probs[0].numpy())

        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            if stream is not None:
                block = stream.resample_chunk(block, last=False)
            rest = np.concatenate((rest, block))
            usable = len(rest) // chunk * chunk
            if usable:
                run(rest[:usable])
                rest = rest[usable:]
        if stream is not None:
            rest = np.concatenate((rest, stream.resample_chunk(np.zeros(0, np.float32), last=True)))
        if len(rest):
            padded = -(-len(rest) // chunk) * chunk
            run(np.concatenate((rest, np.zeros(padded - len(rest), np.float32))))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def regions(self, blocks: Iterable[np.ndarray]) -> list[tuple[float, float]]:
        """Speech regions (seconds) of the stream."""
        probs = self.probabilities(blocks)
        step = self.model.chunk / 16000
        return hysteresis(probs, step, self.threshold, self.min_silence, self.min_speech, self.pad)
