"""Process-group set-up for ``torchrun`` (NCCL on GPU, gloo on CPU) and a single-process fallback.

>>> ctx = DistContext.from_env(use_gpu=False, env={})
>>> ctx.world_size, ctx.rank, ctx.is_main, str(ctx.device)
(1, 0, True, 'cpu')
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

from mvector.errors import ConfigError

__all__ = ["DistContext"]


@dataclass
class DistContext:
    """Where this process sits in a (possibly single-process) training job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

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
        cls, use_gpu: bool = True, env: Mapping[str, str] | None = None, timeout_minutes: float = 30.0
    ) -> DistContext:
        """Read torchrun's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``; initialise the process group when needed.

        ``use_gpu`` with no CUDA device raises a :class:`~mvector.errors.ConfigError` instead of silently training
        on CPU. Ranks wait at most ``timeout_minutes`` for each other (``train_conf.dist_timeout_minutes``).

        >>> DistContext.from_env(use_gpu=True, env={}) if not torch.cuda.is_available() else None
        Traceback (most recent call last):
        ...
        mvector.errors.ConfigError: use_gpu is set but no CUDA device is available; pass --use_gpu False ...
        """
        env = os.environ if env is None else env
        world_size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
        if use_gpu:
            if not torch.cuda.is_available():
                raise ConfigError(
                    "use_gpu is set but no CUDA device is available; pass --use_gpu False to run on the CPU"
                )
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo",
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(minutes=float(timeout_minutes)),
            )
        return cls(rank=rank, local_rank=local_rank, world_size=world_size, device=device)

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (identity in a single process)."""
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def close(self) -> None:
        """Tear the process group down."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
