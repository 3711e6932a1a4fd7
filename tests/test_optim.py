"""Optimizers and the per-batch warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from mvector.errors import ConfigError
from mvector.optim import WarmupCosineLR, build_optimizer, build_scheduler


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_then_cosine_to_min_lr():
    opt = _opt(1.0)
    sched = WarmupCosineLR(opt, warmup_steps=4, total_steps=14, min_lr=0.1)
    rates = []
    for _ in range(14):
        rates.append(opt.param_groups[0]["lr"])
        sched.step()
    assert rates[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert rates[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))
    assert rates[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_scheduler_state_round_trip():
    opt = _opt(0.5)
    sched = build_scheduler(opt, {"scheduler": "WarmupCosine", "warmup_epochs": 0.5, "min_lr": 0.0}, 10, 3)
    for _ in range(7):
        sched.step()
    state = sched.state_dict()
    opt2 = _opt(0.5)
    sched2 = build_scheduler(opt2, {"scheduler": "WarmupCosine", "warmup_epochs": 0.5, "min_lr": 0.0}, 10, 3)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    loaded = torch.load(_save(state), weights_only=True)
    assert loaded["step_count"] == 7


def _save(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_optimizers_and_errors():
    p = [torch.nn.Parameter(torch.zeros(1))]
    sgd = build_optimizer(p, {"optimizer": "SGD", "learning_rate": 0.1, "momentum": 0.8, "nesterov": True})
    assert sgd.param_groups[0]["momentum"] == 0.8 and sgd.param_groups[0]["nesterov"] is True
    assert type(build_optimizer(p, {"optimizer": "adam", "learning_rate": 0.1})).__name__ == "Adam"
    with pytest.raises(ConfigError, match="Lion"):
        build_optimizer(p, {"optimizer": "Lion", "learning_rate": 0.1})
    with pytest.raises(ConfigError, match="Step"):
        build_scheduler(_opt(), {"scheduler": "Step"}, 10, 1)
