"""How many CPU threads this process uses: one policy for every entry point (train, eval, inference, diarization,
the service, the demo).

The usable CPU count is the process's CPU affinity (``os.sched_getaffinity``) capped by the container's CPU quota
(cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), never the host's core count. From it:

- intra-op threads (``torch.set_num_threads``): the usable CPUs, less those that other processes keep busy right now
  (sampled from ``/proc/stat`` over the affinity CPUs for a tenth of a second), at least 1. A second thread on a
  core that another job holds costs far more than it gives: every parallel region waits for the thread that is not
  scheduled (the README's demo beside two busy processes on 2 cores: about 10x slower with 2 threads than with 1).
- inter-op threads (``torch.set_num_interop_threads``): the same number.
- data-loader workers: none on the CPU (the main process computes), ``min(4, usable)`` on CUDA.
- on a busy machine, waiting OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``,
  ``KMP_BLOCKTIME=0``), set by :func:`prepare_environment` before torch is imported (OpenMP reads them once, when
  it loads); the ``mvector`` command and ``python -m mvector.demo`` call it first.

Overrides, strongest first: an explicit count (``--threads N``), ``MVECTOR_NUM_THREADS``, ``OMP_NUM_THREADS``.
An override is used as given (no busy-machine reduction).

>>> plan = thread_plan(3, env={})
>>> plan.intra_op, plan.inter_op, plan.source
(3, 3, '--threads')
>>> thread_plan(None, env={"MVECTOR_NUM_THREADS": "2"}).source
'MVECTOR_NUM_THREADS'
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from mvector.errors import ConfigError

__all__ = [
    "ENV_THREADS",
    "ThreadPlan",
    "affinity_cpus",
    "cgroup_cpu_quota",
    "usable_cpus",
    "busy_cpus",
    "thread_plan",
    "apply_thread_policy",
    "current_plan",
    "prepare_environment",
]

#: Environment variable that sets the thread count of every mvector command (like ``--threads``).
ENV_THREADS = "MVECTOR_NUM_THREADS"

#: Environment set by :func:`prepare_environment` on a busy machine when the user has not set it: OpenMP threads
#: that wait sleep.
QUIET_WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}

_applied: ThreadPlan | None = None


@dataclass(frozen=True)
class ThreadPlan:
    """The thread counts chosen for this process, and why.

    ``usable``: CPUs this process may run on (affinity and quota); ``busy``: of those, how many other processes kept
    busy when sampled (0.0 when not sampled); ``source``: ``--threads``, ``MVECTOR_NUM_THREADS``,
    ``OMP_NUM_THREADS``, ``affinity``, ``cgroup quota`` or ``busy machine``.

    >>> ThreadPlan(usable=4, busy=0.0, intra_op=4, inter_op=4, source="affinity").loader_workers("cuda")
    4
    """

    usable: int
    busy: float
    intra_op: int
    inter_op: int
    source: str

    def loader_workers(self, device: object = "cpu") -> int:
        """DataLoader worker processes for training or embedding on ``device``: 0 on the CPU, min(4, usable) on
        an accelerator."""
        kind = getattr(device, "type", str(device)).split(":")[0]
        return 0 if kind == "cpu" else min(4, self.usable)

    def describe(self) -> str:
        """One line for logs, e.g. ``threads: 1 of 2 usable CPUs (busy machine: 1.9 CPUs in use by others)``."""
        line = f"threads: {self.intra_op} of {self.usable} usable CPUs ({self.source}"
        if self.source == "busy machine":
            line += f": {self.busy:.1f} CPUs in use by others"
        return line + f"; override with --threads or {ENV_THREADS})"


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``taskset``, ``docker --cpuset-cpus``); ``os.cpu_count()`` where the
    platform has no affinity.

    >>> affinity_cpus() >= 1
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _v2_limit(text: str | None) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line (``"max 100000"`` or ``"150000 100000"``)."""
    fields = (text or "").split()
    if len(fields) < 1 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(folder: Path) -> float | None:
    """CPUs allowed by a cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` pair (quota -1: no limit)."""
    try:
        quota = int(_read(folder / "cpu.cfs_quota_us") or "-1")
        period = int(_read(folder / "cpu.cfs_period_us") or "0")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _folders(mount: Path, cgroup_path: str) -> list[Path]:
    """The process's cgroup folder under ``mount`` and its parents up to the mount (a parent's limit applies too);
    the mount itself also stands for the process's cgroup in a container that mounts only its own subtree."""
    parts = [p for p in cgroup_path.strip("/").split("/") if p]
    folders = [mount.joinpath(*parts[:n]) for n in range(len(parts), 0, -1)]
    return folders + [mount]


