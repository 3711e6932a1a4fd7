"""Process-group set-up for ``torchrun`` (NCCL on GPU, gloo on CPU) and a single-process fallback.

>>> ctx = DistContext.from_env(use_gpu=False, env={})
>>> ctx.world_size, ctx.rank, ctx.is_main, str(ctx.device)
(1, 0, True, 'cpu')
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist

from mvector.utils.device import select_device

__all__ = ["DistContext"]


@dataclass
class DistContext:
    """Where this process sits in a (possibly single-process) training job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    #: While a rank waits for the others (barrier, all-reduce), it logs a line this often (seconds).
    heartbeat_seconds: float = 60.0
    #: The process group's timeout, for the heartbeat line.
    timeout_minutes: float = 30.0

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and saves."""
        return self.rank == 0

    @classmethod
    def from_env(
        cls, use_gpu: bool | None = None, env: Mapping[str, str] | None = None, timeout_minutes: float = 30.0
    ) -> DistContext:
        """Read torchrun's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``; initialise the process group when needed.

        ``use_gpu`` follows :func:`~mvector.utils.device.select_device` (None: CUDA when available); ``True`` with
        no CUDA device raises a :class:`~mvector.errors.ConfigError` instead of silently training
        on CPU. Ranks wait at most ``timeout_minutes`` for each other (``train_conf.dist_timeout_minutes``).

        >>> DistContext.from_env(use_gpu=True, env={}) if not torch.cuda.is_available() else None
        Traceback (most recent call last):
        ...
        mvector.errors.ConfigError: use_gpu is set but no CUDA device is available; run on the CPU with ...
        """
        env = os.environ if env is None else env
        world_size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
        device = select_device(use_gpu, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo",
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(minutes=float(timeout_minutes)),
            )
        return cls(rank, local_rank, world_size, device, timeout_minutes=float(timeout_minutes))

    def wait(self, work: Any, what: str) -> None:
        """Wait for an asynchronous collective, logging a heartbeat line every ``heartbeat_seconds`` meanwhile.

        A hung rank shows up in the log of the ranks waiting for it, long before the process-group timeout.

        >>> class Slow:  # a collective that completes after 0.05 s
        ...     def __init__(self): self.t = time.monotonic()
        ...     def is_completed(self): return time.monotonic() - self.t > 0.05
        ...     def wait(self): return True
        >>> ctx = DistContext(0, 0, 2, torch.device("cpu"), heartbeat_seconds=0.01)
        >>> ctx.wait(Slow(), "the end of epoch 1")  # doctest: +ELLIPSIS
        rank 0: still waiting for the other ranks at the end of epoch 1 (0.0... s so far; timeout 30 min, ...)
        ...
        """
        start = time.monotonic()
        beat = start + self.heartbeat_seconds
        pause = 0.0005
        while not work.is_completed():
            now = time.monotonic()
            if now >= beat:
                print(
                    f"rank {self.rank}: still waiting for the other ranks at {what} ({now - start:.1f} s so far; "
                    f"timeout {self.timeout_minutes:g} min, train_conf.dist_timeout_minutes)",
                    file=sys.stdout,
                    flush=True,
                )
                beat = now + self.heartbeat_seconds
            time.sleep(min(pause, self.heartbeat_seconds))
            pause = min(pause * 2, 0.05)  # quick collectives cost little; a long wait polls 20 times a second
        work.wait()

    def barrier(self, what: str = "a barrier") -> None:
        """Wait for every rank (no-op in a single process), with a heartbeat line while waiting."""
        if self.distributed:
            if self.device.type == "cuda":
                work = dist.barrier(device_ids=[self.local_rank], async_op=True)
            else:
                work = dist.barrier(async_op=True)
            self.wait(work, what)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (identity in a single process)."""
        if self.distributed:
            value = value.clone()
            self.wait(dist.all_reduce(value, async_op=True), "a sum over ranks")
        return value

    def close(self) -> None:
        """Tear the process group down."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
