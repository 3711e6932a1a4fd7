"""Shared helpers for the benchmark scripts: machine description, timing summaries, the one JSON report.

Every ``benchmarks/bench_*.py`` prints one JSON object with the machine it ran on; :func:`machine_info` builds
that description from named fields, in the order asked for, so each script keeps its own layout.

>>> info = machine_info(["cpu_count", "numpy"])
>>> list(info) == ["cpu_count", "numpy"] and info["cpu_count"] >= 1
True
>>> stats([3.0, 1.0, 2.0])
{'median': 2.0, 'min': 1.0, 'max': 3.0, 'repeats': 3}
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

#: The repository root (the folder holding ``mvector/``); scripts put it on ``sys.path``.
ROOT = Path(__file__).resolve().parents[1]


def add_repo_to_path() -> None:
    """Make ``import mvector`` pick the checkout this script lives in (run without installing).

    >>> add_repo_to_path(); str(ROOT) in sys.path
    True
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return torch


def _numpy_version() -> str:
    import numpy as np

    return np.__version__


def _torch_version() -> str | None:
    torch = _torch()
    return None if torch is None else torch.__version__


def _torch_threads() -> int | None:
    torch = _torch()
    return None if torch is None else torch.get_num_threads()


def _cuda_name() -> str | None:
    torch = _torch()
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def _cpus_usable() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _blas() -> list[dict[str, Any]] | None:
    try:
        import threadpoolctl
    except ImportError:
        return None
    return [{k: p.get(k) for k in ("internal_api", "num_threads")} for p in threadpoolctl.threadpool_info()]


#: Every field :func:`machine_info` knows, by name.
MACHINE_FIELDS: dict[str, Callable[[], Any]] = {
    "platform": platform.platform,
    "processor": platform.processor,
    "processor_or_machine": lambda: platform.processor() or platform.machine(),
    "python": platform.python_version,
    "cpu_count": os.cpu_count,
    "cpus_usable": _cpus_usable,
    "torch_threads": _torch_threads,
    "torch": _torch_version,
    "numpy": _numpy_version,
    "cuda": _cuda_name,
    "load_average": _load_average,
    "blas": _blas,
}

#: The fields a new benchmark reports unless it asks for others.
DEFAULT_MACHINE_FIELDS = (
    "platform",
    "processor_or_machine",
    "python",
    "cpu_count",
    "cpus_usable",
    "torch_threads",
    "torch",
    "numpy",
    "cuda",
    "load_average",
)


def machine_info(fields: Iterable[str] = DEFAULT_MACHINE_FIELDS, names: dict[str, str] | None = None) -> dict:
    """The machine description: ``fields`` from :data:`MACHINE_FIELDS`, in that order.

    ``names`` renames keys in the output (``{"processor_or_machine": "processor"}``).

    >>> list(machine_info(["python", "processor_or_machine"], names={"processor_or_machine": "processor"}))
    ['python', 'processor']
    """
    names = names or {}
    return {names.get(f, f): MACHINE_FIELDS[f]() for f in fields}


def stats(values: Sequence[float], digits: int | None = None) -> dict[str, float]:
    """Median, min, max and count of repeated measurements (rounded to ``digits`` when given).

    >>> stats([0.123456, 0.2], digits=3)
    {'median': 0.162, 'min': 0.123, 'max': 0.2, 'repeats': 2}
    """
    if not values:
        raise ValueError("stats() needs at least one value")

    def r(x: float) -> float:
        return round(float(x), digits) if digits is not None else float(x)

    return {
        "median": r(statistics.median(values)),
        "min": r(min(values)),
        "max": r(max(values)),
        "repeats": len(values),
    }


def emit(report: dict, indent: int | None = 2) -> None:
    """Print the benchmark's one JSON object to stdout.

    >>> emit({"figure": 1.5}, indent=None)
    {"figure": 1.5}
    """
    print(json.dumps(report, indent=indent), flush=True)
