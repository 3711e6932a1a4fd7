"""Pitch shift that keeps the formants: the same voice at another pitch (training augmentation).

Speed perturbation (``speed``) resamples the whole clip, so the pitch and the formants (the vocal tract) move
together: it imitates another, smaller or larger, speaker. A TTS voice at another pitch setting, or a person
speaking higher, keeps the formants and moves only the fundamental frequency. :func:`shift_pitch` does that with a
source-filter split on a short-time spectrum:

1. the spectral envelope ``E(f, t)`` of each frame is the cepstrally smoothed magnitude (the first
   ``lifter`` quefrency bins of the log spectrum: the vocal-tract filter, without the harmonics);
2. the excitation ``X / E`` (flat spectrum, harmonics and phase kept) is brought back to a waveform and
   resampled by ``factor`` (played ``factor`` times faster: every harmonic, so the pitch, times ``factor``;
   the clip ``factor`` times shorter, as with ``speed``);
3. the resampled excitation gets the envelope of the matching input time back, frame by frame.

The result has the input's formants at ``factor`` times its pitch. Plain numpy; about 10 ms per second of audio.

>>> import numpy as np
>>> t = np.arange(16000) / 16000
>>> x = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 20)).astype(np.float32)
>>> y = shift_pitch(x, 16000, 1.25)
>>> y.shape, y.dtype
((12800,), dtype('float32'))
"""

from __future__ import annotations

import numpy as np

__all__ = ["shift_pitch", "PITCH_FACTOR_RANGE"]

#: Pitch factors :func:`shift_pitch` accepts (an octave down to an octave up).
PITCH_FACTOR_RANGE = (0.5, 2.0)


def _frames(x: np.ndarray, n_fft: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Hann-windowed frames' spectra ``[frames, n_fft // 2 + 1]`` of ``x`` padded by ``n_fft // 2`` each side."""
    window = np.hanning(n_fft + 1)[:-1].astype(np.float64)
    pad = np.pad(x.astype(np.float64), (n_fft // 2, n_fft // 2 + n_fft))
    count = 1 + (len(x) + n_fft // 2) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]
    return np.fft.rfft(pad[idx] * window, axis=1), window


def _overlap_add(spectra: np.ndarray, window: np.ndarray, hop: int, length: int) -> np.ndarray:
    """Inverse of :func:`_frames` (weighted overlap-add, the window's squared sum normalised away)."""
    n_fft = window.shape[0]
    frames = np.fft.irfft(spectra, n=n_fft, axis=1) * window
    total = hop * (frames.shape[0] - 1) + n_fft
    out = np.zeros(total)
    norm = np.zeros(total)
    for i, frame in enumerate(frames):
        out[i * hop : i * hop + n_fft] += frame
        norm[i * hop : i * hop + n_fft] += window * window
    out /= np.maximum(norm, 1e-8)
    start = n_fft // 2
    return out[start : start + length]


def _envelope(spectra: np.ndarray, lifter: int) -> np.ndarray:
    """Cepstrally smoothed magnitude of each frame (the spectral envelope), > 0."""
    n_fft = 2 * (spectra.shape[1] - 1)
    log_mag = np.log(np.maximum(np.abs(spectra), 1e-7))
    cepstrum = np.fft.irfft(log_mag, n=n_fft, axis=1)
    cepstrum[:, lifter : n_fft - lifter + 1] = 0.0
    return np.exp(np.fft.rfft(cepstrum, axis=1).real)


def shift_pitch(
    samples: np.ndarray, sample_rate: int, factor: float, n_fft: int = 512, hop: int = 128, lifter: int = 30
) -> np.ndarray:
    """``samples`` at ``factor`` times the pitch with the spectral envelope (formants) kept; ``len / factor``
    samples long (the tempo moves with the pitch, as with speed perturbation). ``lifter`` (quefrency bins, 30 =
    1.9 ms at 16 kHz) separates the envelope from the harmonics of voices up to about 500 Hz.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    >>> shift_pitch(x, 16000, 0.8).shape, shift_pitch(x, 16000, 1.0) is x
    ((10000,), True)
    >>> shift_pitch(x, 16000, 3.0)
    Traceback (most recent call last):
    ...
    ValueError: pitch factor must lie in [0.5, 2.0], got 3.0
    """
    factor = float(factor)
    if not PITCH_FACTOR_RANGE[0] <= factor <= PITCH_FACTOR_RANGE[1]:
        raise ValueError(f"pitch factor must lie in [{PITCH_FACTOR_RANGE[0]}, {PITCH_FACTOR_RANGE[1]}], got {factor}")
    x = np.asarray(samples, dtype=np.float32)
    if factor == 1.0 or x.shape[0] < n_fft:
        return x
    from mvector.audio import resample

    spectra, window = _frames(x, n_fft, hop)
    envelope = _envelope(spectra, lifter)
    excitation = _overlap_add(spectra / envelope, window, hop, x.shape[0]).astype(np.float32)
    # Read as if recorded at factor × the rate: played at the true rate, factor × faster and higher.
    moved = resample(excitation, int(round(sample_rate * factor)), sample_rate)
    out_spectra, _ = _frames(moved, n_fft, hop)
    # Output frame j (time j·hop) plays input time j·hop·factor: give it that frame's envelope.
    source = np.minimum(np.round(np.arange(out_spectra.shape[0]) * factor).astype(np.int64), envelope.shape[0] - 1)
    y = _overlap_add(out_spectra * envelope[source], window, hop, moved.shape[0])
    # Keep the input's level (the excitation's normalisation is arbitrary).
    rms_in = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    rms_out = float(np.sqrt(np.mean(np.square(y))))
    if rms_out > 0:
        y *= rms_in / rms_out
    return y.astype(np.float32)
