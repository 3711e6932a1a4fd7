"""Seeding in one place: Python's ``random``, numpy's global generator and torch.

>>> seed_everything(7)
>>> import random; a = random.random(); seed_everything(7); a == random.random()
True
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy's global generator and torch (every device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
