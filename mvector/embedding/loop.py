"""The one embedding loop: batches of padded waveforms through an embedder, into an ``[N, D]`` array.

Used by evaluation (files through a data loader), the predictor (decoded recordings), every backend and the
benchmarks. An embedder is anything callable as ``embedder(waves [B, T], lengths [B])`` — a
:class:`~mvector.embedding.backends.Embedder` (numpy out) or a waveform→embedding ``torch.nn.Module`` such as
:class:`~mvector.models.EmbeddingModel` (run in inference mode on its own device). A recording gets the same
embedding whether it is embedded alone or inside a padded batch, because featurizers and backbones are
length-masked; batching by length only saves padding work.

>>> import numpy as np, torch
>>> from mvector.features import build_featurizer
>>> from mvector.models import EmbeddingModel, build_backbone
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

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from mvector.errors import ConfigError

__all__ = ["pad_waveforms", "length_batches", "run_embedder", "embed_batches", "embed_waveforms"]


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
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: -float(lengths[i]))
    return [order[i : i + int(batch_size)] for i in range(0, len(order), int(batch_size))]


def run_embedder(embedder: Callable[..., Any], waves: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    """One batch through ``embedder``: float32 numpy ``[B, D]`` (a torch module runs on its own device)."""
    if isinstance(embedder, torch.nn.Module):
        param = next(embedder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.inference_mode():
            out = embedder(waves.to(device, non_blocking=True), lengths.to(device, non_blocking=True))
        return out.float().cpu().numpy()
    return np.asarray(embedder(waves, lengths), dtype=np.float32)


def embed_batches(
    embedder: Callable[..., Any],
    batches: Iterable[tuple[Sequence[int], torch.Tensor, torch.Tensor]],
    count: int,
    progress: Any = None,
) -> np.ndarray:
    """Embed ``(indices, waves [B, T], lengths [B])`` batches into row ``indices`` of a float32 ``[count, D]`` array.

    Rows no batch wrote stay zero (the caller knows which inputs were unusable). ``progress`` is an optional
    callable given the number of rows done after each batch.

    >>> net = torch.nn.Linear(4, 2)
    >>> embedder = lambda w, n: w @ torch.ones(4, 3)
    >>> out = embed_batches(embedder, [([2, 0], torch.ones(2, 4), torch.tensor([4, 4]))], count=3)
    >>> out.tolist()
    [[4.0, 4.0, 4.0], [0.0, 0.0, 0.0], [4.0, 4.0, 4.0]]
    """
    out: np.ndarray | None = None
    done = 0
    for indices, waves, lengths in batches:
        if len(indices) == 0:
            continue
        emb = run_embedder(embedder, waves, lengths)
        if out is None:
            out = np.zeros((count, emb.shape[1]), dtype=np.float32)
        out[np.asarray(indices, dtype=np.int64)] = emb
        done += len(indices)
        if progress is not None:
            progress(done)
    return out if out is not None else np.zeros((count, 0), dtype=np.float32)


def embed_waveforms(
    embedder: Callable[..., Any],
    waves: Sequence[np.ndarray],
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Embed 1-D waveforms, batched by length, returning float32 ``[N, D]`` in the input order.

    ``device`` is accepted for compatibility; a torch module runs on the device of its parameters.
    """

    def batches():
        for idx in length_batches([len(w) for w in waves], batch_size):
            batch, lengths = pad_waveforms([waves[i] for i in idx])
            yield idx, batch, lengths

    return embed_batches(embedder, batches(), len(waves))
