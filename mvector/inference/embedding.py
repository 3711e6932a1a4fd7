"""One embedding path for evaluation and inference: pad by length buckets, featurize, run the backbone.

A recording gets the same embedding whether it is embedded alone or inside a padded batch, because the
featurizer and backbones are length-masked; batching by length only saves padding work.

>>> import numpy as np, torch
>>> from mvector.features import build_featurizer
>>> from mvector.models import build_backbone
>>> from mvector.models import EmbeddingModel
>>> fz = build_featurizer("Fbank", {"num_mel_bins": 40})
>>> model = EmbeddingModel(fz, build_backbone("TDNN", fz.feature_dim, channels=32, embd_dim=16)).eval()
>>> rng = np.random.default_rng(0)
>>> waves = [rng.standard_normal(n).astype("float32") * 0.1 for n in (8000, 16000, 12000)]
>>> together = embed_waveforms(model, waves, batch_size=3)
>>> alone = embed_waveforms(model, waves[:1], batch_size=1)
>>> together.shape, bool(np.abs(together[0] - alone[0]).max() < 1e-4)
((3, 16), True)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["pad_waveforms", "length_batches", "embed_waveforms"]


def pad_waveforms(waves: Sequence[np.ndarray], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D float arrays into a ``[B, T]`` tensor and their lengths ``[B]`` (int64).

    >>> w, n = pad_waveforms([np.ones(3, "float32"), np.ones(5, "float32")])
    >>> tuple(w.shape), n.tolist()
    ((2, 5), [3, 5])
    """
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    batch = torch.zeros(len(waves), int(lengths.max()) if len(waves) else 0, dtype=torch.float32)
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return batch.to(device, non_blocking=True), lengths.to(device, non_blocking=True)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so little padding is computed.

    >>> length_batches([5, 1, 4, 2], 2)
    [[0, 2], [3, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def embed_waveforms(
    model: torch.nn.Module,
    waves: Sequence[np.ndarray],
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Embed 1-D waveforms with a waveform→embedding ``model`` (eval mode), returning float32 ``[N, D]``.

    Batches are formed by length; the output order is the input order.
    """
    if device is None:
        device = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(waves)
    for idx in length_batches([len(w) for w in waves], batch_size):
        batch, lengths = pad_waveforms([waves[i] for i in idx], device)
        emb = model(batch, lengths).float().cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = emb[row]
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(out).astype(np.float32, copy=False)
