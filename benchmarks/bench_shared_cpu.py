"""The README's first command on a shared CPU: ``python -m mvector.demo`` quiet, then beside busy processes.

Each run is a fresh process in a temp folder, timed from launch to exit. The busy processes are started just
before a busy run and stopped after it: ``--busy spin`` (default) runs ``python -c "while True: pass"``,
``--busy matmul`` a torch matrix-multiply loop with torch's default threads. Configurations (``--configs``):

* ``policy``        - the command as users run it: mvector's thread policy (usable CPUs less the busy ones, OpenMP
  threads that wait sleep: ``mvector/utils/threads.py``);
* ``one_thread``    - the same with ``MVECTOR_NUM_THREADS=1``;
* ``torch_default`` - the behaviour before the policy: torch imported first (OpenMP's default spin-waits) and one
  thread per usable CPU.

The figure is busy time / quiet time per configuration (issue 22's target for ``policy`` on a 2-core machine
beside two busy processes: <= 3x). The quiet runs are only quiet if nothing else runs on the machine: the report
carries the load average before each run; on a shared machine the figures are provisional.

    python benchmarks/bench_shared_cpu.py                          # policy, the full demo (20 epochs)
    python benchmarks/bench_shared_cpu.py --max_epoch 2 --configs policy one_thread torch_default
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, add_repo_to_path, machine_info  # noqa: E402

add_repo_to_path()

BUSY = {
    "spin": "while True: pass",
    "matmul": "import torch\na = torch.randn(512, 512)\nwhile True: a @ a",
}
CONFIGS = ("policy", "one_thread", "torch_default")


def _command(config: str, work: Path, max_epoch: int) -> tuple[list[str], dict[str, str]]:
    from mvector.utils.threads import usable_cpus

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MVECTOR_NUM_THREADS")}
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("KMP_BLOCKTIME", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    demo_args = ["--work_dir", str(work), "--max_epoch", str(max_epoch)]
    if config == "torch_default":
        env["MVECTOR_NUM_THREADS"] = str(usable_cpus())
        code = f"import sys, torch\nfrom mvector.demo import main\nsys.exit(main({demo_args!r}))"
        return [sys.executable, "-c", code], env
    if config == "one_thread":
        env["MVECTOR_NUM_THREADS"] = "1"
    return [sys.executable, "-m", "mvector.demo", *demo_args], env


def run_demo(config: str, busy: int, kind: str, max_epoch: int, timeout: float) -> dict:
    """One demo run beside ``busy`` busy processes; returns its wall time and what the policy chose."""
    work = Path(tempfile.mkdtemp(prefix=f"shared_{config}_"))
    spinners = [subprocess.Popen([sys.executable, "-c", BUSY[kind]]) for _ in range(busy)]
    try:
        if spinners:
            time.sleep(1.0)  # let them take the cores
        load = os.getloadavg()[0]
        cmd, env = _command(config, work, max_epoch)
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
    except subprocess.TimeoutExpired:
        return {"config": config, "busy": busy, "error": f"timed out after {timeout:.0f} s"}
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        return {"config": config, "busy": busy, "error": (proc.stdout + proc.stderr)[-2000:]}
    chosen = re.search(r"^threads: .*$", proc.stdout, re.M)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    record = {
        "config": config,
        "busy": busy,
        "seconds": round(wall, 1),
        "demo_seconds": summary["seconds"],
        "trained_eer": summary["trained_eer"],
        "threads": chosen.group(0) if chosen else None,
        "load_average_before": round(load, 2),
    }
    print(f"{config:14s} busy={busy}  {wall:7.1f} s   {record['threads'] or ''}", flush=True)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["policy"], choices=CONFIGS)
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside the busy runs")
    parser.add_argument("--kind", default="spin", choices=sorted(BUSY), help="what the busy processes run")
    parser.add_argument("--max_epoch", type=int, default=20, help="demo epochs (20: the README's command)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run at most")
    args = parser.parse_args()
    runs, ratios = [], {}
    for config in args.configs:
        quiet = run_demo(config, 0, args.kind, args.max_epoch, args.timeout)
        busy = run_demo(config, args.busy, args.kind, args.max_epoch, args.timeout)
        runs += [quiet, busy]
        if "seconds" in quiet and "seconds" in busy:
            ratios[config] = round(busy["seconds"] / quiet["seconds"], 2)
            print(f"{config:14s} busy / quiet = {ratios[config]:.2f}x", flush=True)
    report = {
        "benchmark": "shared_cpu",
        "command": "python -m mvector.demo",
        "max_epoch": args.max_epoch,
        "busy_processes": args.busy,
        "busy_kind": args.kind,
        "ratio_busy_to_quiet": ratios,
        "target": "policy <= 3x",
        "machine": machine_info(["cpu_count", "torch", "python"]),
        "runs": runs,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
