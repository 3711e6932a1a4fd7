"""The speaker-segmentation network of pyannote segmentation-3.0 ("PyanNet"), and powerset decoding.

The network reads 16 kHz audio and says, frame by frame (about every 17 ms), which of up to ``max_speakers``
*local* speakers talk, overlap included. It is written from the published architecture (Bredin, "pyannote.audio
2.1 speaker diarization pipeline: principle, benchmark, and recipe", Interspeech 2023; Plaquet and Bredin,
"Powerset multi-class cross entropy loss for neural speaker diarization", Interspeech 2023) and the tensor names
of the released checkpoint, so that checkpoint loads with ``strict=True``:

* **SincNet** front end: an instance norm of the waveform; 40 learnable band-pass filters of 251 taps (stride
  ``stride`` samples), each as a cosine (even) and a sine (odd) filter, so 80 channels; their absolute value;
  then three times max-pool 3 -> instance norm -> leaky ReLU, with two plain 5-tap convolutions (80->60, 60->60)
  in between;
* a 4-layer bidirectional LSTM (128 units each way) over the 60-d frames;
* two fully connected layers (leaky ReLU), and a classifier over the ``7`` powerset classes of 3 speakers with
  at most 2 at once (``{}``, ``{0}``, ``{1}``, ``{2}``, ``{0,1}``, ``{0,2}``, ``{1,2}``), as log-probabilities.

>>> net = PyanNet()
>>> sum(p.numel() for p in net.parameters())
1473265
>>> out = net(torch.zeros(2, 1, 16000 * 2))
>>> tuple(out.shape), net.num_frames(16000 * 2)
((2, 115, 7), 115)
>>> powerset_classes(3, 2)
[(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SincFilterbank", "SincNet", "PyanNet", "powerset_classes", "powerset_matrix", "powerset_to_speakers"]


def powerset_classes(num_speakers: int = 3, max_simultaneous: int = 2) -> list[tuple[int, ...]]:
    """The powerset classes in the network's order: the empty set, then sets of 1, 2, ... speakers.

    >>> powerset_classes(2, 2)
    [(), (0,), (1,), (0, 1)]
    """
    out: list[tuple[int, ...]] = []
    for size in range(0, int(max_simultaneous) + 1):
        out += list(itertools.combinations(range(int(num_speakers)), size))
    return out


def powerset_matrix(num_speakers: int = 3, max_simultaneous: int = 2) -> torch.Tensor:
    """``[classes, speakers]`` 0/1 matrix: row ``c`` marks the speakers of powerset class ``c``.

    >>> powerset_matrix(2, 2).tolist()
    [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    """
    classes = powerset_classes(num_speakers, max_simultaneous)
    mat = torch.zeros(len(classes), int(num_speakers))
    for row, members in enumerate(classes):
        for spk in members:
            mat[row, spk] = 1.0
    return mat


def powerset_to_speakers(log_probs: torch.Tensor, num_speakers: int = 3, max_simultaneous: int = 2) -> torch.Tensor:
    """Hard speaker activities ``[..., frames, speakers]`` (0/1) from powerset log-probabilities ``[..., frames, C]``.

    Each frame takes its most likely class; the class's speakers are active.

    >>> lp = torch.log(torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.5, 0.05, 0.05]]))
    >>> powerset_to_speakers(lp).tolist()
    [[1.0, 1.0, 0.0]]
    """
    mat = powerset_matrix(num_speakers, max_simultaneous).to(log_probs.device)
    best = log_probs.argmax(dim=-1)
    return mat[best]


class SincFilterbank(nn.Module):
    """Parametrised sinc band-pass filters (Ravanelli and Bengio, 2018), each as a cosine and a sine filter.

    ``low_hz_`` / ``band_hz_`` ``[n_filters / 2, 1]`` are learnt; ``window_`` (the left half of a Hamming
    window) and ``n_`` (``2 pi t / sample_rate`` for the left-half taps) are buffers, stored in the checkpoint.
    A filter's lower cut-off is ``min_low_hz + |low|``, its upper ``low + min_band_hz + |band|`` (capped at
    Nyquist); the cosine filter is the band-pass impulse response, the sine filter its quadrature partner.

    >>> fb = SincFilterbank(80, 251)
    >>> tuple(fb.filters().shape)
    (80, 1, 251)
    """

    def __init__(
        self,
        n_filters: int = 80,
        kernel_size: int = 251,
        sample_rate: int = 16000,
        min_low_hz: float = 50.0,
        min_band_hz: float = 50.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or n_filters % 2:
            raise ValueError(f"need an odd kernel_size and an even n_filters, got {kernel_size} and {n_filters}")
        self.n_filters = int(n_filters)
        self.kernel_size = int(kernel_size)
        self.sample_rate = int(sample_rate)
        self.min_low_hz = float(min_low_hz)
        self.min_band_hz = float(min_band_hz)
        half = self.n_filters // 2
        # Initial band edges evenly spaced on the mel scale (what training started from; the checkpoint replaces it).
        top = self.sample_rate / 2 - (self.min_low_hz + self.min_band_hz)
        mel = torch.linspace(_hz_to_mel(30.0), _hz_to_mel(top), half + 1)
        hz = 700.0 * (10 ** (mel / 2595.0) - 1.0)
        self.low_hz_ = nn.Parameter(hz[:-1].unsqueeze(1))
        self.band_hz_ = nn.Parameter((hz[1:] - hz[:-1]).unsqueeze(1))
        taps = torch.arange(-(self.kernel_size // 2), 0, dtype=torch.float32)  # left half, excluding the centre
        steps = torch.linspace(0, self.kernel_size / 2 - 1, steps=self.kernel_size // 2)
        self.register_buffer("window_", 0.54 - 0.46 * torch.cos(2 * math.pi * steps / self.kernel_size))
        self.register_buffer("n_", (2 * math.pi * taps / self.sample_rate).unsqueeze(0))

    def filters(self) -> torch.Tensor:
        """The ``[n_filters, 1, kernel_size]`` filters: the cosine ones first, then the sine ones."""
        low = self.min_low_hz + self.low_hz_.abs()
        high = torch.clamp(low + self.min_band_hz + self.band_hz_.abs(), self.min_low_hz, self.sample_rate / 2)
        band = (high - low)[:, 0]
        phase_low, phase_high = low @ self.n_, high @ self.n_  # [F/2, K/2]
        scale = self.n_ / 2
        even_left = (torch.sin(phase_high) - torch.sin(phase_low)) / scale * self.window_
        odd_left = (torch.cos(phase_low) - torch.cos(phase_high)) / scale * self.window_
        centre = 2 * band[:, None]
        even = torch.cat([even_left, centre, even_left.flip(1)], dim=1)
        odd = torch.cat([odd_left, torch.zeros_like(centre), -odd_left.flip(1)], dim=1)
        bank = torch.cat([even, odd], dim=0) / (2 * torch.cat([band, band])[:, None])
        return bank.unsqueeze(1)


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


class _SincConv(nn.Module):
    """Holds the filterbank under the checkpoint's name (``conv1d.0.filterbank``) and convolves with it."""

    def __init__(self, stride: int, sample_rate: int) -> None:
        super().__init__()
        self.filterbank = SincFilterbank(80, 251, sample_rate)
        self.stride = int(stride)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return F.conv1d(waves, self.filterbank.filters(), stride=self.stride)


