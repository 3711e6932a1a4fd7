"""Speech activity detection (VAD) that needs nothing beyond numpy: band energy with hysteresis, spectral flatness.

The detector works in two steps so that a long recording never has to be held in memory:

1. :class:`FrameAnalyzer` takes the audio in chunks of any size and returns, per 10 ms frame, the log energy in
   the speech band (by default 100-4000 Hz) and the spectral flatness of that band (1 = white noise, near 0 =
   harmonic speech). It keeps only the few samples that straddle two chunks.
2. :func:`speech_segments` turns those per-frame statistics into speech segments ``[(start_s, end_s), ...]``:
   thresholds relative to the recording's own noise floor and speech level (hysteresis between a low and a high
   threshold), noise-like frames near the floor vetoed by their flatness, gaps shorter than ``min_silence``
   filled, bursts shorter than ``min_speech`` dropped, and a small ``pad`` added each side.

:func:`detect_speech` does both on an array in one call.

No neural VAD ships with mvector: none of the packages it depends on carries one.

>>> sr = 16000
>>> rng = np.random.default_rng(0)
>>> x = (rng.standard_normal(3 * sr) * 1e-3).astype("float32")            # quiet background noise
>>> t = np.arange(sr) / sr
>>> x[sr : 2 * sr] += (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype("float32")
>>> [(round(s, 2), round(e, 2)) for s, e in detect_speech(x, sr)]
[(0.94, 2.06)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvector.errors import ConfigError

__all__ = ["VADConfig", "FrameAnalyzer", "speech_segments", "detect_speech"]


@dataclass(frozen=True)
class VADConfig:
    """Settings of the built-in energy/spectral detector (times in seconds, levels in dB).

    ``low`` and ``high`` place the hysteresis thresholds between the noise floor (the ``floor_percentile`` of
    frame energies) and the speech level (the ``peak_percentile``): a speech run starts above the high threshold
    and continues while frames stay above the low one. A recording whose level range is under
    ``min_range_db`` is all speech if louder than ``silence_db`` dBFS, else all silence.

    >>> VADConfig().frame_ms, VADConfig(min_silence=0.5).min_silence
    (25.0, 0.5)
    """

    frame_ms: float = 25.0
    hop_ms: float = 10.0
    band_hz: tuple[float, float] = (100.0, 4000.0)
    floor_percentile: float = 5.0
    peak_percentile: float = 98.0
    low: float = 0.2
    high: float = 0.35
    max_flatness: float = 0.6
    min_range_db: float = 10.0
    silence_db: float = -60.0
    min_speech: float = 0.15
    min_silence: float = 0.3
    pad: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.hop_ms <= self.frame_ms:
            raise ConfigError(f"VAD needs 0 < hop_ms <= frame_ms, got hop_ms={self.hop_ms}, frame_ms={self.frame_ms}")
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ConfigError(f"VAD needs 0 <= low <= high <= 1, got low={self.low}, high={self.high}")
        if not 0.0 <= self.floor_percentile < self.peak_percentile <= 100.0:
            raise ConfigError("VAD needs 0 <= floor_percentile < peak_percentile <= 100")
        if not 0.0 <= self.band_hz[0] < self.band_hz[1]:
            raise ConfigError(f"VAD band_hz must be (low, high) with 0 <= low < high, got {self.band_hz!r}")
        for key in ("min_speech", "min_silence", "pad"):
            if getattr(self, key) < 0:
                raise ConfigError(f"VAD {key} must be >= 0 seconds, got {getattr(self, key)!r}")


class FrameAnalyzer:
    """Per-frame speech-band log energy (dB) and spectral flatness of audio fed in chunks of any size.

    Frame ``i`` covers samples ``[i * hop, i * hop + frame)``; the statistics of a chunk cover the frames that
    are complete once it is added, so feeding a recording in pieces gives exactly the frames of feeding it whole.

    >>> sr = 8000
    >>> x = np.random.default_rng(1).standard_normal(sr).astype("float32")
    >>> whole = FrameAnalyzer(sr).feed(x)
    >>> a = FrameAnalyzer(sr); parts = [a.feed(x[:1234]), a.feed(x[1234:5000]), a.feed(x[5000:])]
    >>> pieces = np.concatenate([p[0] for p in parts])
    >>> len(whole[0]), bool(np.allclose(whole[0], pieces))
    (98, True)
    """

    def __init__(self, sample_rate: int, config: VADConfig | None = None) -> None:
        self.config = config or VADConfig()
        self.sample_rate = int(sample_rate)
        if self.sample_rate < 1000:
            raise ConfigError(f"VAD sample_rate must be >= 1000 Hz, got {sample_rate!r}")
        self.frame = max(2, int(round(self.sample_rate * self.config.frame_ms / 1000.0)))
        self.hop = max(1, int(round(self.sample_rate * self.config.hop_ms / 1000.0)))
        self.n_fft = 1 << (self.frame - 1).bit_length()
        freqs = np.fft.rfftfreq(self.n_fft, 1.0 / self.sample_rate)
        lo, hi = self.config.band_hz
        self._band = (freqs >= lo) & (freqs <= min(hi, self.sample_rate / 2.0))
        if not self._band.any():
            raise ConfigError(f"VAD band {self.config.band_hz} Hz holds no FFT bin at {self.sample_rate} Hz")
        self._window = np.hanning(self.frame).astype(np.float32)
        self._tail = np.zeros(0, dtype=np.float32)
        self.frames_done = 0

    @property
    def hop_seconds(self) -> float:
        """Seconds between frame starts."""
        return self.hop / self.sample_rate

    def feed(self, chunk: np.ndarray, max_frames_per_call: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Add mono samples; return ``(energy_db, flatness)`` (float32) of the frames completed by them."""
        data = np.concatenate((self._tail, np.asarray(chunk, dtype=np.float32).reshape(-1)))
        count = 0 if len(data) < self.frame else 1 + (len(data) - self.frame) // self.hop
        energies, flatness = [], []
        frames = np.lib.stride_tricks.sliding_window_view(data, self.frame)[:: self.hop] if count else None
        for first in range(0, count, max_frames_per_call):  # bounded temporary arrays for big chunks
            assert frames is not None
            block = frames[first : first + max_frames_per_call]
            power = np.abs(np.fft.rfft(block * self._window, n=self.n_fft, axis=1)) ** 2
            band = power[:, self._band].astype(np.float64) + 1e-20
            energies.append((10.0 * np.log10(band.sum(axis=1) / self.n_fft)).astype(np.float32))
            flatness.append((np.exp(np.log(band).mean(axis=1)) / band.mean(axis=1)).astype(np.float32))
        self._tail = data[count * self.hop :].copy()
        self.frames_done += count
        if not energies:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        return np.concatenate(energies), np.concatenate(flatness)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(first, end), ...]`` of the runs of True in a boolean array (end exclusive)."""
    if not len(mask):
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def speech_segments(
    energy_db: np.ndarray,
    flatness: np.ndarray,
    hop_seconds: float,
    frame_seconds: float,
    config: VADConfig | None = None,
    duration: float | None = None,
) -> list[tuple[float, float]]:
    """Speech segments ``[(start_s, end_s), ...]`` (sorted, disjoint) from :class:`FrameAnalyzer` statistics.

    ``duration`` (seconds) clips the last segment to the recording.

    >>> e = np.array([-80.0] * 50 + [-20.0] * 60 + [-80.0] * 50, dtype="float32")
    >>> speech_segments(e, np.full(160, 0.1), 0.01, 0.025, duration=1.6)
    [(0.457..., 1.157...)]
    """
    cfg = config or VADConfig()
    energy = np.asarray(energy_db, dtype=np.float64)
    flat = np.asarray(flatness, dtype=np.float64)
    if energy.shape != flat.shape or energy.ndim != 1:
        raise ConfigError(f"energy_db and flatness must be 1-D of equal length, got {energy.shape} and {flat.shape}")
    if not len(energy):
        return []
    floor = float(np.percentile(energy, cfg.floor_percentile))
    peak = float(np.percentile(energy, cfg.peak_percentile))
    if peak - floor < cfg.min_range_db:
        speech = np.full(len(energy), peak > cfg.silence_db)
    else:
        low = floor + cfg.low * (peak - floor)
        high = floor + cfg.high * (peak - floor)
        above_low = (energy > low) & ((flat <= cfg.max_flatness) | (energy > high))
        speech = np.zeros(len(energy), dtype=bool)
        for first, end in _runs(above_low):  # hysteresis: a run counts when it reaches the high threshold
            if (energy[first:end] > high).any():
                speech[first:end] = True
    offset = (frame_seconds - hop_seconds) / 2.0  # frame i stands for its centre hop
    segments = [(first * hop_seconds + offset, end * hop_seconds + offset) for first, end in _runs(speech)]
    merged: list[list[float]] = []
    for start, end in segments:  # fill short gaps
        if merged and start - merged[-1][1] < cfg.min_silence:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    limit = float(duration) if duration is not None else float("inf")
    out: list[tuple[float, float]] = []
    for start, end in merged:
        if end - start < cfg.min_speech:
            continue
        start, end = max(0.0, start - cfg.pad), min(limit, end + cfg.pad)
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], end)
        elif end > start:
            out.append((start, end))
    return out


def detect_speech(
    samples: np.ndarray, sample_rate: int, config: VADConfig | None = None
) -> list[tuple[float, float]]:
    """Speech segments ``[(start_s, end_s), ...]`` of a mono recording held in memory (see the module docs).

    >>> detect_speech(np.zeros(16000, dtype="float32"), 16000)
    []
    """
    analyzer = FrameAnalyzer(sample_rate, config)
    energy, flat = analyzer.feed(np.asarray(samples, dtype=np.float32).reshape(-1))
    return speech_segments(
        energy,
        flat,
        analyzer.hop_seconds,
        analyzer.frame / analyzer.sample_rate,
        analyzer.config,
        duration=len(samples) / sample_rate,
    )


