"""A calibration on disk: ``calibration.json`` in a model folder (plain JSON, written atomically), the folder's
calibration for a given model, and the decision threshold a model folder states.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     _ = save_calibration(Calibration(weights={"score": 4.0}, bias=-1.0, model_fingerprint="abc"), d)
...     read_calibration(d).model_fingerprint
'abc'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from mvector.errors import CheckpointError, ConfigError
from mvector.evaluation.calibration import Calibration
from mvector.utils.files import atomic_write_text

__all__ = ["CALIBRATION_FILENAME", "save_calibration", "read_calibration", "load_calibration", "resolve_threshold"]

#: File name of a calibration stored in a model folder.
CALIBRATION_FILENAME = "calibration.json"

PathLike = Union[str, os.PathLike]


def _file_of(path: PathLike) -> Path:
    path = Path(path)
    return path / CALIBRATION_FILENAME if path.is_dir() else path


def save_calibration(calibration: Calibration, path: PathLike) -> Path:
    """Write ``calibration`` as JSON atomically (temporary file, fsync, rename, the user's umask); a folder means
    ``<folder>/calibration.json``. Returns the path written (see the module's example)."""
    path = _file_of(path)
    try:
        return atomic_write_text(path, json.dumps(calibration.to_dict(), indent=2, sort_keys=False) + "\n")
    except OSError as err:
        raise CheckpointError(f"{path}: cannot write the calibration ({err})") from None


def read_calibration(path: PathLike) -> Calibration:
    """Read a calibration written by :func:`save_calibration` (a folder means ``<folder>/calibration.json``); a
    missing, damaged or wrong file is a :class:`~mvector.errors.CheckpointError` naming it (see the module's
    example)."""
    path = _file_of(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no calibration file (fit one with `mvector calibrate`)") from None
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: damaged calibration JSON ({err})") from None
    try:
        return Calibration.from_dict(data, where=str(path))
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def load_calibration(model_dir: PathLike, fingerprint: str | None = None, strict: bool = False) -> Calibration | None:
    """The calibration stored in a model folder, or ``None`` when there is none.

    A calibration fitted on another model (its ``model_fingerprint`` differs from ``fingerprint``) is ignored
    with a warning, or refused with :class:`~mvector.errors.CheckpointError` when ``strict``: its LLRs would be
    meaningless for this model.

    >>> import tempfile, warnings
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_calibration(Calibration(weights={"score": 4.0}, bias=-1.0, model_fingerprint="aaa"), d)
    ...     with warnings.catch_warnings(record=True) as caught:
    ...         warnings.simplefilter("always")
    ...         print(load_calibration(d, "bbb"), len(caught))
    None 1
    """
    path = Path(model_dir) / CALIBRATION_FILENAME
    if not path.is_file():
        return None
    cal = read_calibration(path)
    if fingerprint is not None and cal.model_fingerprint is not None and cal.model_fingerprint != fingerprint:
        message = (
            f"{path} was fitted for another model (fingerprint {cal.model_fingerprint[:12]}, this model "
            f"{str(fingerprint)[:12]}); its LLRs do not apply. Fit it again: mvector calibrate --model_path "
            f"{Path(model_dir)} --trials ..."
        )
        if strict:
            raise CheckpointError(message)
        import warnings

        warnings.warn(message + " — ignoring it", stacklevel=2)
        return None
    return cal


def resolve_threshold(
    model_dir: PathLike, calibration: Calibration | None = None, default: float = 0.5
) -> tuple[float, dict[str, Any]]:
    """The decision threshold of a model folder and where it came from, in order of preference:

    1. the operating point of its calibration (``calibration.json``: rule, target, data);
    2. the EER threshold of its evaluation (``result.json``, or an export's ``meta.json``);
    3. ``default``, with ``{"rule": "default"}`` (a caller should warn: it means nothing for this model).

    Returns ``(threshold, source)``; ``source`` always has ``rule`` and ``file`` (``None`` for the default).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     resolve_threshold(d)
    (0.5, {'rule': 'default', 'file': None})
    """
    folder = Path(model_dir)
    op = calibration.operating_point if calibration is not None else None
    if op and op.get("threshold") is not None:
        source = {k: op.get(k) for k in ("rule", "target", "data", "prior", "far", "frr", "created") if k in op}
        source["file"] = str(folder / CALIBRATION_FILENAME)
        return float(op["threshold"]), source
    for name in ("result.json", "meta.json"):
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as err:
                raise CheckpointError(f"{path}: damaged JSON ({err})") from None
            value = data.get("threshold") if isinstance(data, dict) else None
            if value is not None:
                source = {"rule": "eer", "file": str(path)}
                if name == "result.json" and isinstance(data, dict):
                    for key in ("test_list", "trials_list", "trials", "num_trials", "eer"):
                        if key in data:
                            source[key] = data[key]
                return float(value), source
    return float(default), {"rule": "default", "file": None}