def cgroup_cpu_quota(
    root: str | os.PathLike = "/sys/fs/cgroup", proc_cgroup: str | os.PathLike = "/proc/self/cgroup"
) -> float | None:
    """CPUs allowed by the cgroup CPU quota (the smallest along the cgroup's path), or None when unlimited or not
    found. Reads cgroup v2 (``0::/path`` and ``cpu.max``) and v1 (the ``cpu`` controller's ``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us``).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "job").mkdir()
    >>> _ = (root / "job" / "cpu.max").write_text("150000 100000\\n")
    >>> _ = (root / "cgroup").write_text("0::/job\\n")
    >>> cgroup_cpu_quota(root, root / "cgroup")
    1.5
    """
    root = Path(root)
    limits: list[float] = []
    for line in (_read(Path(proc_cgroup)) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2 unified hierarchy
            mount = root / "unified" if (root / "unified" / "cgroup.controllers").exists() else root
            for folder in _folders(mount, path):
                limit = _v2_limit(_read(folder / "cpu.max"))
                if limit is not None:
                    limits.append(limit)
        elif "cpu" in controllers.split(","):
            for name in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                mount = root / name
                if mount.is_dir():
                    break
            else:
                continue
            for folder in _folders(mount, path):
                limit = _v1_limit(folder)
                if limit is not None:
                    limits.append(limit)
    return min(limits) if limits else None


def usable_cpus() -> int:
    """CPUs this process can use: the affinity count, capped by the cgroup quota (rounded up), at least 1.

    >>> 1 <= usable_cpus() <= affinity_cpus()
    True
    """
    count = affinity_cpus()
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota - 1e-9)))
    return count


def _cpu_times(cpus: set[int] | None) -> tuple[float, float] | None:
    """``(busy, total)`` jiffies summed over ``cpus`` (None: all) from ``/proc/stat``."""
    text = _read(Path("/proc/stat"))
    if not text:
        return None
    busy = total = 0.0
    found = False
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            index = int(name[3:])
            values = [float(v) for v in rest.split()]
        except ValueError:
            continue
        if (cpus is not None and index not in cpus) or len(values) < 4:
            continue
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
        # guest time is already inside user time
        spent = sum(values[:8])
        busy += spent - idle
        total += spent
        found = True
    return (busy, total) if found else None


def busy_cpus(seconds: float = 0.1) -> float:
    """How many of this process's affinity CPUs other processes kept busy over the next ``seconds`` (this process
    sleeps meanwhile), from ``/proc/stat``; 0.0 where that is not available.

    >>> 0.0 <= busy_cpus(0.05) <= affinity_cpus()
    True
    """
    try:
        cpus: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    before = _cpu_times(cpus)
    if before is None:
        return 0.0
    time.sleep(seconds)
    after = _cpu_times(cpus)
    if after is None or after[1] <= before[1]:
        return 0.0
    count = len(cpus) if cpus else (os.cpu_count() or 1)
    return max(0.0, min(float(count), count * (after[0] - before[0]) / (after[1] - before[1])))


def _override(requested: int | None, env: Mapping[str, str]) -> tuple[int, str] | None:
    if requested is not None:
        if isinstance(requested, bool) or int(requested) < 1:
            raise ConfigError(f"--threads must be a positive integer, got {requested!r}")
        return int(requested), "--threads"
    for name in (ENV_THREADS, "OMP_NUM_THREADS"):
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r} is not a positive integer") from None
        if value < 1:
            raise ConfigError(f"environment variable {name}={raw!r} is not a positive integer")
        return value, name
    return None


