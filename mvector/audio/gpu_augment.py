"""Batched waveform augmentation on the training device: speed, reverb, equalizer, noise at an SNR, generated
coloured noise, gain and shift on a padded batch ``[B, T]`` with its lengths, in a handful of tensor operations
and without host synchronisation.

:class:`GpuAugmenter` reads the same configuration as the CPU augmenter (``mvector/configs/augmentation.yml``:
sections ``speed``, ``reverb``, ``equalizer``, ``noise``, ``colored_noise``, ``volume``, ``shift``, same keys,
same order, same probabilities) so the data-loading workers only decode and crop, and the GPU does the rest:

* **speed** by band-limited resampling (polyphase windowed-sinc as one strided ``conv1d`` per speed factor):
  factor ``s`` plays the clip ``s`` times faster, ``len / s`` samples long (tempo and pitch change together, like
  ``sox speed``). Each clip of the batch draws its factor; every factor runs on the whole batch and each clip
  takes its own result (no host round trip to group clips). With ``speed.speaker_per_speed`` and
  ``with_groups=True`` the call also returns each clip's speed label group (0: label kept; ``k``: the ``k``-th
  factor of :attr:`GpuAugmenter.label_speeds`), as the CPU augmenter's ``augment`` does.
* **reverb** by FFT convolution with a room impulse response from a bank held on the device; the response's
  direct-path peak stays at time 0 with gain 1 (as on the CPU).
* **noise** from a bank of noise recordings (looped when shorter than the clip, random offset) scaled to an SNR
  drawn in ``[min_snr_db, max_snr_db]``, powers measured over each clip's valid samples.
* **equalizer**: the CPU augmenter's random peaks and band limits (same distributions), one zero-phase FFT
  filter per padded row. **colored_noise**: Gaussian noise shaped to ``1/f^exponent`` by FFT, added at an SNR.
* **volume**: a gain drawn in ``[min_gain_db, max_gain_db]`` dB. **shift**: zero-filled time shift.

Every random draw comes from the ``generator`` given (deterministic: one ``torch.rand`` call, plus the
equalizer's peaks and the coloured noise when they are on), samples past each clip's length are ignored and
returned as 0 (the equalizer's FFT filter alone spans the padded row, so its edge effects depend on the padding
width), and lengths are updated for
the speed change. With ``out_samples`` the output has that many columns: longer clips (slowed down, or loaded
longer on purpose, e.g. ``max_duration × max(speeds)``) are cropped at a random offset.

>>> import torch
>>> aug = GpuAugmenter({"speed": {"prob": 1.0, "speeds": [1.25]}, "volume": {"prob": 1.0, "min_gain_db": 6.0,
...                     "max_gain_db": 6.0}, "noise": {"prob": 0}, "reverb": {"prob": 0}})
>>> waves, lengths = aug(torch.ones(2, 1000) * 0.1, torch.tensor([1000, 500]), torch.Generator().manual_seed(0))
>>> lengths.tolist(), round(float(waves[0, 400]), 4), float(waves[1, 400:].abs().max())
([800, 400], 0.1995, 0.0)
"""

from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mvector.audio.augment import (
    EQ_CENTRE_HZ,
    EQ_HIGHPASS_HZ,
    EQ_LOWPASS_HZ,
    EQ_OCTAVES,
    WAVE_AUGMENTATIONS,
    equalizer_changes_anything,
    equalizer_gain_db,
    find_audio_files,
    load_augmentation_config,
    speed_label_factors,
)
from mvector.errors import AudioError, ConfigError

__all__ = ["GpuAugmenter", "SpeedResampler", "build_gpu_augmenter"]

#: Random draws per clip (columns of the one ``torch.rand`` call; the equalizer's peaks draw their own).
_DRAWS = 22
#: Zero crossings of the windowed-sinc kernel on each side (quality of the speed resampler).
SINC_ZEROS = 8


def _valid_mask(lengths: Tensor, total: int) -> Tensor:
    return torch.arange(total, device=lengths.device)[None, :] < lengths[:, None]