class SincNet(nn.Module):
    """The SincNet front end: ``[B, 1, samples]`` -> ``[B, 60, frames]``.

    >>> tuple(SincNet(stride=10)(torch.zeros(1, 1, 16000)).shape)
    (1, 60, 56)
    """

    def __init__(self, sample_rate: int = 16000, stride: int = 10) -> None:
        super().__init__()
        if int(sample_rate) != 16000:
            raise ValueError(f"SincNet is defined for 16 kHz audio, got {sample_rate}")
        self.stride = int(stride)
        self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
        self.conv1d = nn.ModuleList([_SincConv(stride, sample_rate), nn.Conv1d(80, 60, 5), nn.Conv1d(60, 60, 5)])
        self.pool1d = nn.ModuleList([nn.MaxPool1d(3, stride=3) for _ in range(3)])
        self.norm1d = nn.ModuleList([nn.InstanceNorm1d(c, affine=True) for c in (80, 60, 60)])

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = self.wav_norm1d(waves)
        for index, (conv, pool, norm) in enumerate(zip(self.conv1d, self.pool1d, self.norm1d)):
            x = conv(x)
            if index == 0:  # in place when no gradient is kept: the largest tensor of the network, not copied
                x = x.abs() if torch.is_grad_enabled() else x.abs_()
            x = F.leaky_relu(norm(pool(x)))
        return x


class PyanNet(nn.Module):
    """pyannote's segmentation network (see the module docs): ``[B, 1, samples]`` -> ``[B, frames, classes]``.

    The output is log-probabilities of the powerset classes (:func:`powerset_classes`). ``frame_step`` and
    ``frame_duration`` (seconds) place frame ``i`` at ``[i * frame_step, i * frame_step + frame_duration]``.

    >>> net = PyanNet()
    >>> net.frame_step, net.frame_duration, net.num_classes
    (0.016875, 0.0619375, 7)
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        stride: int = 10,
        lstm_hidden: int = 128,
        lstm_layers: int = 4,
        linear_hidden: int = 128,
        linear_layers: int = 2,
        num_speakers: int = 3,
        max_simultaneous: int = 2,
    ) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.num_speakers = int(num_speakers)
        self.max_simultaneous = int(max_simultaneous)
        self.num_classes = len(powerset_classes(num_speakers, max_simultaneous))
        self.sincnet = SincNet(sample_rate, stride)
        self.lstm = nn.LSTM(60, lstm_hidden, num_layers=lstm_layers, bidirectional=True, batch_first=True)
        sizes = [2 * lstm_hidden] + [linear_hidden] * linear_layers
        self.linear = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.classifier = nn.Linear(sizes[-1], self.num_classes)
        # (kernel, stride) of every layer that changes the time axis, for frame timing
        self._time_layers = [(251, stride), (3, 3), (5, 1), (3, 3), (5, 1), (3, 3)]
        step, field = 1, 1
        for kernel, s in reversed(self._time_layers):
            field = (field - 1) * s + kernel
        for _, s in self._time_layers:
            step *= s
        self.frame_step = step / self.sample_rate
        self.frame_duration = field / self.sample_rate

    def num_frames(self, num_samples: int) -> int:
        """How many output frames ``num_samples`` samples give (0 when too short for one frame)."""
        n = int(num_samples)
        for kernel, s in self._time_layers:
            n = (n - kernel) // s + 1
            if n <= 0:
                return 0
        return n

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        """Powerset log-probabilities ``[B, frames, classes]`` of mono 16 kHz ``waves`` ``[B, 1, samples]``."""
        if waves.dim() == 2:
            waves = waves.unsqueeze(1)
        x = self.sincnet(waves).transpose(1, 2)
        x, _ = self.lstm(x)
        for layer in self.linear:
            x = F.leaky_relu(layer(x))
        return F.log_softmax(self.classifier(x), dim=-1)