def _local_ranks(env: Mapping[str, str]) -> int:
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def thread_plan(
    requested: int | None = None,
    *,
    reserve: int = 0,
    env: Mapping[str, str] | None = None,
    usable: int | None = None,
    busy: float | None = None,
) -> ThreadPlan:
    """Choose the thread counts (see the module's notes); does not change anything.

    ``requested``: an explicit count (``--threads``), used as given. ``reserve``: CPUs to leave for other work of the
    same process (the service's HTTP and decoding threads). ``usable`` / ``busy`` replace the measured values (for
    tests); ``busy`` is sampled only when no override applies and the affinity CPUs bound the process (under a
    cgroup quota the quota is this process's own share, and the host's other cores say nothing about it).

    >>> thread_plan(env={}, usable=2, busy=1.9).intra_op, thread_plan(env={}, usable=2, busy=0.1).intra_op
    (1, 2)
    >>> thread_plan(env={}, usable=8, busy=0.0, reserve=1).intra_op
    7
    """
    env = os.environ if env is None else env
    count = usable if usable is not None else usable_cpus()
    ranks = _local_ranks(env)
    if ranks > 1:  # several processes of one job on this machine (torchrun): each gets its share
        count = max(1, count // ranks)
    chosen = _override(requested, env)
    if chosen is not None:
        return ThreadPlan(count, 0.0, chosen[0], chosen[0], chosen[1])
    source = "affinity" if ranks == 1 else f"{ranks} local ranks"
    if usable is None and ranks == 1 and count < affinity_cpus():
        source, busy = "cgroup quota", 0.0 if busy is None else busy
    if busy is None:
        busy = busy_cpus()
    # A CPU counts as taken once others use half of it: a thread sharing a core loses more (waiting in every
    # parallel region for its turn) than it brings.
    free = count - max(0.0, busy)
    threads = max(1, min(count, math.floor(free + 0.5)) - max(0, int(reserve)))
    if threads < max(1, count - max(0, int(reserve))):
        source = "busy machine"
    return ThreadPlan(count, float(busy), threads, threads, source)


def apply_thread_policy(requested: int | None = None, *, reserve: int = 0, verbose: bool = False) -> ThreadPlan:
    """Choose the thread counts and set them in torch (intra-op always; inter-op only while torch still allows it,
    before any inter-op work); remembered as this process's plan (:func:`current_plan`). ``verbose`` prints
    :meth:`ThreadPlan.describe` on stdout.

    >>> plan = apply_thread_policy(1)
    >>> import torch
    >>> torch.get_num_threads(), current_plan().intra_op
    (1, 1)
    """
    global _applied
    import torch

    plan = thread_plan(requested, reserve=reserve)
    torch.set_num_threads(plan.intra_op)
    try:
        if torch.get_num_interop_threads() != plan.inter_op:
            torch.set_num_interop_threads(plan.inter_op)
    except RuntimeError:  # inter-op threads can be set once, before any inter-op parallel work
        pass
    _applied = plan
    if verbose:  # on stdout: stderr is for errors and warnings
        print(plan.describe(), flush=True)
    return plan


def current_plan() -> ThreadPlan:
    """The plan set by :func:`apply_thread_policy`, or (when none was applied, e.g. in a library user's process)
    one for the current torch thread count without sampling the machine.

    >>> current_plan().usable >= 1
    True
    """
    if _applied is not None:
        return _applied
    count = usable_cpus()
    threads = count
    if "torch" in sys.modules:
        threads = int(sys.modules["torch"].get_num_threads())
    return ThreadPlan(count, 0.0, threads, threads, "affinity")


def prepare_environment(env: dict[str, str] | None = None, busy: float | None = None) -> bool:
    """On a busy machine, make waiting OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``,
    ``KMP_BLOCKTIME=0``) unless the user set these; returns True when torch was not imported yet, i.e. when it takes
    effect in this process (child processes inherit it either way).

    ``busy``: CPUs other processes keep busy (sampled with :func:`busy_cpus` when not given). On a quiet machine
    nothing is set: sleeping threads wake late for every parallel region (the README's demo on 2 idle cores took
    115 s with passive waits against 85 s without), while beside busy processes spinning threads steal the cores
    the work needs.

    >>> env = {"OMP_WAIT_POLICY": "ACTIVE"}
    >>> _ = prepare_environment(env, busy=1.5)
    >>> env == {"OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "0"}
    True
    >>> env = {}
    >>> _ = prepare_environment(env, busy=0.0)
    >>> env
    {}
    """
    env = os.environ if env is None else env
    if any(name not in env for name in QUIET_WAIT_ENV):
        if (busy_cpus() if busy is None else busy) >= 0.5:
            for name, value in QUIET_WAIT_ENV.items():
                env.setdefault(name, value)
    return "torch" not in sys.modules