class SpeedResampler(nn.Module):
    """Speed change by ``factor`` of a padded batch: polyphase windowed-sinc resampling as one strided conv1d.

    ``factor`` is taken as a fraction ``p / q`` (denominator at most 1000): output sample ``j`` reads the input
    at position ``j·p/q``; each of the ``q`` phases is one output channel of a conv1d with stride ``p``. The
    low-pass cutoff is ``0.97 · min(1, 1/factor)`` of the input's Nyquist frequency (no aliasing when speeding
    up), the kernel a Hann-windowed sinc with :data:`SINC_ZEROS` zero crossings per side.

    >>> import torch
    >>> rs = SpeedResampler(1.0)
    >>> x = torch.randn(2, 50)
    >>> y, n = rs(x, torch.tensor([50, 30]))
    >>> n.tolist(), bool(torch.allclose(y[0], x[0], atol=1e-6)), bool((y[1, 30:] == 0).all())
    ([50, 30], True, True)
    """

    def __init__(self, factor: float) -> None:
        super().__init__()
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and 0.2 <= factor <= 5.0):
            raise ConfigError(f"speed factor must be a number in [0.2, 5], got {factor!r}")
        frac = Fraction(float(factor)).limit_denominator(1000)
        self.factor = float(factor)
        self.p, self.q = frac.numerator, frac.denominator
        cutoff = 0.97 * min(1.0, 1.0 / self.factor)
        half = SINC_ZEROS / cutoff  # kernel half-width in input samples
        self.half = math.ceil(half)
        r = np.arange(self.q)
        base = (r * self.p) // self.q
        phase = (r * self.p) / self.q - base
        width = int(base.max()) + 2 * self.half
        kappa = np.arange(width)
        # Tap kappa of phase r reads input m·p + kappa - (half - 1); output j = q·m + r sits at m·p + r·p/q, so
        # the tap's distance to it is r·p/q - (kappa - (half - 1)) = base + phase - kappa + half - 1.
        dist = (base + phase)[:, None] - (kappa[None, :] - (self.half - 1))
        window = np.where(np.abs(dist) < half, 0.5 + 0.5 * np.cos(np.pi * dist / half), 0.0)
        kernel = np.sinc(cutoff * dist) * window
        kernel /= kernel.sum(axis=1, keepdims=True)  # unit gain at 0 Hz in every phase
        self.register_buffer("kernel", torch.from_numpy(kernel[:, None, :]).float(), persistent=False)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """``floor(length / factor)`` (exact integer arithmetic on ``p`` and ``q``)."""
        return torch.div(lengths * self.q, self.p, rounding_mode="floor")

    def forward(self, waveforms: Tensor, lengths: Tensor, out_samples: int | None = None) -> tuple[Tensor, Tensor]:
        """Resampled ``[B, out_samples]`` (default: enough for the longest possible clip) and new lengths."""
        batch, total = waveforms.shape
        new_lengths = self.output_lengths(lengths)
        out_samples = out_samples if out_samples is not None else (total * self.q) // self.p
        if self.p == self.q:
            out = waveforms[:, :out_samples] * _valid_mask(lengths, total)[:, :out_samples]
            if out.shape[1] < out_samples:
                out = F.pad(out, (0, out_samples - out.shape[1]))
            return out, new_lengths
        x = waveforms * _valid_mask(lengths, total)
        steps = -(-out_samples // self.q)
        width = self.kernel.shape[-1]
        right = max(0, (steps - 1) * self.p + width - (self.half - 1) - total)
        x = F.pad(x, (self.half - 1, right))[:, None, :]
        y = F.conv1d(x, self.kernel.to(x.dtype), stride=self.p)[:, :, :steps]  # [B, q, steps]
        y = y.transpose(1, 2).reshape(batch, steps * self.q)[:, :out_samples]
        return y * _valid_mask(new_lengths, out_samples), new_lengths


def _bank(clips: Sequence[np.ndarray | Tensor], what: str) -> tuple[Tensor, Tensor]:
    """Stack 1-D clips into a zero-padded bank ``[N, L]`` and their lengths ``[N]``."""
    tensors = [torch.as_tensor(np.asarray(c, dtype=np.float32)).flatten() for c in clips]
    tensors = [t for t in tensors if t.numel() > 0]
    if not tensors:
        return torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
    for t in tensors:
        if not torch.isfinite(t).all():
            raise AudioError(f"{what}: a clip holds NaN or infinite samples")
    lengths = torch.tensor([t.numel() for t in tensors], dtype=torch.long)
    bank = torch.zeros(len(tensors), int(lengths.max()))
    for i, t in enumerate(tensors):
        bank[i, : t.numel()] = t
    return bank, lengths


def _aligned_rirs(rirs: Sequence[np.ndarray | Tensor]) -> tuple[Tensor, Tensor]:
    """Impulse responses scaled so their direct-path peak is 1, with each peak's index (all-zero ones dropped)."""
    kept, peaks = [], []
    for rir in rirs:
        r = np.asarray(rir, dtype=np.float32).flatten()
        if r.size == 0:
            continue
        peak = int(np.argmax(np.abs(r)))
        if r[peak] == 0.0:
            continue
        kept.append(r / r[peak])
        peaks.append(peak)
    bank, _ = _bank(kept, "reverb impulse responses")
    return bank, torch.tensor(peaks, dtype=torch.long)


class GpuAugmenter(nn.Module):
    """Batched speed / reverb / noise / volume / shift augmentation of padded waveforms (see the module text).

    ``conf``: an augmentation config (mapping, YAML path or None for the bundled defaults; the ``noise_dir``
    and ``rir_dir`` folders are *not* read here, see :meth:`from_config`). ``noise`` and ``rirs``: the banks,
    sequences of 1-D arrays at ``sample_rate``. A section whose bank is empty is off. Move the module to the
    training device (``.to("cuda")``): the banks are buffers.

    ``forward(waveforms [B, T], lengths [B], generator=None, out_samples=None)`` returns the augmented
    ``[B, out_samples or T]`` float32 batch (zeros past each clip's length) and the new lengths; the input is
    not modified. ``max_speed`` is the largest speed factor in use (crop that much extra to keep full crops).

    >>> import torch
    >>> aug = GpuAugmenter({"noise": {"prob": 1.0, "min_snr_db": 10.0, "max_snr_db": 10.0}, "speed": {"prob": 0},
    ...                     "reverb": {"prob": 0}, "volume": {"prob": 0}}, noise=[torch.randn(3000).numpy()])
    >>> x = torch.sin(torch.arange(8000) * 0.1)[None]
    >>> y, n = aug(x, torch.tensor([8000]), torch.Generator().manual_seed(1))
    >>> snr = 10 * torch.log10(x.pow(2).sum() / (y - x).pow(2).sum())
    >>> aug.enabled, round(float(snr), 2)
    (['noise'], 10.0)
    """

    def __init__(
        self,
        conf: Union[Mapping[str, Any], str, os.PathLike, None] = None,
        sample_rate: int = 16000,
        noise: Sequence[np.ndarray | Tensor] | None = None,
        rirs: Sequence[np.ndarray | Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.conf = load_augmentation_config(conf)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ConfigError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        self.sample_rate = sample_rate
        c = self.conf
        noise_bank, noise_lengths = _bank(list(noise or []), "noise bank")
        rir_bank, rir_peaks = _aligned_rirs(list(rirs or []))
        self.register_buffer("noise_bank", noise_bank, persistent=False)
        self.register_buffer("noise_lengths", noise_lengths, persistent=False)
        self.register_buffer("rir_bank", rir_bank, persistent=False)
        self.register_buffer("rir_peaks", rir_peaks, persistent=False)
        self.speeds = [float(s) for s in c["speed"]["speeds"]]
        for s in self.speeds:
            if not 0.2 <= s <= 5.0:
                raise ConfigError(f"speed.speeds in the augmentation config must lie in [0.2, 5], got {s}")
        self.resamplers = nn.ModuleList(SpeedResampler(s) for s in sorted(set(self.speeds)) if s != 1.0)
        self.register_buffer("speed_table", torch.tensor(self.speeds or [1.0]), persistent=False)
        self.enabled: list[str] = []
        for name in WAVE_AUGMENTATIONS:
            if c[name]["prob"] <= 0 or name == "pitch":  # pitch runs on the CPU only (the trainer falls back)
                continue
            if name == "noise" and noise_bank.shape[0] == 0 or name == "reverb" and rir_bank.shape[0] == 0:
                continue
            if name == "speed" and not len(self.resamplers):
                continue
            if name == "volume" and c[name]["min_gain_db"] == c[name]["max_gain_db"] == 0.0:
                continue
            if name == "shift" and c[name]["max_shift_ms"] == 0.0:
                continue
            if name == "equalizer" and not equalizer_changes_anything(c[name]):
                continue
            self.enabled.append(name)
        self.max_speed = max(self.speeds) if "speed" in self.enabled else 1.0
        #: Speeds trained as speakers of their own (``speed.speaker_per_speed``), in label-group order.
        self.label_speeds = speed_label_factors(c) if "speed" in self.enabled else []
        self._rir_spectra: dict[tuple[int, str, torch.dtype], Tensor] = {}

    @classmethod
    def from_config(
        cls,
        conf: Union[Mapping[str, Any], str, os.PathLike, None] = None,
        sample_rate: int = 16000,
        max_noise_seconds: float = 1800.0,
        max_rir_seconds: float = 2.0,
        max_files: int = 2000,
    ) -> GpuAugmenter:
        """Build from a config, decoding the noise and impulse-response folders it names into device banks.

        At most ``max_files`` files per folder (sorted by path) and ``max_noise_seconds`` of noise in total
        are loaded (the rest is left out with one warning); impulse responses are cut to ``max_rir_seconds``.
        Unreadable files are skipped with a warning; a missing or empty folder turns that section off with a
        warning, as on the CPU.
        """
        from mvector.audio.io import load_audio

        c = load_augmentation_config(conf)
        banks: dict[str, list[np.ndarray]] = {"noise": [], "reverb": []}
        for name, key in (("noise", "noise_dir"), ("reverb", "rir_dir")):
            if c[name]["prob"] <= 0:
                continue
            files = find_audio_files(str(c[name][key]))
            if not files:
                message = f"augmentation: {name} folder {c[name][key]!r} holds no audio; {name} is off"
                warnings.warn(message, stacklevel=2)
                continue
            budget = int((max_noise_seconds if name == "noise" else max_rir_seconds * max_files) * sample_rate)
            for path in files[:max_files]:
                try:
                    samples = load_audio(path, sample_rate)
                except AudioError as err:
                    warnings.warn(f"augmentation: skipping unreadable file {path}: {err}", stacklevel=2)
                    continue
                if name == "reverb":
                    samples = samples[: int(max_rir_seconds * sample_rate)]
                if samples.size > budget:
                    warnings.warn(f"augmentation: {name} bank is full; files after {path} are left out", stacklevel=2)
                    break
                budget -= samples.size
                banks[name].append(samples)
            if len(files) > max_files:
                message = f"augmentation: only the first {max_files} files of {c[name][key]!r} are used"
                warnings.warn(message, stacklevel=2)
        return cls(c, sample_rate, noise=banks["noise"], rirs=banks["reverb"])

    def extra_repr(self) -> str:
        return (
            f"enabled={self.enabled}, sample_rate={self.sample_rate}, noise_clips={self.noise_bank.shape[0]}, "
            f"rirs={self.rir_bank.shape[0]}"
        )

    # ---------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        waveforms: Tensor,
        lengths: Tensor,
        generator: torch.Generator | None = None,
        out_samples: int | None = None,
        with_groups: bool = False,
    ) -> tuple[Tensor, ...]:
        if not torch.is_tensor(waveforms) or waveforms.dim() != 2 or not waveforms.is_floating_point():
            got = tuple(waveforms.shape) if torch.is_tensor(waveforms) else type(waveforms).__name__
            raise AudioError(f"GpuAugmenter: expected float waveforms [batch, samples], got {got}")
        if not torch.is_tensor(lengths) or lengths.shape != waveforms.shape[:1]:
            raise AudioError(f"GpuAugmenter: expected lengths of shape [{waveforms.shape[0]}]")
        device = waveforms.device
        x = waveforms.to(torch.float32)
        lengths = lengths.to(device=device, dtype=torch.long, non_blocking=True).clamp(0, x.shape[1])
        batch, total = x.shape
        out_samples = total if out_samples is None else int(out_samples)
        if out_samples < 1:
            raise ConfigError(f"GpuAugmenter: out_samples must be >= 1, got {out_samples}")
        u = torch.rand(batch, _DRAWS, device=device, generator=generator)
        x = x * _valid_mask(lengths, total)
        c = self.conf
        groups = torch.zeros(batch, dtype=torch.long, device=device)
        with torch.autocast(device_type=device.type, enabled=False):
            if "speed" in self.enabled:
                x, lengths, factors = self._speed(x, lengths, u[:, 0] < c["speed"]["prob"], u[:, 1])
                for k, factor in enumerate(self.label_speeds, start=1):
                    groups = torch.where(factors == factor, torch.full_like(groups, k), groups)
            if "reverb" in self.enabled:
                x = self._reverb(x, lengths, u[:, 2] < c["reverb"]["prob"], u[:, 3])
            if "equalizer" in self.enabled:
                x = self._equalizer(x, lengths, u[:, 13] < c["equalizer"]["prob"], u[:, 14:19], generator)
            if "noise" in self.enabled:
                x = self._noise(x, lengths, u[:, 4] < c["noise"]["prob"], u[:, 5], u[:, 6], u[:, 7])
            if "colored_noise" in self.enabled:
                apply = u[:, 19] < c["colored_noise"]["prob"]
                x = self._colored_noise(x, lengths, apply, u[:, 20], u[:, 21], generator)
            if "volume" in self.enabled:
                x = self._volume(x, u[:, 8] < c["volume"]["prob"], u[:, 9])
            if "shift" in self.enabled:
                x = self._shift(x, lengths, u[:, 10] < c["shift"]["prob"], u[:, 11])
            x, lengths = self._crop(x, lengths, out_samples, u[:, 12])
        return (x, lengths, groups) if with_groups else (x, lengths)

    # ---------------------------------------------------------------------------------------- augmentations
    def _speed(self, x: Tensor, lengths: Tensor, apply: Tensor, draw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, total = x.shape
        index = (draw * len(self.speeds)).long().clamp_max(len(self.speeds) - 1)
        choice = self.speed_table[index]
        choice = torch.where(apply, choice, torch.ones_like(choice))
        width = max([total] + [(total * r.q) // r.p for r in self.resamplers])
        out = F.pad(x, (0, width - total))
        new_lengths = lengths
        for r in self.resamplers:
            y, n = r(x, lengths, width)
            pick = choice == r.factor
            out = torch.where(pick[:, None], y, out)
            new_lengths = torch.where(pick, n, new_lengths)
        return out, new_lengths, choice

    def _rir_spectrum(self, size: int, device: torch.device) -> Tensor:
        """``rfft`` of every aligned response, circularly shifted so the direct path sits at index 0."""
        key = (size, str(device), self.rir_bank.dtype)
        spec = self._rir_spectra.get(key)
        if spec is None:
            bank = F.pad(self.rir_bank.to(torch.float32), (0, size - self.rir_bank.shape[1]))
            idx = (torch.arange(size, device=bank.device)[None, :] + self.rir_peaks[:, None]) % size
            spec = torch.fft.rfft(bank.gather(1, idx))
            self._rir_spectra = {key: spec}  # one size at a time (crops have one length)
        return spec

    def _reverb(self, x: Tensor, lengths: Tensor, apply: Tensor, draw: Tensor) -> Tensor:
        batch, total = x.shape
        count = self.rir_bank.shape[0]
        size = 1 << (total + self.rir_bank.shape[1]).bit_length()
        which = (draw * count).long().clamp_max(count - 1)
        spec = torch.fft.rfft(x, n=size) * self._rir_spectrum(size, x.device)[which]
        wet = torch.fft.irfft(spec, n=size)[:, :total] * _valid_mask(lengths, total)
        return torch.where(apply[:, None], wet, x)

    def _equalizer(self, x: Tensor, lengths: Tensor, apply: Tensor, draw: Tensor, generator) -> Tensor:
        """The CPU augmenter's equalizer (same draws' distributions), filtering each padded row by FFT."""
        batch, total = x.shape
        c = self.conf["equalizer"]
        bands = int(c["max_bands"])
        peaks = torch.rand(batch, 3, bands, device=x.device, generator=generator)
        count = (draw[:, 0] * (bands + 1)).long().clamp_max(bands)
        log_lo, log_hi = math.log(EQ_CENTRE_HZ[0]), math.log(EQ_CENTRE_HZ[1])
        centres = torch.exp(log_lo + peaks[:, 0] * (log_hi - log_lo))
        octaves = EQ_OCTAVES[0] + peaks[:, 1] * (EQ_OCTAVES[1] - EQ_OCTAVES[0])
        used = torch.arange(bands, device=x.device)[None, :] < count[:, None]
        gains = (2.0 * peaks[:, 2] - 1.0) * c["max_gain_db"] * used
        limited = draw[:, 1] < c["band_limit_prob"]
        kind = (draw[:, 2] * 3).long().clamp_max(2)  # 0 low-pass, 1 high-pass, 2 both
        lowpass = EQ_LOWPASS_HZ[0] + draw[:, 3] * (EQ_LOWPASS_HZ[1] - EQ_LOWPASS_HZ[0])
        highpass = EQ_HIGHPASS_HZ[0] + draw[:, 4] * (EQ_HIGHPASS_HZ[1] - EQ_HIGHPASS_HZ[0])
        lowpass = torch.where(limited & (kind != 1), lowpass, torch.full_like(lowpass, math.inf))
        highpass = torch.where(limited & (kind != 0), highpass, torch.zeros_like(highpass))
        freqs = torch.fft.rfftfreq(total, 1.0 / self.sample_rate, device=x.device)
        gain_db = equalizer_gain_db(freqs, centres, octaves, gains, lowpass[:, None], highpass[:, None], xp=torch)
        filtered = torch.fft.irfft(torch.fft.rfft(x) * torch.pow(10.0, gain_db / 20.0), n=total)
        return torch.where(apply[:, None], filtered * _valid_mask(lengths, total), x)

    def _colored_noise(
        self, x: Tensor, lengths: Tensor, apply: Tensor, snr: Tensor, exponent: Tensor, generator
    ) -> Tensor:
        batch, total = x.shape
        c = self.conf["colored_noise"]
        freqs = torch.fft.rfftfreq(total, 1.0 / self.sample_rate, device=x.device)
        freqs[0] = freqs[1] if total > 2 else 1.0
        alpha = c["min_exponent"] + exponent * (c["max_exponent"] - c["min_exponent"])
        white = torch.randn(batch, total, device=x.device, generator=generator)
        noise = torch.fft.irfft(torch.fft.rfft(white) * freqs[None, :] ** (-alpha[:, None] / 2.0), n=total)
        return self._add_at_snr(x, noise, lengths, apply, snr, c)

    def _noise(self, x: Tensor, lengths: Tensor, apply: Tensor, pick: Tensor, start: Tensor, snr: Tensor) -> Tensor:
        batch, total = x.shape
        c = self.conf["noise"]
        count, width = self.noise_bank.shape
        which = (pick * count).long().clamp_max(count - 1)
        n_len = self.noise_lengths[which]
        # A noise clip longer than the speech clip starts at a random offset; a shorter one is looped.
        offset = (start * (n_len - lengths).clamp_min(0).to(torch.float32)).long()
        pos = (offset[:, None] + torch.arange(total, device=x.device)[None, :]) % n_len[:, None]
        noise = self.noise_bank.to(torch.float32).flatten()[which[:, None] * width + pos]
        return self._add_at_snr(x, noise, lengths, apply, snr, c)

    @staticmethod
    def _add_at_snr(x: Tensor, noise: Tensor, lengths: Tensor, apply: Tensor, snr: Tensor, c: Mapping) -> Tensor:
        """``x + noise`` scaled to an SNR drawn in ``[min_snr_db, max_snr_db]``, powers over valid samples."""
        valid = _valid_mask(lengths, x.shape[1])
        noise = noise * valid
        count_valid = lengths.clamp_min(1).to(torch.float32)
        p_signal = x.square().sum(1) / count_valid
        p_noise = noise.square().sum(1) / count_valid
        snr_db = c["min_snr_db"] + snr * (c["max_snr_db"] - c["min_snr_db"])
        ok = apply & (p_signal > 0) & (p_noise > 0)
        scale = torch.sqrt(p_signal / (p_noise.clamp_min(1e-30) * torch.pow(10.0, snr_db / 10.0)))
        return x + noise * torch.where(ok, scale, torch.zeros_like(scale))[:, None]

    def _volume(self, x: Tensor, apply: Tensor, draw: Tensor) -> Tensor:
        c = self.conf["volume"]
        gain_db = c["min_gain_db"] + draw * (c["max_gain_db"] - c["min_gain_db"])
        gain = torch.where(apply, torch.pow(10.0, gain_db / 20.0), torch.ones_like(gain_db))
        return x * gain[:, None]

    def _shift(self, x: Tensor, lengths: Tensor, apply: Tensor, draw: Tensor) -> Tensor:
        batch, total = x.shape
        max_shift = int(round(self.conf["shift"]["max_shift_ms"] * self.sample_rate / 1000.0))
        shift = torch.where(apply, (draw * (2 * max_shift + 1)).long() - max_shift, torch.zeros_like(lengths))
        src = torch.arange(total, device=x.device)[None, :] - shift[:, None]
        inside = (src >= 0) & (src < lengths[:, None])
        return x.gather(1, src.clamp(0, total - 1)) * inside

    def _crop(self, x: Tensor, lengths: Tensor, out_samples: int, draw: Tensor) -> tuple[Tensor, Tensor]:
        batch, total = x.shape
        if total < out_samples:
            x = F.pad(x, (0, out_samples - total))
        offset = (draw * (lengths - out_samples + 1).clamp_min(1).to(torch.float32)).long()
        if total > out_samples:
            idx = offset[:, None] + torch.arange(out_samples, device=x.device)[None, :]
            x = x.gather(1, idx.clamp_max(x.shape[1] - 1))
        new_lengths = lengths.clamp_max(out_samples)
        return x * _valid_mask(new_lengths, out_samples), new_lengths


def build_gpu_augmenter(
    conf: Union[Mapping[str, Any], str, os.PathLike, None],
    sample_rate: int = 16000,
    device: Union[str, torch.device] = "cpu",
) -> GpuAugmenter | None:
    """:meth:`GpuAugmenter.from_config` on ``device``, or None when no waveform augmentation is enabled.

    >>> build_gpu_augmenter({"speed": {"prob": 0}, "volume": {"prob": 0}, "noise": {"prob": 0},
    ...                      "reverb": {"prob": 0}, "shift": {"prob": 0}}) is None
    True
    """
    aug = GpuAugmenter.from_config(conf, sample_rate)
    return aug.to(device) if aug.enabled else None
