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
