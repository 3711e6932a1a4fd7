"""mvector: speaker verification and identification with PyTorch.

>>> import mvector
>>> isinstance(mvector.__version__, str)
True
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_config", "MVectorTrainer", "MVectorPredictor"]

_LAZY = {
    "load_config": ("mvector.config", "load_config"),
    "MVectorTrainer": ("mvector.training.trainer", "MVectorTrainer"),
    "MVectorPredictor": ("mvector.inference.predictor", "MVectorPredictor"),
}


def __getattr__(name: str) -> Any:
    # Heavy modules (torch models, trainer) load on first use, so `import mvector` stays fast.
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'mvector' has no attribute {name!r}")
