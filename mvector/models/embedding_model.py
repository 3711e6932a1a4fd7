"""The waveform→embedding model used by evaluation, inference and export: featurizer + backbone.

>>> import torch
>>> from mvector.features import build_featurizer
>>> from mvector.models import build_backbone
>>> fbank = build_featurizer("Fbank", {"num_mel_bins": 40})
>>> model = EmbeddingModel(fbank, build_backbone("TDNN", 40, channels=32, embd_dim=16)).eval()
>>> model(torch.zeros(2, 16000), torch.tensor([16000, 8000])).shape, model.embd_dim, model.sample_rate
(torch.Size([2, 16]), 16, 16000)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EmbeddingModel"]


class EmbeddingModel(nn.Module):
    """Featurizer + backbone: ``forward(waveforms [B, T] float32, lengths [B] int64) -> [B, embd_dim]``.

    ``lengths`` are valid samples per row (the rest is padding); ``None`` means every row is full length.
    The featurizer maps ``(waveforms, lengths)`` to ``(features [B, frames, F], frame_lengths)`` and the
    backbone maps ``(features, frame_lengths)`` to embeddings.
    """

    def __init__(self, featurizer: nn.Module, backbone: nn.Module):
        super().__init__()
        self.featurizer = featurizer
        self.backbone = backbone

    @property
    def embd_dim(self) -> int:
        """Size of the embeddings (the backbone's ``embd_dim``)."""
        return int(self.backbone.embd_dim)

    @property
    def sample_rate(self) -> int:
        """Sample rate the featurizer expects (its ``sample_rate``; 16000 when it has none)."""
        return int(getattr(self.featurizer, "sample_rate", 16000))

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must have shape [batch, samples], got {tuple(waveforms.shape)}")
        if lengths is None:
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long, device=waveforms.device)
        features, frame_lengths = self.featurizer(waveforms, lengths)
        return self.backbone(features, frame_lengths)
