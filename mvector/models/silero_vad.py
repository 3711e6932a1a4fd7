"""The Silero VAD network (v5/v6, 16 kHz), written from its published structure and the tensor names of
``silero_vad_16k.safetensors``.

Audio is read in 512-sample (32 ms) chunks, each with the 64 samples before it as context (576 samples): a
short-time Fourier transform as a fixed convolution (256-sample frames every 128 samples, the right edge
reflect-padded by 64; 129 magnitude bins), four 3-tap convolutions with ReLU (129->128, 128->64 stride 2, 64->64
stride 2, 64->128) down to one 128-d vector per chunk, an LSTM cell carrying its state from chunk to chunk, and a
1x1 convolution with a sigmoid: the probability that the chunk holds speech.

The convolutions do not depend on the state, so :meth:`SileroVAD.forward` runs them on all chunks of a batch at
once and only the LSTM cell steps through time.

>>> net = SileroVAD()
>>> sum(p.numel() for p in net.parameters())
309633
>>> probs, state = net(torch.zeros(1, 512 * 4))
>>> tuple(probs.shape), tuple(state.shape)
((1, 4), (2, 1, 128))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SileroVAD", "CHUNK", "CONTEXT"]

#: Samples per decision at 16 kHz, and samples of context taken from before each chunk.
CHUNK = 512
CONTEXT = 64


class SileroVAD(nn.Module):
    """Silero VAD (see the module docs): ``[B, samples]`` -> per-chunk speech probabilities ``[B, chunks]``."""

    def __init__(self, sample_rate: int = 16000) -> None:
        super().__init__()
        if int(sample_rate) != 16000:
            raise ValueError(f"this Silero VAD model is the 16 kHz one, got sample_rate={sample_rate}")
        self.sample_rate = 16000
        self.chunk = CHUNK
        self.stft_conv = nn.Conv1d(1, 258, 256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def encode(self, pieces: torch.Tensor) -> torch.Tensor:
        """``[N, 576]`` context-plus-chunk pieces -> ``[N, 128]`` features."""
        x = F.pad(pieces, (0, 64), mode="reflect").unsqueeze(1)
        x = self.stft_conv(x)
        half = x.shape[1] // 2
        x = torch.sqrt(x[:, :half] ** 2 + x[:, half:] ** 2)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        return x.mean(dim=-1)

    def forward(
        self, waves: torch.Tensor, state: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech probabilities ``[B, samples // 512]`` and the final ``(h, c)`` state ``[2, B, 128]``.

        ``waves`` ``[B, samples]`` (a multiple of 512 samples); ``state`` and ``context`` (the last 64 samples
        before ``waves``) continue an earlier call; both default to zeros.
        """
        batch, samples = waves.shape
        if samples % CHUNK:
            raise ValueError(f"Silero VAD reads multiples of {CHUNK} samples, got {samples}")
        before = context if context is not None else waves.new_zeros(batch, CONTEXT)
        joined = torch.cat([before, waves], dim=1)
        steps = samples // CHUNK
        starts = torch.arange(steps) * CHUNK
        index = starts[:, None] + torch.arange(CHUNK + CONTEXT)[None, :]
        pieces = joined[:, index].reshape(batch * steps, CHUNK + CONTEXT)
        feats = self.encode(pieces).reshape(batch, steps, -1)
        if state is None:
            h = waves.new_zeros(batch, 128)
            c = waves.new_zeros(batch, 128)
        else:
            h, c = state[0], state[1]
        outs = []
        for t in range(steps):
            h, c = self.lstm_cell(feats[:, t], (h, c))
            outs.append(h)
        hidden = torch.stack(outs, dim=2)  # [B, 128, T]
        probs = torch.sigmoid(self.final_conv(F.relu(hidden))).squeeze(1)
        return probs, torch.stack([h, c])
