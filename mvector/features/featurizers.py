"""Featurizers that turn padded waveform batches into frame features, on any device.

``build_featurizer(method, feature_conf, normalize)`` returns a :class:`Featurizer` (a ``torch.nn.Module``)
whose ``forward(waveforms [B, T], lengths [B])`` gives ``(features [B, frames, feature_dim], frame_lengths [B])``.
Four methods are registered (names are case-insensitive):

=================  ==========================================================================================
``Spectrogram``    natural log of the STFT power (periodic Hann window, ``center=True`` with reflect padding);
                   ``n_fft // 2 + 1`` bins
``MelSpectrogram`` natural log of the HTK-scale mel power (triangular filters, no area normalisation)
``MFCC``           orthonormal DCT-II of the mel power in dB (``10·log10(max(x, 1e-10))``, no ``top_db``
                   clipping), first ``n_mfcc`` coefficients (librosa's convention)
``Fbank``          Kaldi-compatible log mel filter bank (``snip_edges``, DC removal, pre-emphasis, Povey
                   window, Kaldi mel scale ``1127·ln(1 + f/700)``), on samples scaled to int16 units
=================  ==========================================================================================

Keys of ``feature_conf``:

* Spectrogram / MelSpectrogram / MFCC share the original README's keys ``sample_rate`` (16000), ``n_fft`` (512),
  ``win_length`` (400), ``hop_length`` (160), ``f_min`` (20.0), ``f_max`` (None = Nyquist), ``n_mels`` (80) and
  ``n_mfcc`` (40). A key the chosen method does not use (``n_mels`` for Spectrogram, ``n_mfcc`` for
  MelSpectrogram) is accepted with a warning that it has no effect, so switching ``feature_method`` needs no edit.
* Fbank takes Kaldi's names: ``sample_rate`` (16000; ``sample_frequency`` is accepted as an alias),
  ``num_mel_bins`` (80; ``n_mels`` is accepted as an alias), ``frame_length`` (25 ms), ``frame_shift`` (10 ms),
  ``dither`` (1.0, int16 units, added only while ``self.training``), ``preemphasis_coefficient`` (0.97),
  ``remove_dc_offset`` (True), ``window_type`` ("povey"; also hamming, hanning, sine, rectangular, blackman),
  ``round_to_power_of_two`` (True), ``snip_edges`` (True), ``low_freq`` (20.0), ``high_freq`` (0.0; values
  <= 0 are offsets from Nyquist, as in Kaldi) and ``energy_floor`` (0.0). As in Kaldi, ``energy_floor`` only
  floors the optional energy coefficient, which this featurizer does not output, so it is accepted for config
  compatibility and has no effect; log mel energies are floored at float32 epsilon.

An unknown key raises :class:`~mvector.errors.ConfigError` naming the nearest valid key. An upper frequency
above Nyquist is clamped with one warning; a configuration that would create an all-zero mel filter is an error.

With ``normalize=True`` each utterance is mean/variance normalised over its valid frames only; padded frames of
the output are always exactly 0, so a clip gives the same features alone or inside a padded batch.

>>> import torch
>>> fz = build_featurizer("MelSpectrogram", {"n_mels": 64})
>>> waves = torch.randn(2, 16000) * 0.1
>>> feats, frames = fz(waves, torch.tensor([16000, 8000]))
>>> tuple(feats.shape), frames.tolist(), fz.feature_dim
((2, 101, 64), [101, 51], 64)
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Callable, Mapping, Union

import numpy as np
import torch
from torch import Tensor, nn

from mvector.errors import AudioError, ConfigError, check_keys, unknown_name_error

__all__ = [
    "FEATURIZERS",
    "Featurizer",
    "SpectrogramFeaturizer",
    "MelSpectrogramFeaturizer",
    "MFCCFeaturizer",
    "FbankFeaturizer",
    "SpecAugment",
    "build_featurizer",
    "masked_cmvn",
    "normalize_mode",
    "NORMALIZE_MODES",
]

#: Floor of the power before the natural log (Spectrogram, MelSpectrogram) and of the dB conversion (MFCC).
POWER_FLOOR = 1e-10
#: Kaldi's floor of the mel energies before the log (float32 machine epsilon).
KALDI_LOG_FLOOR = float(np.finfo(np.float32).eps)
#: Added to the variance in mean/variance normalisation.
CMVN_EPS = 1e-5
#: Kaldi computes its features on samples in int16 units.
INT16_SCALE = 32768.0

STFT_KEYS = ("sample_rate", "n_fft", "win_length", "hop_length", "f_min", "f_max", "n_mels", "n_mfcc")
FBANK_KEYS = (
    "sample_rate",
    "num_mel_bins",
    "frame_length",
    "frame_shift",
    "dither",
    "preemphasis_coefficient",
    "remove_dc_offset",
    "window_type",
    "round_to_power_of_two",
    "snip_edges",
    "low_freq",
    "high_freq",
    "energy_floor",
)
FBANK_ALIASES = {"n_mels": "num_mel_bins", "sample_frequency": "sample_rate"}


# --------------------------------------------------------------------------------------------- helpers


def _is_exporting() -> bool:
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def _frame(x: Tensor, size: int, hop: int) -> Tensor:
    """Frames ``[B, 1 + (T - size) // hop, size]`` of the rows of ``x`` (a strided view in eager mode)."""
    if not torch.onnx.is_in_onnx_export():
        return x.unfold(1, size, hop)
    count = 1 + torch.div(x.shape[1] - size, hop, rounding_mode="floor")
    starts = torch.arange(count, device=x.device) * hop
    return x[:, starts[:, None] + torch.arange(size, device=x.device)[None, :]]


def _power_spectrum(frames: Tensor, window: Tensor, n_fft: int) -> Tensor:
    """``|DFT_n_fft(frames · window)|²`` over the last axis (frames zero-padded to n_fft): ``[..., n_fft//2+1]``.

    Eager mode (and TorchScript tracing) uses ``torch.fft.rfft``. ONNX has no complex tensors and ONNX Runtime's
    float32 DFT op is less accurate than a matrix product (it loses ~1e-4 on the log of weak bins), so ONNX export
    uses a windowed DFT basis, a constant the exporter folds.
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


def _reflect_index(pos: Tensor, lengths: Tensor, symmetric: bool) -> Tensor:
    """Map sample positions (any integers) into ``[0, length)`` of each row by mirroring at the clip's ends.

    ``pos`` broadcasts against ``lengths`` (shape ``[B, 1, ...]``). ``symmetric=False`` mirrors about the end
    samples (numpy ``reflect``: ``-1 → 1``); ``symmetric=True`` repeats them (Kaldi: ``-1 → 0``).
    """
    if symmetric:
        period = (2 * lengths).clamp_min(1)
        m = torch.remainder(pos, period)
        return torch.where(m < lengths, m, period - 1 - m)
    period = (2 * (lengths - 1)).clamp_min(1)
    m = torch.remainder(pos, period)
    return torch.where(m < lengths, m, period - m).clamp_min(0)


def masked_cmvn(features: Tensor, frame_lengths: Tensor, eps: float = CMVN_EPS, variance: bool = True) -> Tensor:
    """Per-utterance mean/variance normalisation over the valid frames; padded frames become exactly 0.

    ``features`` is ``[B, frames, F]``; ``frame_lengths`` is ``[B]``. The variance is the population variance
    of the valid frames, and ``eps`` is added to it, so constant features give 0 rather than NaN. With
    ``variance=False`` only the mean is subtracted (3D-Speaker's and WeSpeaker's CAM++ front end).

    >>> import torch
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


def _htk_mel(freq: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + freq / 700.0)


def _htk_mel_inverse(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _kaldi_mel(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + freq / 700.0)


def _htk_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """``[n_fft//2+1, n_mels]`` triangles in Hz between HTK-mel-spaced corner frequencies, peak 1."""
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    corners = _htk_mel_inverse(np.linspace(_htk_mel(np.float64(f_min)), _htk_mel(np.float64(f_max)), n_mels + 2))
    width = np.diff(corners)
    rising = (bins[None, :] - corners[:-2, None]) / width[:-1, None]
    falling = (corners[2:, None] - bins[None, :]) / width[1:, None]
    return np.maximum(0.0, np.minimum(rising, falling)).T


def _kaldi_filterbank(sample_rate: int, n_fft: int, n_mels: int, low: float, high: float) -> np.ndarray:
    """``[n_fft//2+1, n_mels]`` Kaldi mel banks: triangles linear in Kaldi mel; the Nyquist bin is unused."""
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


def _check_filters(weights: np.ndarray, method: str, hint: str) -> None:
    empty = np.flatnonzero(weights.max(axis=0) <= 0.0)
    if empty.size:
        raise ConfigError(
            f"feature_conf ({method}): mel filter(s) {empty.tolist()[:5]} would be all zero (no FFT bin falls "
            f"inside them); {hint}"
        )


def _kaldi_window(kind: str, size: int) -> np.ndarray:
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


def _int(conf: Mapping[str, Any], key: str, where: str, minimum: int = 1) -> int:
    value = conf[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise ConfigError(f"{where}.{key} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ConfigError(f"{where}.{key} must be >= {minimum}, got {value!r}")
    return int(value)


def _float(conf: Mapping[str, Any], key: str, where: str) -> float:
    value = conf[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}.{key} must be a finite number, got {value!r}")
    return float(value)


def _bool(conf: Mapping[str, Any], key: str, where: str) -> bool:
    value = conf[key]
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def _upper_frequency(value: float, nyquist: float, key: str, where: str) -> float:
    if value > nyquist:
        # Point the warning at the first caller outside this module (constructor depths differ).
        frame, level = sys._getframe(1), 2
        while frame is not None and frame.f_code.co_filename == __file__:
            frame, level = frame.f_back, level + 1
        message = f"{where}.{key}={value:g} is above the Nyquist frequency {nyquist:g} Hz; using {nyquist:g}"
        warnings.warn(message, UserWarning, stacklevel=level)
        return nyquist
    return value


# ------------------------------------------------------------------------------------------ featurizers


class Featurizer(nn.Module):
    """Base class: waveforms ``[B, T]`` + lengths ``[B]`` (samples) → features ``[B, frames, F]`` + frame counts.

    Subclasses compute raw features in :meth:`compute`; this class validates the input (outside tracing),
    computes in float32 whatever the input dtype, normalises over valid frames and zeroes padded frames.
    ``config`` holds the resolved settings (every default filled in), ``method`` the registry name.

    >>> import torch
    >>> fz = build_featurizer("Spectrogram", {"n_fft": 256, "win_length": 256, "hop_length": 128})
    >>> isinstance(fz, Featurizer), fz.feature_dim, fz.frame_lengths(torch.tensor([1000])).tolist()
    (True, 129, [8])
    """

    method: str = ""

    def __init__(
        self, sample_rate: int, feature_dim: int, min_samples: int, normalize: Union[bool, str] = True
    ) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)
        self._feature_dim = int(feature_dim)
        self.min_samples = int(min_samples)
        self.normalize = normalize_mode(normalize) != "none"
        self.normalize_variance = normalize_mode(normalize) == "mean_var"
        self.config: dict[str, Any] = {}

    @property
    def feature_dim(self) -> int:
        """Size of the last axis of the features."""
        return self._feature_dim

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Number of frames for clips of ``lengths`` samples (int64 tensor)."""
        raise NotImplementedError

    def compute(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """Raw (unnormalised) features ``[B, frames, F]`` of float32 ``waveforms``; padded frames are unspecified."""
        raise NotImplementedError

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if lengths is None:
            lengths = torch.full(waveforms.shape[:1], waveforms.shape[-1], dtype=torch.long, device=waveforms.device)
        if not _is_exporting():
            self._check_input(waveforms, lengths)
        waveforms = waveforms.to(torch.float32)
        lengths = lengths.to(device=waveforms.device, dtype=torch.long)
        # Features are computed in float32 even under autocast (mel / DCT products lose too much in 16 bits).
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            feats = self.compute(waveforms, lengths)
        frame_lengths = self.frame_lengths(lengths)
        if self.normalize:
            return masked_cmvn(feats, frame_lengths, variance=self.normalize_variance), frame_lengths
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < frame_lengths[:, None]
        return torch.where(mask.unsqueeze(-1), feats, torch.zeros_like(feats)), frame_lengths

    def _check_input(self, waveforms: Tensor, lengths: Tensor) -> None:
        name = f"{self.method} featurizer"
        if not torch.is_tensor(waveforms) or waveforms.dim() != 2:
            shape = tuple(waveforms.shape) if torch.is_tensor(waveforms) else type(waveforms).__name__
            raise AudioError(f"{name}: expected waveforms of shape [batch, samples], got {shape}")
        if not (waveforms.is_floating_point()):
            raise AudioError(f"{name}: expected floating-point waveforms in [-1, 1], got {waveforms.dtype}")
        if not torch.is_tensor(lengths) or lengths.shape != waveforms.shape[:1]:
            shape = tuple(lengths.shape) if torch.is_tensor(lengths) else type(lengths).__name__
            raise AudioError(f"{name}: expected lengths of shape [{waveforms.shape[0]}], got {shape}")
        if waveforms.shape[0] == 0:
            raise AudioError(f"{name}: empty batch")
        total = waveforms.shape[1]
        # One host synchronisation; skipped while tracing / exporting.
        if bool(((lengths < self.min_samples) | (lengths > total)).any()):
            short = (lengths < self.min_samples).nonzero().flatten().cpu().numpy().tolist()
            if short:
                raise AudioError(
                    f"{name}: clip(s) at batch index {short[:5]} are shorter than one analysis window "
                    f"({self.min_samples} samples = {1000 * self.min_samples / self.sample_rate:g} ms at "
                    f"{self.sample_rate} Hz); use longer audio"
                )
            raise AudioError(f"{name}: lengths exceed the padded waveform length {total}")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items()) + f", normalize={self.normalize}"


class SpectrogramFeaturizer(Featurizer):
    """Natural log of the STFT power (periodic Hann window, ``center=True``, per-clip reflect padding).

    ``feature_dim`` is ``n_fft // 2 + 1``; a clip of ``n`` samples gives ``1 + n // hop_length`` frames
    (``n_fft`` even). Reflect padding mirrors each clip's own ends, never the batch padding.

    >>> import torch
    >>> fz = SpectrogramFeaturizer(n_fft=64, win_length=64, hop_length=32, normalize=False)
    >>> feats, frames = fz(torch.ones(1, 320) * 0.5, torch.tensor([320]))
    >>> tuple(feats.shape), frames.tolist(), round(float(feats[0, 3, 0]), 3)  # ln((0.5 * 32) ** 2)
    ((1, 11, 33), [11], 5.545)
    """

    method = "Spectrogram"

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        f_min: float = 20.0,
        f_max: float | None = None,
        n_mels: int = 80,
        n_mfcc: int = 40,
        normalize: Union[bool, str] = True,
        feature_dim: int | None = None,
    ) -> None:
        where = f"feature_conf ({self.method})"
        conf = {"sample_rate": sample_rate, "n_fft": n_fft, "win_length": win_length, "hop_length": hop_length}
        for key in conf:
            conf[key] = _int(conf, key, "feature_conf")
        if conf["win_length"] > conf["n_fft"]:
            raise ConfigError(f"{where}: win_length ({win_length}) must not exceed n_fft ({n_fft})")
        super().__init__(conf["sample_rate"], feature_dim or conf["n_fft"] // 2 + 1, 1, normalize)
        self.n_fft, self.hop_length, self.win_length = conf["n_fft"], conf["hop_length"], conf["win_length"]
        self.pad = self.n_fft // 2
        self.config = conf
        window = torch.zeros(self.n_fft, dtype=torch.float64)
        left = (self.n_fft - self.win_length) // 2
        window[left : left + self.win_length] = torch.hann_window(self.win_length, periodic=True, dtype=torch.float64)
        self.register_buffer("window", window.float(), persistent=False)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        return 1 + torch.div(lengths + 2 * self.pad - self.n_fft, self.hop_length, rounding_mode="floor")

    def power(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """STFT power ``[B, frames, n_fft//2+1]`` with per-clip reflect padding (``center=True``)."""
        frames = _frame(self.reflect_pad(waveforms, lengths), self.n_fft, self.hop_length)
        return _power_spectrum(frames, self.window, self.n_fft)

    def reflect_pad(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """``[B, T + 2·pad]``: each clip mirrored about its own first and last sample (numpy ``reflect``).

        Only the ``2·pad`` edge samples per row are gathered: the left edge in front of the batch, the right
        edge scattered right after each clip's last sample (whatever followed it in the batch is overwritten).
        Clips shorter than ``pad`` are mirrored repeatedly, as numpy does.
        """
        pad = self.pad
        if pad == 0:
            return waveforms
        steps = torch.arange(pad, device=waveforms.device)[None, :]
        ends = lengths[:, None]
        left = waveforms.gather(1, _reflect_index(steps - pad, ends, symmetric=False))
        right = waveforms.gather(1, _reflect_index(ends + steps, ends, symmetric=False))
        padded = torch.cat([left, waveforms, torch.zeros_like(left)], dim=1)
        return padded.scatter(1, ends + pad + steps, right)

    def compute(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        return self.power(waveforms, lengths).clamp_min(POWER_FLOOR).log()


class MelSpectrogramFeaturizer(SpectrogramFeaturizer):
    """Natural log of the HTK-scale mel power: triangular filters with peak 1 (no Slaney area normalisation).

    Same STFT as :class:`SpectrogramFeaturizer`; ``feature_dim`` is ``n_mels``. ``f_max=None`` means Nyquist.

    >>> fz = MelSpectrogramFeaturizer(n_mels=40, f_max=8000)
    >>> fz.feature_dim, tuple(fz.mel_fb.shape)
    (40, (257, 40))
    """

    method = "MelSpectrogram"

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        f_min: float = 20.0,
        f_max: float | None = None,
        n_mels: int = 80,
        n_mfcc: int = 40,
        normalize: Union[bool, str] = True,
        feature_dim: int | None = None,
    ) -> None:
        where = f"feature_conf ({self.method})"
        checked = {"n_mels": n_mels, "f_min": f_min, "f_max": f_max}
        n_mels = _int(checked, "n_mels", "feature_conf")
        super().__init__(
            sample_rate, n_fft, win_length, hop_length, normalize=normalize, feature_dim=feature_dim or n_mels
        )
        nyquist = self.sample_rate / 2.0
        f_min = _float(checked, "f_min", "feature_conf")
        f_max = (
            nyquist
            if f_max is None
            else _upper_frequency(_float(checked, "f_max", "feature_conf"), nyquist, "f_max", "feature_conf")
        )
        if not 0.0 <= f_min < f_max:
            raise ConfigError(f"{where}: need 0 <= f_min < f_max, got f_min={f_min:g}, f_max={f_max:g}")
        weights = _htk_filterbank(self.sample_rate, self.n_fft, n_mels, f_min, f_max)
        _check_filters(weights, self.method, "use fewer n_mels, a larger n_fft or a wider f_min..f_max range")
        self.config.update({"f_min": f_min, "f_max": f_max, "n_mels": n_mels})
        self.register_buffer("mel_fb", torch.from_numpy(weights).float(), persistent=False)

    def mel_power(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """Mel power ``[B, frames, n_mels]``."""
        return torch.matmul(self.power(waveforms, lengths), self.mel_fb.to(waveforms.dtype))

    def compute(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        return self.mel_power(waveforms, lengths).clamp_min(POWER_FLOOR).log()


class MFCCFeaturizer(MelSpectrogramFeaturizer):
    """MFCC as librosa computes them: orthonormal DCT-II of ``10·log10(max(mel_power, 1e-10))``.

    No ``top_db`` clipping is applied (librosa's ``power_to_db(..., top_db=None)``), the mel filters are HTK
    scale without area normalisation, and the first ``n_mfcc`` coefficients are kept.

    >>> fz = MFCCFeaturizer(n_mels=40, n_mfcc=13)
    >>> fz.feature_dim, tuple(fz.dct.shape)
    (13, (40, 13))
    """

    method = "MFCC"

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        f_min: float = 20.0,
        f_max: float | None = None,
        n_mels: int = 80,
        n_mfcc: int = 40,
        normalize: Union[bool, str] = True,
    ) -> None:
        n_mfcc = _int({"n_mfcc": n_mfcc}, "n_mfcc", "feature_conf")
        super().__init__(
            sample_rate, n_fft, win_length, hop_length, f_min, f_max, n_mels, normalize=normalize, feature_dim=n_mfcc
        )
        n_mels = self.config["n_mels"]
        if n_mfcc > n_mels:
            raise ConfigError(f"feature_conf (MFCC): n_mfcc ({n_mfcc}) must not exceed n_mels ({n_mels})")
        k = np.arange(n_mfcc)[None, :]
        n = np.arange(n_mels)[:, None]
        dct = np.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
        dct[:, 0] /= math.sqrt(2.0)
        self.config["n_mfcc"] = n_mfcc
        self.register_buffer("dct", torch.from_numpy(dct).float(), persistent=False)

    def compute(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        db = self.mel_power(waveforms, lengths).clamp_min(POWER_FLOOR).log10() * 10.0
        return torch.matmul(db, self.dct.to(db.dtype))


class FbankFeaturizer(Featurizer):
    """Kaldi-compatible log mel filter bank (what ``compute-fbank-feats`` / kaldi-native-fbank produce).

    Per frame: dither (training only, int16 units), DC removal, pre-emphasis, window, power spectrum of the
    zero-padded frame, Kaldi mel banks, ``log(max(energy, float32 eps))``. The float waveform is scaled by
    32768 first, as Kaldi and WeSpeaker do. ``frame_length``/``frame_shift`` are in ms. With ``snip_edges``
    a clip of ``n`` samples gives ``1 + (n - window) // shift`` frames (shorter clips are an
    :class:`~mvector.errors.AudioError`); without it, ``(n + shift // 2) // shift`` frames with Kaldi's
    mirrored edges.

    >>> import torch
    >>> fz = FbankFeaturizer(num_mel_bins=40).eval()
    >>> feats, frames = fz(torch.randn(2, 4000) * 0.1, torch.tensor([4000, 400]))
    >>> tuple(feats.shape), frames.tolist()
    ((2, 23, 40), [23, 1])
    """

    method = "Fbank"

    def __init__(
        self,
        sample_rate: int = 16000,
        num_mel_bins: int = 80,
        frame_length: float = 25.0,
        frame_shift: float = 10.0,
        dither: float = 1.0,
        preemphasis_coefficient: float = 0.97,
        remove_dc_offset: bool = True,
        window_type: str = "povey",
        round_to_power_of_two: bool = True,
        snip_edges: bool = True,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        energy_floor: float = 0.0,
        normalize: Union[bool, str] = True,
    ) -> None:
        where = "feature_conf"
        c = dict(locals())
        sample_rate = _int(c, "sample_rate", where)
        num_mel_bins = _int(c, "num_mel_bins", where)
        for key in ("frame_length", "frame_shift", "dither", "preemphasis_coefficient", "low_freq", "high_freq"):
            c[key] = _float(c, key, where)
        for key in ("remove_dc_offset", "round_to_power_of_two", "snip_edges"):
            _bool(c, key, where)
        if _float(c, "energy_floor", where) < 0 or c["dither"] < 0:
            raise ConfigError(f"{where} (Fbank): dither and energy_floor must be >= 0")
        if not 0.0 <= c["preemphasis_coefficient"] <= 1.0:
            raise ConfigError(
                f"{where} (Fbank): preemphasis_coefficient must be in [0, 1], got {preemphasis_coefficient}"
            )
        win = int(sample_rate * c["frame_length"] / 1000.0 + 1e-6)
        shift = int(sample_rate * c["frame_shift"] / 1000.0 + 1e-6)
        if win < 2 or shift < 1:
            raise ConfigError(
                f"{where} (Fbank): frame_length={frame_length} ms / frame_shift={frame_shift} ms give a window of "
                f"{win} and a shift of {shift} samples at {sample_rate} Hz; both must be longer"
            )
        n_fft = 1 << (win - 1).bit_length() if round_to_power_of_two else win
        nyquist = sample_rate / 2.0
        high = c["high_freq"] if c["high_freq"] > 0 else nyquist + c["high_freq"]
        high = _upper_frequency(high, nyquist, "high_freq", where)
        low = c["low_freq"]
        if not 0.0 <= low < high:
            raise ConfigError(
                f"{where} (Fbank): need 0 <= low_freq < high_freq, got low_freq={low:g}, high_freq={high:g}"
            )
        weights = _kaldi_filterbank(sample_rate, n_fft, num_mel_bins, low, high)
        _check_filters(
            weights, self.method, "use fewer num_mel_bins, a longer frame_length or a wider low_freq..high_freq range"
        )
        window = _kaldi_window(str(window_type).lower(), win)
        super().__init__(sample_rate, num_mel_bins, win if snip_edges else 1, normalize)
        self.win, self.shift, self.n_fft = win, shift, n_fft
        self.snip_edges, self.remove_dc_offset = snip_edges, remove_dc_offset
        self.dither, self.preemphasis = c["dither"], c["preemphasis_coefficient"]
        self.config = {
            "sample_rate": sample_rate,
            "num_mel_bins": num_mel_bins,
            "frame_length": c["frame_length"],
            "frame_shift": c["frame_shift"],
            "dither": self.dither,
            "preemphasis_coefficient": self.preemphasis,
            "remove_dc_offset": remove_dc_offset,
            "window_type": str(window_type).lower(),
            "round_to_power_of_two": round_to_power_of_two,
            "snip_edges": snip_edges,
            "low_freq": low,
            "high_freq": high,
            "energy_floor": c["energy_floor"],
        }
        self.register_buffer("window", torch.from_numpy(window).float(), persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(weights).float(), persistent=False)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        if self.snip_edges:
            return (1 + torch.div(lengths - self.win, self.shift, rounding_mode="floor")).clamp_min(0)
        return torch.div(lengths + self.shift // 2, self.shift, rounding_mode="floor")

    def frames(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """The analysis frames ``[B, frames, window]`` (in the waveform's units), before any processing."""
        if self.snip_edges:
            return _frame(waveforms, self.win, self.shift)
        count = torch.div(waveforms.shape[1] + self.shift // 2, self.shift, rounding_mode="floor")
        starts = torch.arange(count, device=waveforms.device) * self.shift + (self.shift // 2 - self.win // 2)
        pos = (starts[:, None] + torch.arange(self.win, device=waveforms.device)[None, :]).reshape(1, -1)
        idx = _reflect_index(pos, lengths[:, None], symmetric=True)
        return waveforms.gather(1, idx).reshape(waveforms.shape[0], -1, self.win)

    def compute(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        # Kaldi works in int16 units. Rather than scaling the waveform by 32768, the energy floor is divided by
        # 32768² and 2·ln(32768) added after the log (the same numbers; a pass over the batch saved).
        frames = self.frames(waveforms, lengths)
        if self.training and self.dither > 0:
            frames = frames + torch.randn_like(frames) * (self.dither / INT16_SCALE)
        # DC removal then pre-emphasis (x[i] -= c·x[i-1], x[0] -= c·x[0]) folded together: removing the frame
        # mean m first and pre-emphasising after equals pre-emphasising the raw frame and subtracting (1 - c)·m.
        mean = frames.mean(-1, keepdim=True) if self.remove_dc_offset else None
        if self.preemphasis > 0:
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = torch.add(frames, previous, alpha=-self.preemphasis)
        if mean is not None:
            frames = frames - (1.0 - self.preemphasis) * mean
        power = _power_spectrum(frames, self.window, self.n_fft)
        mel = torch.matmul(power, self.mel_fb.to(power.dtype))
        return mel.clamp_min(KALDI_LOG_FLOOR / INT16_SCALE**2).log() + 2.0 * math.log(INT16_SCALE)


#: Featurizer classes by method name (looked up case-insensitively by :func:`build_featurizer`).
FEATURIZERS: dict[str, type[Featurizer]] = {
    "Spectrogram": SpectrogramFeaturizer,
    "MelSpectrogram": MelSpectrogramFeaturizer,
    "MFCC": MFCCFeaturizer,
    "Fbank": FbankFeaturizer,
}


def build_featurizer(
    feature_method: str, feature_conf: Mapping[str, Any] | None = None, normalize: Union[bool, str] = True
) -> Featurizer:
    """Build the featurizer registered as ``feature_method`` (case-insensitive) from ``feature_conf``.

    Unknown methods and keys raise :class:`~mvector.errors.ConfigError` naming the nearest valid one.
    For Fbank, ``n_mels`` and ``sample_frequency`` are accepted as aliases of ``num_mel_bins`` and
    ``sample_rate`` (giving both spellings with different values is an error).

    >>> build_featurizer("fbank", {"n_mels": 64}).feature_dim
    64
    >>> build_featurizer("MFCC", {"n_mfcc": 20}).feature_dim
    20
    >>> try:
    ...     build_featurizer("Fbak")
    ... except ConfigError as err:
    ...     print(err)
    unknown feature method 'Fbak'; did you mean 'Fbank'? Valid: Fbank, MFCC, MelSpectrogram, Spectrogram
    """
    by_lower = {name.lower(): name for name in FEATURIZERS}
    name = by_lower.get(str(feature_method).lower())
    if name is None:
        raise unknown_name_error("feature method", str(feature_method), FEATURIZERS)
    conf = dict(feature_conf or {})
    where = f"feature_conf ({name})"
    if name == "Fbank":
        for alias, key in FBANK_ALIASES.items():
            if alias in conf:
                value = conf.pop(alias)
                if key in conf and conf[key] != value:
                    raise ConfigError(f"{where}: {alias}={value!r} conflicts with {key}={conf[key]!r}; give only {key}")
                conf[key] = value
        check_keys(conf, FBANK_KEYS + tuple(FBANK_ALIASES), where)
        if conf.get("energy_floor"):
            warnings.warn(f"{where}: energy_floor has no effect (no energy coefficient is output)", stacklevel=2)
    else:
        check_keys(conf, STFT_KEYS, where)
        unused = [k for k in _UNUSED_KEYS.get(name, ()) if k in conf]
        if unused:
            warnings.warn(f"{where}: {', '.join(unused)} has no effect with {name}", stacklevel=2)
    return FEATURIZERS[name](**conf, normalize=normalize_mode(normalize))


#: Values of ``preprocess_conf.normalize``: per-utterance mean and variance, mean only, or nothing.
NORMALIZE_MODES = ("mean_var", "mean", "none")


def normalize_mode(value: Union[bool, str]) -> str:
    """``preprocess_conf.normalize`` as one of :data:`NORMALIZE_MODES` (True means ``mean_var``).

    >>> normalize_mode(True), normalize_mode(False), normalize_mode("mean")
    ('mean_var', 'none', 'mean')
    """
    if isinstance(value, bool):
        return "mean_var" if value else "none"
    if value in NORMALIZE_MODES:
        return str(value)
    valid = ", ".join(NORMALIZE_MODES)
    raise ConfigError(f"preprocess_conf.normalize must be true, false or one of {valid}, got {value!r}")


#: Keys of the shared STFT set that a method accepts (so configs switch methods freely) but does not use.
_UNUSED_KEYS = {"Spectrogram": ("n_mels", "n_mfcc"), "MelSpectrogram": ("n_mfcc",)}


# ------------------------------------------------------------------------------------------ SpecAugment


class SpecAugment(nn.Module):
    """Frequency and time masking of normalised features (training only; identity in eval mode).

    Each utterance is augmented with probability ``prob``: ``freq_masks`` bands of width uniform in
    ``[0, freq_mask_width]`` bins and ``time_masks`` spans of width uniform in ``[0, time_mask_width]`` frames,
    placed inside the utterance's valid frames, are set to 0; padded frames are never touched. Vectorised over
    the batch (no Python loop over utterances).

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> aug = SpecAugment(freq_masks=2, freq_mask_width=4, time_masks=2, time_mask_width=5)
    >>> x = torch.ones(3, 50, 20)
    >>> y = aug(x, torch.tensor([50, 30, 10]))
    >>> bool((y == 0).any()), bool((y[1, 30:] == 1).all()), bool(torch.equal(aug.eval()(x, torch.tensor([50] * 3)), x))
    (True, True, True)
    """

    def __init__(
        self,
        prob: float = 1.0,
        freq_masks: int = 1,
        freq_mask_width: int = 8,
        time_masks: int = 1,
        time_mask_width: int = 10,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(prob) <= 1.0:
            raise ConfigError(f"SpecAugment prob must be in [0, 1], got {prob}")
        for key, value in (
            ("freq_masks", freq_masks),
            ("freq_mask_width", freq_mask_width),
            ("time_masks", time_masks),
            ("time_mask_width", time_mask_width),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"SpecAugment {key} must be a non-negative integer, got {value!r}")
        self.prob = float(prob)
        self.freq_masks, self.freq_mask_width = freq_masks, freq_mask_width
        self.time_masks, self.time_mask_width = time_masks, time_mask_width

    @staticmethod
    def _band_mask(count: int, max_width: int, limit: Tensor, size: int) -> Tensor:
        """``[B, size]`` bool: ``count`` random bands of width <= max_width inside ``[0, limit)`` per row."""
        device = limit.device
        batch = limit.shape[0]
        width = torch.randint(0, max_width + 1, (batch, count), device=device)
        width = torch.minimum(width, limit[:, None])
        start = (torch.rand(batch, count, device=device) * (limit[:, None] - width + 1).to(torch.float32)).long()
        start = torch.minimum(start, limit[:, None] - width)
        pos = torch.arange(size, device=device)[None, None, :]
        inside = (pos >= start[:, :, None]) & (pos < (start + width)[:, :, None])
        return inside.any(1)

    def forward(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        if not self.training or self.prob <= 0:
            return features
        batch, frames, dims = features.shape
        lengths = frame_lengths.to(device=features.device, dtype=torch.long).clamp(0, frames)
        mask = torch.zeros(batch, frames, dims, dtype=torch.bool, device=features.device)
        if self.freq_masks and self.freq_mask_width:
            dims_t = torch.full((batch,), dims, dtype=torch.long, device=features.device)
            mask |= self._band_mask(self.freq_masks, self.freq_mask_width, dims_t, dims)[:, None, :]
        if self.time_masks and self.time_mask_width:
            mask |= self._band_mask(self.time_masks, self.time_mask_width, lengths, frames)[:, :, None]
        apply = torch.rand(batch, device=features.device) < self.prob
        valid = torch.arange(frames, device=features.device)[None, :] < lengths[:, None]
        mask &= (valid & apply[:, None])[:, :, None]
        return features.masked_fill(mask, 0.0)

    def extra_repr(self) -> str:
        return (
            f"prob={self.prob}, freq_masks={self.freq_masks}, freq_mask_width={self.freq_mask_width}, "
            f"time_masks={self.time_masks}, time_mask_width={self.time_mask_width}"
        )
