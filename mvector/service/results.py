"""Predictor results as JSON: the calibrated attributes a verification or identification result carries beside its
values, and the check of a number a client sends (a threshold).

>>> from types import SimpleNamespace
>>> result_extras(SimpleNamespace(llr=1.5, probability=float("nan"), calibrated=True))
{'llr': 1.5, 'probability': None, 'calibrated': True}
>>> finite_parameter(0.5, "threshold")
0.5
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from fastapi import Query

from mvector.service.errors import ServiceError

__all__ = ["RESULT_EXTRAS", "result_extras", "finite_parameter", "threshold_query"]

#: Attributes a (calibrated) verification or identification result may carry beside its tuple values.
RESULT_EXTRAS = ("llr", "probability", "prior", "unknown", "margin", "reason", "calibrated", "threshold_source")


def result_extras(result: Any, public: Callable[[str], str] = str) -> dict[str, Any]:
    """Calibrated attributes of a predictor result (``llr``, ``probability``, ...), where it has them; a number
    that is not finite becomes null (JSON has no NaN); texts pass through ``public`` (the service's
    :meth:`~mvector.service.state.ServiceState.public`: no server folders in answers)."""
    out: dict[str, Any] = {}
    for name in RESULT_EXTRAS:
        value = getattr(result, name, None)
        if value is None or callable(value):
            continue
        if isinstance(value, (bool, np.bool_)):
            out[name] = bool(value)
        elif isinstance(value, (int, float, np.number)):
            out[name] = float(value) if math.isfinite(float(value)) else None
        elif isinstance(value, str):
            out[name] = public(value)
    return out


def finite_parameter(value: float, name: str) -> float:
    """``value`` as a float, or 400 ``invalid_parameter`` naming the parameter when it is not finite."""
    value = float(value)
    if not math.isfinite(value):
        raise ServiceError(400, "invalid_parameter", f"parameter {name!r} must be a finite number", name)
    return value


def threshold_query() -> Any:
    """The optional ``threshold`` query parameter of the verification and identification routes."""
    return Query(None, description="decision threshold (default: the model's)")
