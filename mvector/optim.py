"""Optimizers and the per-batch learning-rate schedules built from ``optimizer_conf``, each in a registry
(:data:`OPTIMIZERS`, :data:`SCHEDULERS`) so that a new one is a function plus a decorator.

>>> import torch
>>> params = [torch.nn.Parameter(torch.zeros(2))]
>>> opt = build_optimizer(params, {"optimizer": "SGD", "learning_rate": 0.1, "weight_decay": 0.0,
...                                "momentum": 0.9, "nesterov": False})
>>> sched = WarmupCosineLR(opt, warmup_steps=2, total_steps=10, min_lr=0.0)
>>> [round(g["lr"], 3) for g in opt.param_groups]
[0.033]
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

from mvector.registry import Registry

__all__ = ["OPTIMIZERS", "SCHEDULERS", "build_optimizer", "WarmupCosineLR", "ConstantLR", "build_scheduler"]

#: ``optimizer_conf.optimizer`` -> function(params, conf) returning a torch optimizer.
OPTIMIZERS = Registry("optimizer", section="optimizer_conf")
#: ``optimizer_conf.scheduler`` -> function(optimizer, conf, warmup_steps, total_steps) returning a schedule.
SCHEDULERS = Registry("scheduler", section="optimizer_conf")


@OPTIMIZERS.register("Adam")
def _adam(params: Iterable[torch.nn.Parameter], conf: Mapping[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=float(conf["learning_rate"]), weight_decay=float(conf.get("weight_decay", 0)))


@OPTIMIZERS.register("AdamW")
def _adamw(params: Iterable[torch.nn.Parameter], conf: Mapping[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=float(conf["learning_rate"]), weight_decay=float(conf.get("weight_decay", 0)))


@OPTIMIZERS.register("SGD")
def _sgd(params: Iterable[torch.nn.Parameter], conf: Mapping[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=float(conf["learning_rate"]),
        weight_decay=float(conf.get("weight_decay", 0.0)),
        momentum=float(conf.get("momentum", 0.9)),
        nesterov=bool(conf.get("nesterov", False)),
    )


def build_optimizer(params: Iterable[torch.nn.Parameter], conf: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with momentum) from ``optimizer_conf``.

    >>> opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], {"optimizer": "AdamW", "learning_rate": 1e-3,
    ...                       "weight_decay": 1e-2})
    >>> type(opt).__name__
    'AdamW'
    """
    return OPTIMIZERS.get_entry(conf["optimizer"])(params, conf)


class WarmupCosineLR:
    """Linear warm-up to each group's base rate, then cosine decay to ``min_lr``; stepped once per batch.

    The rate set at construction is the one for step 1, so ``step()`` is called after every optimizer step.

    >>> p = torch.nn.Parameter(torch.zeros(1))
    >>> opt = torch.optim.SGD([p], lr=1.0)
    >>> s = WarmupCosineLR(opt, warmup_steps=0, total_steps=4, min_lr=0.0)
    >>> rates = []
    >>> for _ in range(4):
    ...     rates.append(round(opt.param_groups[0]["lr"], 3)); s.step()
    >>> rates
    [1.0, 0.854, 0.5, 0.146]
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.optimizer = optimizer
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = int(total_steps)
        self.min_lr = float(min_lr)
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for group, base in zip(optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = base
        self.step_count = 0
        self._apply()

    def rate(self, step: int, base: float) -> float:
        """Learning rate for 0-based ``step`` and a group's peak rate ``base``."""
        if step < self.warmup_steps:
            return base * (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.rate(self.step_count, base)

    def step(self) -> None:
        """Advance one batch."""
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """Current rate of each parameter group."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state (safe for ``torch.load(weights_only=True)``)."""
        return {
            "step_count": self.step_count,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "min_lr": self.min_lr,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the position in the schedule."""
        self.step_count = int(state["step_count"])
        self.warmup_steps = int(state["warmup_steps"])
        self.total_steps = int(state["total_steps"])
        self.min_lr = float(state["min_lr"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._apply()


class ConstantLR(WarmupCosineLR):
    """Linear warm-up, then the base rate for the rest of training.

    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    >>> s = ConstantLR(opt, warmup_steps=0, total_steps=10)
    >>> s.step(); s.get_last_lr()
    [0.5]
    """

    def rate(self, step: int, base: float) -> float:
        if step < self.warmup_steps:
            return base * (step + 1) / (self.warmup_steps + 1)
        return base


def build_scheduler(optimizer: torch.optim.Optimizer, conf: Mapping[str, Any], steps_per_epoch: int, max_epoch: int):
    """The schedule named by ``optimizer_conf.scheduler``, with warm-up measured in epochs.

    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    >>> s = build_scheduler(opt, {"scheduler": "WarmupCosine", "warmup_epochs": 1, "min_lr": 0.0}, 10, 3)
    >>> s.warmup_steps, s.total_steps
    (10, 30)
    """
    total = max(1, steps_per_epoch * max_epoch)
    warmup = int(round(float(conf.get("warmup_epochs", 0.0)) * steps_per_epoch))
    warmup = min(warmup, total - 1)
    return SCHEDULERS.get_entry(conf.get("scheduler", "WarmupCosine"))(optimizer, conf, warmup, total)


@SCHEDULERS.register("WarmupCosine", aliases=("WarmupCosineSchedulerLR",))
def _warmup_cosine(optimizer: torch.optim.Optimizer, conf: Mapping[str, Any], warmup: int, total: int) -> Any:
    return WarmupCosineLR(optimizer, warmup, total, float(conf.get("min_lr", 0.0)))


@SCHEDULERS.register("Constant")
def _constant(optimizer: torch.optim.Optimizer, conf: Mapping[str, Any], warmup: int, total: int) -> Any:
    return ConstantLR(optimizer, warmup, total)
