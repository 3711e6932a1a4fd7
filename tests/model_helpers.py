"""Helpers shared by the model tests (imported by test modules; pytest collects no tests here)."""

from __future__ import annotations

import torch
from torch import nn


def randomise_batch_norm(model: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics (and affine parameters where there are any), in eval mode, so that zero
    padding becomes non-zero after a batch norm and padding invariance is really tested."""
    gen = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if mod.affine:  # CAM++'s embedding batch norm has no weights
                mod.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.bias.data.copy_(torch.rand(n, generator=gen) * 2 - 1)
    return model.eval()


#: Overrides that make any bundled recipe train in a second on a tiny corpus (tests add epochs and logging).
TINY_TRAINING = {
    "dataset_conf.batch_size": "8",
    "dataset_conf.num_workers": "0",
    "dataset_conf.max_duration": "1.0",
    "dataset_conf.min_duration": "0.3",
    "dataset_conf.eval_batch_size": "8",
    "feature_conf.n_mels": "40",
    "model_conf.channels": "32",
    "model_conf.embd_dim": "32",
}


def recomputed_eer(model_dir, test_list) -> float:
    """The EER of every pair of a ``path<TAB>label`` list, recomputed outside the evaluator: each file embedded
    alone by :class:`MVectorPredictor`, scored as the model scores (AS-norm against the cohort stored with the model,
    ``score_norm.npz``, else cosine), :func:`compute_eer`. Tests compare the evaluator's EER to it."""
    from pathlib import Path

    import numpy as np

    from mvector.evaluation.metrics import compute_eer
    from mvector.inference.predictor import MVectorPredictor

    predictor = MVectorPredictor(model_path=str(model_dir), use_gpu=False)
    rows = [line.split("\t") for line in Path(test_list).read_text(encoding="utf-8").splitlines() if line.strip()]
    base = Path(test_list).parent
    embs = np.stack([predictor.embed(str(base / path)) for path, _ in rows])
    labels = [label.strip() for _, label in rows]
    i, j = np.triu_indices(len(rows), k=1)
    if predictor.score_norm is not None:
        scores = predictor.score_norm.score_pairs(embs, np.stack([i, j], axis=1))
    else:
        embs /= np.linalg.norm(embs, axis=1, keepdims=True)
        scores = np.einsum("nd,nd->n", embs[i], embs[j])
    same = np.array([labels[a] == labels[b] for a, b in zip(i, j)], dtype=int)
    return compute_eer(scores, same)[0]
