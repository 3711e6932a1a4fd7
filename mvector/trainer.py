"""The original project's import path for the trainer, kept for its users' code.

New code imports :class:`mvector.training.trainer.MVectorTrainer`; nothing inside the package imports this module
(``tests/test_compat.py`` checks that).

>>> from mvector.trainer import MVectorTrainer
>>> MVectorTrainer.__module__
'mvector.training.trainer'
"""

from mvector.training.trainer import MVectorTrainer

__all__ = ["MVectorTrainer"]
