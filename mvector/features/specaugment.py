"""SpecAugment: frequency and time masking of normalised features, inside each utterance's valid frames.

>>> from mvector.features import SpecAugment
>>> SpecAugment(freq_masks=2).freq_masks
2
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mvector.errors import ConfigError

__all__ = ["SpecAugment"]


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
