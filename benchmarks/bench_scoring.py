"""Benchmark: exact all-pairs EER/minDCF (mvector.evaluation.metrics.all_pairs_metrics) and vectorised trial scoring.

Synthetic clustered Gaussian embeddings (192-d, N/10 speakers, 10 utterances each); every pair of distinct
utterances is a trial. Each measurement runs in a fresh child process so its peak memory (ru_maxrss growth
during the call) is its own. Baselines, measured in the same run:

* all pairs: a float32 numpy cosine matrix, the upper triangle gathered, scikit-learn ``roc_curve`` (full
  sort) and the EER/minDCF read off its points. Run at N <= 5000 only: at N = 20000 it needs 200 M scores
  (over 3 GiB in float64) and about 90 s (reference figure), so that row reports our figure alone.
* trial scoring: a per-trial Python loop (normalise both vectors, dot), timed on a 20 k-trial subset and
  scaled to the full trial count.

Prints one JSON object. ``--quick``: N = 2000 and 200 k trials, under 20 s.

    python benchmarks/bench_scoring.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from common import emit, machine_info  # noqa: E402


def make_embeddings(n: int, dim: int = 192, per_speaker: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    spk = np.repeat(np.arange(n // per_speaker), per_speaker)
    centres = rng.standard_normal((n // per_speaker, dim)).astype(np.float32)
    emb = centres[spk] * 0.5 + rng.standard_normal((spk.size, dim)).astype(np.float32)
    return emb, spk


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": len(times)}


# ------------------------------------------------------------------------------------------ child tasks
def baseline_all_pairs(emb: np.ndarray, spk: np.ndarray) -> dict:
    from sklearn.metrics import roc_curve

    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = unit @ unit.T
    iu = np.triu_indices(len(emb), 1)
    scores = sim[iu]
    labels = spk[iu[0]] == spk[iu[1]]
    del sim, iu
    fpr, tpr, thr = roc_curve(labels, scores)
    fnr = 1 - tpr
    d = fnr - fpr
    i = int(np.flatnonzero(d < 0)[0])
    t = d[i - 1] / (d[i - 1] - d[i])
    eer = fnr[i - 1] + t * (fnr[i] - fnr[i - 1])
    out = {"eer": float(eer), "threshold": float(thr[i - 1] if abs(d[i - 1]) < abs(d[i]) else thr[i])}
    for p in (0.01, 0.05):
        cost = (fnr * p + fpr * (1 - p)) / min(p, 1 - p)
        out[f"min_dcf_{p:g}"] = float(cost.min())
    return out


def child(spec: dict) -> dict:
    import torch

    from mvector.evaluation.metrics import all_pairs_metrics
    from mvector.evaluation.scoring import cosine_score_trials

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    task, repeats = spec["task"], int(spec["repeats"])
    if task in ("all_pairs", "baseline"):
        emb, spk = make_embeddings(int(spec["n"]))
        fn = (lambda: all_pairs_metrics(emb, spk)) if task == "all_pairs" else (lambda: baseline_all_pairs(emb, spk))
    else:
        rng = np.random.default_rng(1)
        emb = rng.standard_normal((int(spec["n"]), 192)).astype(np.float32)
        pairs = rng.integers(0, emb.shape[0], (int(spec["trials"]), 2))
        if task == "trials":

            def fn():
                return cosine_score_trials(emb, pairs)
        else:  # per-trial loop baseline on a subset
            sub = pairs[: int(spec["subset"])]

            def fn():
                out = np.empty(len(sub))
                for k, (i, j) in enumerate(sub):
                    a, b = emb[i], emb[j]
                    out[k] = np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b))
                return out

    before = _maxrss_mib()
    times = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    out = {**_summary(times), "peak_mem_mib": _maxrss_mib() - before, "torch_threads": torch.get_num_threads()}
    if isinstance(result, dict):
        out["metrics"] = {k: v for k, v in result.items() if not k.startswith("min_dcf_threshold")}
    return out


def run_child(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 2000 and 200 k trials (under 20 s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the children (0: default)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    import torch

    sizes = [2000] if args.quick else [5000, 20000]
    baseline_max_n = 5000
    n_trials, n_emb = (200_000, 10_000) if args.quick else (1_000_000, 10_000)
    report: dict = {
        "benchmark": "bench_scoring",
        "machine": {
            **machine_info(["platform", "python", "cpu_count", "torch", "numpy"]),
            "torch_threads": args.threads or torch.get_num_threads(),
            "loadavg_at_start": list(os.getloadavg()),
        },
        "quick": args.quick,
        "all_pairs": [],
    }
    for n in sizes:
        row: dict = {"n": n, "pairs": n * (n - 1) // 2, "speakers": n // 10, "dim": 192}
        ours = run_child({"task": "all_pairs", "n": n, "repeats": args.repeats, "threads": args.threads})
        row["mvector"] = ours
        if n <= baseline_max_n:
            base = run_child(
                {"task": "baseline", "n": n, "repeats": 1 if n > 2000 else args.repeats, "threads": args.threads}
            )
            row["baseline_numpy_sklearn"] = base
            row["speedup_median"] = base["median_s"] / ours["median_s"]
            row["memory_ratio"] = base["peak_mem_mib"] / max(ours["peak_mem_mib"], 1e-9)
            row["eer_abs_diff_vs_baseline"] = abs(base["metrics"]["eer"] - ours["metrics"]["eer"])
        else:
            row["baseline_numpy_sklearn"] = "not run: 200 M scores need > 3 GiB and ~90 s (reference figure 91 s)"
        report["all_pairs"].append(row)

    subset = 20_000
    ours = run_child(
        {"task": "trials", "n": n_emb, "trials": n_trials, "repeats": args.repeats, "threads": args.threads}
    )
    loop = run_child(
        {"task": "loop", "n": n_emb, "trials": n_trials, "subset": subset, "repeats": 1, "threads": args.threads}
    )
    loop_full = loop["median_s"] * n_trials / subset
    report["trial_scoring"] = {
        "trials": n_trials,
        "embeddings": n_emb,
        "mvector": ours,
        "baseline_per_trial_loop_s": loop_full,
        "baseline_note": f"per-trial Python loop timed on {subset} trials, scaled to {n_trials}",
        "speedup_median": loop_full / ours["median_s"],
    }
    report["loadavg_at_end"] = list(os.getloadavg())
    emit(report, indent=1)


if __name__ == "__main__":
    main()
