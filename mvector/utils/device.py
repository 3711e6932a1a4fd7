"""The one ``use_gpu`` rule: None means CUDA when available, True without CUDA is an error, never a silent CPU.

>>> select_device(False)
device(type='cpu')
"""

from __future__ import annotations

import torch

from mvector.errors import ConfigError

__all__ = ["select_device"]


def select_device(use_gpu: bool | None, index: int | None = None) -> torch.device:
    """The device ``use_gpu`` asks for: ``cuda`` (``cuda:index`` when given), or ``cpu``.

    ``None`` picks CUDA when a device is available. ``True`` on a machine without CUDA raises a
    :class:`~mvector.errors.ConfigError` saying how to run on the CPU.

    >>> select_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    True
    >>> select_device(True) if not torch.cuda.is_available() else None
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: use_gpu is set but no CUDA device is available; run on the CPU with use_gpu=False ...
    """
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "use_gpu is set but no CUDA device is available; run on the CPU with use_gpu=False (--no-use_gpu)"
        )
    return torch.device("cuda", index) if index is not None else torch.device("cuda")
