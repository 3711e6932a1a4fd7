"""The original project's import path for the predictor, kept for its users' code.

New code imports :class:`mvector.inference.predictor.MVectorPredictor`; nothing inside the package imports this
module (``tests/test_compat.py`` checks that).

>>> from mvector.predict import MVectorPredictor
>>> MVectorPredictor.__module__
'mvector.inference.predictor'
"""

from mvector.inference.predictor import MVectorPredictor

__all__ = ["MVectorPredictor"]
