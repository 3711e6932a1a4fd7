"""Signal-processing kernels shared by the featurizers: framing, per-clip edge padding, power spectra, mel
filter banks, windows and length-masked mean/variance normalisation.

Two implementations of the hot path live here:

* the **fast eager path** (``fast_*`` functions) writes each intermediate once into a buffer it owns: windowed
  frames go straight into the FFT input, the power spectrum is squared in place inside the FFT output and the
  mel (or Kaldi) filter bank is applied by one matrix product over the interleaved real and imaginary parts,
  logs and normalisation run in place. It never synchronises with the device.
* the **functional path** (:func:`frame_view`, :func:`power_spectrum`) is used while tracing or exporting to
  ONNX and whenever the waveform needs gradients; its shapes stay symbolic, so one exported graph serves any
  batch and length.

Both give the same numbers to float32 round-off (a test checks it).

>>> import torch
>>> x = torch.arange(10.0)[None]
>>> reflect_pad(x, torch.tensor([4]), 2, 3, symmetric=False)[0, :9].tolist()
[2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0]
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from mvector.errors import ConfigError, unknown_name_error

__all__ = [
    "POWER_FLOOR",
    "KALDI_LOG_FLOOR",
    "CMVN_EPS",
    "INT16_SCALE",
    "is_exporting",
    "frame_view",
    "reflect_index",
    "reflect_pad",
    "power_spectrum",
    "fast_windowed_frames",
    "fast_spectrum_energies",
    "masked_cmvn",
    "masked_cmvn_",
    "htk_filterbank",
    "kaldi_filterbank",
    "kaldi_window",
    "interleaved_filterbank",
    "filterbank_blocks",
    "frame_sums",
    "LN2",
]

#: Floor of the power before the natural log (Spectrogram, MelSpectrogram) and of the dB conversion (MFCC).
POWER_FLOOR = 1e-10
#: Kaldi's floor of the mel energies before the log (float32 machine epsilon).
KALDI_LOG_FLOOR = float(np.finfo(np.float32).eps)
#: Added to the variance in mean/variance normalisation.
CMVN_EPS = 1e-5
#: Kaldi computes its features on samples in int16 units.
INT16_SCALE = 32768.0
#: ln(2): the fast path takes natural logs as log2(x)·ln 2 (torch's vectorised log2 is several times faster).
LN2 = math.log(2.0)


def is_exporting() -> bool:
    """True while ``torch.jit.trace`` or ``torch.onnx.export`` runs (then shapes must stay symbolic).

    >>> is_exporting()
    False
    """
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def frame_view(x: Tensor, size: int, hop: int) -> Tensor:
    """Frames ``[B, 1 + (T - size) // hop, size]`` of the rows of ``x`` (a strided view in eager mode).

    >>> frame_view(torch.arange(7.0)[None], 3, 2).tolist()
    [[[0.0, 1.0, 2.0], [2.0, 3.0, 4.0], [4.0, 5.0, 6.0]]]
    """
    if not torch.onnx.is_in_onnx_export():
        return x.unfold(1, size, hop)
    count = 1 + torch.div(x.shape[1] - size, hop, rounding_mode="floor")
    starts = torch.arange(count, device=x.device) * hop
    return x[:, starts[:, None] + torch.arange(size, device=x.device)[None, :]]


def power_spectrum(frames: Tensor, window: Tensor, n_fft: int) -> Tensor:
    """``|DFT_n_fft(frames · window)|²`` over the last axis (frames zero-padded to n_fft): ``[..., n_fft//2+1]``.

    The functional reference. Eager mode (and TorchScript tracing) uses ``torch.fft.rfft``. ONNX has no complex
    tensors and ONNX Runtime's float32 DFT op is less accurate than a matrix product (it loses ~1e-4 on the log
    of weak bins), so ONNX export uses a windowed DFT basis, a constant the exporter folds.

    >>> p = power_spectrum(torch.ones(1, 4), torch.ones(4), 8)
    >>> p.shape[-1], round(float(p[0, 0]), 3)
    (5, 16.0)
    """
    if not torch.onnx.is_in_onnx_export():
        spec = torch.fft.rfft(frames * window.to(frames.dtype), n=n_fft)
        return spec.real.square() + spec.imag.square()
    bins = n_fft // 2 + 1
    n = torch.arange(frames.shape[-1], dtype=torch.float64, device=frames.device)
    k = torch.arange(bins, dtype=torch.float64, device=frames.device)
    angle = torch.remainder(n[:, None] * k[None, :], n_fft) * (2.0 * math.pi / n_fft)
    w = window.to(torch.float64)[:, None]
    basis = torch.cat([torch.cos(angle) * w, torch.sin(angle) * w], dim=1).to(frames.dtype)
    spec = torch.matmul(frames, basis)
    return spec[..., :bins].square() + spec[..., bins:].square()


def reflect_index(pos: Tensor, lengths: Tensor, symmetric: bool) -> Tensor:
    """Map sample positions (any integers) into ``[0, length)`` of each row by mirroring at the clip's ends.

    ``pos`` broadcasts against ``lengths`` (shape ``[B, 1, ...]``). ``symmetric=False`` mirrors about the end
    samples (numpy ``reflect``: ``-1 → 1``); ``symmetric=True`` repeats them (Kaldi: ``-1 → 0``).

    >>> reflect_index(torch.arange(-2, 6), torch.tensor([[4]]), symmetric=False).tolist()
    [[2, 1, 0, 1, 2, 3, 2, 1]]
    >>> reflect_index(torch.arange(-2, 6), torch.tensor([[4]]), symmetric=True).tolist()
    [[1, 0, 0, 1, 2, 3, 3, 2]]
    """
    if symmetric:
        period = (2 * lengths).clamp_min(1)
        m = torch.remainder(pos, period)
        return torch.where(m < lengths, m, period - 1 - m)
    period = (2 * (lengths - 1)).clamp_min(1)
    m = torch.remainder(pos, period)
    return torch.where(m < lengths, m, period - m).clamp_min(0)


def reflect_pad(waveforms: Tensor, lengths: Tensor, left: int, right: int, symmetric: bool) -> Tensor:
    """``[B, left + T + right]``: each clip mirrored about its own first and last sample.

    Only the edge samples are gathered: ``left`` mirrored samples in front of every row, and ``right`` mirrored
    samples written right after each clip's last sample (overwriting whatever followed it in the batch); the
    rest of each row beyond that is unspecified. Clips shorter than the padding are mirrored repeatedly, as
    numpy does. ``symmetric`` as in :func:`reflect_index`. Shapes stay symbolic under tracing.
    """
    steps_left = torch.arange(left, device=waveforms.device)[None, :]
    steps_right = torch.arange(right, device=waveforms.device)[None, :]
    ends = lengths[:, None]
    head = waveforms.gather(1, reflect_index(steps_left - left, ends, symmetric))
    tail = waveforms.gather(1, reflect_index(ends + steps_right, ends, symmetric))
    padded = torch.cat([head, waveforms, torch.zeros_like(tail)], dim=1)
    if is_exporting():
        return padded.scatter(1, ends + left + steps_right, tail)
    return padded.scatter_(1, ends + left + steps_right, tail)


# ----------------------------------------------------------------------------------------- fast eager path


def fast_windowed_frames(frames: Tensor, window: Tensor, n_fft: int) -> Tensor:
    """Contiguous FFT input ``[B, F, n_fft]``: ``frames · window`` (``[B, F, W]``, any strides) then zeros.

    One pass writes the windowed samples straight into the buffer (no separate padding copy). The frame sits
    at the start of the buffer rather than centred: a circular shift changes only the phase of the DFT, never
    the power, so the spectra equal those of a centred window.

    >>> buf = fast_windowed_frames(torch.ones(1, 2, 3), torch.tensor([1.0, 2.0, 3.0]), 4)
    >>> buf[0, 1].tolist()
    [1.0, 2.0, 3.0, 0.0]
    """
    batch, count, width = frames.shape
    buf = frames.new_empty(batch, count, n_fft)
    torch.mul(frames, window, out=buf[..., :width])
    if n_fft > width:
        buf[..., width:].zero_()
    return buf


def fast_spectrum_energies(
    buf: Tensor,
    fb: Tensor | None = None,
    lo: int = 0,
    hi: int = 0,
    blocks: list[tuple[int, int, int, int]] | None = None,
) -> Tensor:
    """Power spectrum of the FFT input ``buf`` (consumed), optionally through a filter bank.

    With ``fb`` (from :func:`interleaved_filterbank`: bins ``lo .. hi``, two rows per bin): ``[B, F, n]``
    energies from one in-place square of the used bins and matrix products over the interleaved real and
    imaginary parts (``re²·w + im²·w`` sums the power and applies the filter at once). ``blocks`` (from
    :func:`filterbank_blocks`) splits that product into bands of neighbouring filters, each over only the bins
    its filters cover: a mel bank is mostly zeros, so this does ~4x less arithmetic (used on the CPU; one dense
    product suits a GPU better). Without ``fb``: the ``[B, F, n_fft//2+1]`` power.

    >>> buf = torch.zeros(1, 1, 8); buf[0, 0, 0] = 1.0
    >>> fast_spectrum_energies(buf)[0, 0].tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    spec = torch.view_as_real(torch.fft.rfft(buf))
    if fb is None:
        spec.square_()
        return torch.add(spec[..., 0], spec[..., 1])
    used = spec[:, :, lo:hi]
    used.square_()
    batch, count = used.shape[:2]
    flat = used.reshape(batch * count, 2 * (hi - lo))
    if blocks is None:
        return torch.matmul(flat, fb).view(batch, count, fb.shape[1])
    out = flat.new_empty(batch * count, fb.shape[1])
    for first, end, b0, b1 in blocks:
        torch.mm(flat[:, 2 * b0 : 2 * b1], fb[2 * b0 : 2 * b1, first:end], out=out[:, first:end])
    return out.view(batch, count, fb.shape[1])


def interleaved_filterbank(weights: Tensor) -> tuple[Tensor, int, int]:
    """``(fb, lo, hi)``: the rows ``lo .. hi`` of ``weights [bins, n]`` that carry any weight, each repeated
    twice (one for the real, one for the imaginary part of the spectrum).

    >>> fb, lo, hi = interleaved_filterbank(torch.tensor([[0.0], [0.5], [1.0], [0.0]]))
    >>> fb[:, 0].tolist(), lo, hi
    ([0.5, 0.5, 1.0, 1.0], 1, 3)
    """
    used = torch.nonzero(weights.abs().amax(dim=1) > 0).flatten()
    lo, hi = (int(used.min()), int(used.max()) + 1) if used.numel() else (0, 1)
    return weights[lo:hi].repeat_interleave(2, dim=0).contiguous(), lo, hi


def filterbank_blocks(weights: Tensor, size: int | None = None) -> list[tuple[int, int, int, int]]:
    """Bands of ``size`` neighbouring filters of ``weights [bins, n]`` (default ``max(8, ceil(n / 5))``) with
    the bin range each band covers: ``(first_filter, end_filter, first_bin, end_bin)``.

    >>> w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> filterbank_blocks(w, 1)
    [(0, 1, 0, 2), (1, 2, 2, 3)]
    """
    n = weights.shape[1]
    size = size or max(8, -(-n // 5))
    nonzero = weights.abs() > 0
    blocks = []
    for first in range(0, n, size):
        end = min(n, first + size)
        rows = torch.nonzero(nonzero[:, first:end].any(dim=1)).flatten()
        lo, hi = (int(rows.min()), int(rows.max()) + 1) if rows.numel() else (0, 1)
        blocks.append((first, end, lo, hi))
    return blocks


def frame_sums(x: Tensor, win: int, shift: int, count: int) -> Tensor:
    """Sums ``[B, count]`` of the frames ``x[:, f·shift : f·shift + win]`` (``x`` holds exactly those frames).

    When ``gcd(win, shift)`` is at least 8 (400 and 160 give 80), sums of blocks of that size are added up
    (float32, one pass); otherwise a float64 running sum is differenced.

    >>> frame_sums(torch.arange(10.0)[None], 4, 2, 4).tolist()
    [[6.0, 14.0, 22.0, 30.0]]
    """
    g = math.gcd(win, shift)
    if g >= 8:
        blocks = x[:, : (count - 1) * shift + win].reshape(x.shape[0], -1, g).sum(-1)
        return blocks.unfold(1, win // g, shift // g).sum(-1)
    running = torch.cumsum(x.to(torch.float64), dim=1)
    sums = running[:, win - 1 :: shift][:, :count].clone()
    sums[:, 1:] -= running[:, shift - 1 :: shift][:, : count - 1]
    return sums.to(x.dtype)


def masked_cmvn_(features: Tensor, frame_lengths: Tensor, eps: float = CMVN_EPS, variance: bool = True) -> Tensor:
    """In-place :func:`masked_cmvn` of a tensor the caller owns (returns ``features``); no host synchronisation.

    >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_cmvn_(x, torch.tensor([2]))[0, :, 0].tolist()
    [-0.9999949932098389, 0.9999949932098389, 0.0]
    """
    frames = features.shape[1]
    pad = (torch.arange(frames, device=features.device)[None, :] >= frame_lengths[:, None]).unsqueeze(-1)
    count = frame_lengths.clamp_min(1).to(features.dtype)[:, None, None]
    features.masked_fill_(pad, 0.0)
    mean = features.sum(1, keepdim=True).div_(count)
    features.sub_(mean).masked_fill_(pad, 0.0)
    if variance:
        var = torch.linalg.vecdot(features, features, dim=1).unsqueeze(1).div_(count)
        features.mul_(var.add_(eps).rsqrt_())
    return features


# ----------------------------------------------------------------------------------------- normalisation


def masked_cmvn(features: Tensor, frame_lengths: Tensor, eps: float = CMVN_EPS, variance: bool = True) -> Tensor:
    """Per-utterance mean/variance normalisation over the valid frames; padded frames become exactly 0.

    ``features`` is ``[B, frames, F]``; ``frame_lengths`` is ``[B]``. The variance is the population variance
    of the valid frames, and ``eps`` is added to it, so constant features give 0 rather than NaN. With
    ``variance=False`` only the mean is subtracted (3D-Speaker's and WeSpeaker's CAM++ front end). The input
    is not modified (see :func:`masked_cmvn_` for the in-place version).

    >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_cmvn(x, torch.tensor([2]))[0, :, 0].tolist()
    [-0.9999949932098389, 0.9999949932098389, 0.0]
    >>> masked_cmvn(x, torch.tensor([2]), variance=False)[0, :, 0].tolist()
    [-1.0, 1.0, 0.0]
    """
    mask = (torch.arange(features.shape[1], device=features.device)[None, :] < frame_lengths[:, None]).unsqueeze(-1)
    count = frame_lengths.clamp_min(1).to(features.dtype)[:, None, None]
    zeros = torch.zeros_like(features)
    valid = torch.where(mask, features, zeros)
    mean = valid.sum(1, keepdim=True) / count
    centred = torch.where(mask, features - mean, zeros)
    if not variance:
        return centred
    var = centred.pow(2).sum(1, keepdim=True) / count
    return centred * torch.rsqrt(var + eps)


# ----------------------------------------------------------------------------------- filter banks, windows


def _htk_mel(freq: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + freq / 700.0)


def _htk_mel_inverse(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _kaldi_mel(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + freq / 700.0)


def htk_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """``[n_fft//2+1, n_mels]`` triangles in Hz between HTK-mel-spaced corner frequencies, peak 1.

    >>> htk_filterbank(16000, 512, 40, 20.0, 8000.0).shape
    (257, 40)
    """
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    corners = _htk_mel_inverse(np.linspace(_htk_mel(np.float64(f_min)), _htk_mel(np.float64(f_max)), n_mels + 2))
    width = np.diff(corners)
    rising = (bins[None, :] - corners[:-2, None]) / width[:-1, None]
    falling = (corners[2:, None] - bins[None, :]) / width[1:, None]
    return np.maximum(0.0, np.minimum(rising, falling)).T


def kaldi_filterbank(sample_rate: int, n_fft: int, n_mels: int, low: float, high: float) -> np.ndarray:
    """``[n_fft//2+1, n_mels]`` Kaldi mel banks: triangles linear in Kaldi mel; the Nyquist bin is unused.

    >>> w = kaldi_filterbank(16000, 512, 80, 20.0, 8000.0)
    >>> w.shape, float(w[-1].max())
    ((257, 80), 0.0)
    """
    mel = _kaldi_mel(np.arange(n_fft // 2) * (sample_rate / n_fft))
    lo, hi = _kaldi_mel(np.float64(low)), _kaldi_mel(np.float64(high))
    delta = (hi - lo) / (n_mels + 1)
    left = lo + delta * np.arange(n_mels)[None, :]
    centre, right = left + delta, left + 2 * delta
    m = mel[:, None]
    up = (m - left) / (centre - left)
    down = (right - m) / (right - centre)
    weights = np.where((m > left) & (m < right), np.where(m <= centre, up, down), 0.0)
    return np.concatenate([weights, np.zeros((1, n_mels))], axis=0)


def check_filters(weights: np.ndarray, method: str, hint: str) -> None:
    """Raise :class:`~mvector.errors.ConfigError` if any mel filter has no weight (no FFT bin inside it)."""
    empty = np.flatnonzero(weights.max(axis=0) <= 0.0)
    if empty.size:
        raise ConfigError(
            f"feature_conf ({method}): mel filter(s) {empty.tolist()[:5]} would be all zero (no FFT bin falls "
            f"inside them); {hint}"
        )


def kaldi_window(kind: str, size: int) -> np.ndarray:
    """Kaldi's analysis windows (``povey``, ``hanning``, ``hamming``, ``sine``, ``rectangular``, ``blackman``).

    >>> [round(float(v), 3) for v in kaldi_window("hanning", 5)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    i = np.arange(size, dtype=np.float64)
    a = 2.0 * math.pi / (size - 1) if size > 1 else 0.0
    windows: dict[str, Callable[[], np.ndarray]] = {
        "povey": lambda: (0.5 - 0.5 * np.cos(a * i)) ** 0.85,
        "hanning": lambda: 0.5 - 0.5 * np.cos(a * i),
        "hamming": lambda: 0.54 - 0.46 * np.cos(a * i),
        "sine": lambda: np.sin(0.5 * a * i),
        "rectangular": lambda: np.ones(size),
        "blackman": lambda: 0.42 - 0.5 * np.cos(a * i) + 0.08 * np.cos(2.0 * a * i),
    }
    if kind not in windows:
        raise unknown_name_error("window_type", kind, windows)
    return windows[kind]()


