"""Speaker identification benchmark: one ``SpeakerDatabase.search`` against 10k / 100k / 1M enrolled speakers.

Measures, for each database size: enrolment rate through ``add_many`` (chunks of 100k speakers), the time to open
the database and load its mean matrix (first search after opening), and the latency of one query (top-1 and top-5;
median, min and max over repeats). Enrolment one speaker at a time through ``add`` is measured on the smallest
database. The baseline, measured in the same run, is a plain per-speaker Python loop computing the cosine similarity
of the query with each enrolled mean (the approach of the well-known implementation), at 10k and, when it is
expected to take under 30 s, at 100k.

    python benchmarks/bench_search.py            # 10k, 100k, 1M   (about 2 minutes)
    python benchmarks/bench_search.py --quick    # 10k, 100k       (under 20 s)

Prints one JSON object. Goal: under 50 ms for one query against 1M speakers (192-d) on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import add_repo_to_path, emit, machine_info

add_repo_to_path()

from mvector.inference.speaker_db import SpeakerDatabase  # noqa: E402

GOAL_MS = 50.0
CHUNK = 100_000


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in seconds]
    return {"median_ms": round(statistics.median(ms), 3), "min_ms": round(min(ms), 3), "max_ms": round(max(ms), 3)}


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def baseline_loop(names: list[str], means: list[np.ndarray], query: np.ndarray) -> tuple[str, float]:
    """Per-speaker Python loop: cosine similarity of the query with every stored mean, keep the best."""
    best_name, best_score = "", -2.0
    for name, mean in zip(names, means):
        score = float(np.dot(query, mean) / (np.linalg.norm(query) * np.linalg.norm(mean)))
        if score > best_score:
            best_name, best_score = name, score
    return best_name, best_score


def time_calls(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def bench_size(n: int, dim: int, repeats: int, root: Path, rng: np.random.Generator, measure_single: bool) -> dict:
    folder = root / f"db_{n}"
    db = SpeakerDatabase(folder, "bench-model", dim)
    enrol_s = 0.0
    probe = None
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        rows = unit_rows(rng, count, dim)
        if probe is None:
            probe = rows[: min(64, count)].copy()
        items = {f"spk{start + i:07d}": rows[i] for i in range(count)}
        t0 = time.perf_counter()
        db.add_many(items)
        enrol_s += time.perf_counter() - t0
        del items, rows
    result: dict = {"speakers": n, "add_many_speakers_per_s": round(n / enrol_s, 1)}
    if measure_single:
        singles = unit_rows(rng, 300, dim)
        t0 = time.perf_counter()
        for i, row in enumerate(singles):
            db.add(f"single{i:04d}", row)
        result["add_one_at_a_time_speakers_per_s"] = round(len(singles) / (time.perf_counter() - t0), 1)
        for i in range(len(singles)):
            db.remove(f"single{i:04d}")
    db.close()

    t0 = time.perf_counter()
    db = SpeakerDatabase(folder, "bench-model", dim)
    opened = time.perf_counter() - t0
    queries = probe + 0.3 * unit_rows(rng, len(probe), dim)
    t0 = time.perf_counter()
    first = db.search(queries[0])
    result["open_s"] = round(opened, 4)
    result["load_on_first_search_s"] = round(time.perf_counter() - t0, 3)
    assert first[0][0][0] == "spk0000000", first  # the perturbed probe still finds its speaker
    counter = iter(range(10**9))
    for k in (1, 5):
        result[f"search_top{k}"] = summary(
            time_calls(lambda k=k: db.search(queries[next(counter) % len(queries)], top_k=k), repeats)
        )
    # Floor for comparison: the bare float32 matrix-vector product over the in-memory means (memory-bandwidth bound).
    matrix = db._cache.matrix[: db._cache.count]
    result["bare_gemv_floor"] = summary(time_calls(lambda: matrix @ queries[0], repeats))
    result["search_batch64_top5_per_query"] = summary(
        [t / len(queries) for t in time_calls(lambda: db.search(queries, top_k=5), 3)]
    )
    db.close()
    shutil.rmtree(folder, ignore_errors=True)
    return result


def bench_baseline(n: int, dim: int, repeats: int, rng: np.random.Generator) -> dict:
    means = list(unit_rows(rng, n, dim))
    names = [f"spk{i:07d}" for i in range(n)]
    query = means[0] + 0.3 * unit_rows(rng, 1, dim)[0]
    times = time_calls(lambda: baseline_loop(names, means, query), repeats)
    return {"speakers": n, "search_top1": summary(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k only (under 20 s)")
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="*", help="database sizes (default 10000 100000 1000000)")
    parser.add_argument("--dir", default=None, help="scratch folder for the databases (default: a temp folder)")
    args = parser.parse_args()
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="bench_search_", dir=args.dir))
    started = time.perf_counter()
    try:
        ours = [bench_size(n, args.dim, args.repeats, root, rng, measure_single=(i == 0)) for i, n in enumerate(sizes)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    baseline_repeats = 3 if args.quick else 5
    baseline = [bench_baseline(sizes[0], args.dim, baseline_repeats, rng)]
    per_speaker_s = baseline[0]["search_top1"]["median_ms"] / 1e3 / sizes[0]
    if len(sizes) > 1 and per_speaker_s * sizes[1] * (baseline_repeats + 1) < 30 and not args.quick:
        baseline.append(bench_baseline(sizes[1], args.dim, baseline_repeats, rng))
    by_size = {r["speakers"]: r for r in ours}
    speedups = {
        str(b["speakers"]): round(b["search_top1"]["median_ms"] / by_size[b["speakers"]]["search_top1"]["median_ms"], 1)
        for b in baseline
    }
    largest = ours[-1]
    report = {
        "benchmark": "speaker_db.search",
        "figure": {
            "speakers": largest["speakers"],
            "search_top1_median_ms": largest["search_top1"]["median_ms"],
            "goal_ms": GOAL_MS if largest["speakers"] >= 1_000_000 else None,
            "meets_goal": largest["search_top1"]["median_ms"] < GOAL_MS if largest["speakers"] >= 1_000_000 else None,
        },
        "baseline": {"method": "per-speaker Python loop, cosine similarity", "results": baseline},
        "speedup_vs_baseline_top1": speedups,
        "results": ours,
        "dim": args.dim,
        "repeats": args.repeats,
        "quick": args.quick,
        "total_s": round(time.perf_counter() - started, 1),
        "machine": machine_info(
            ["platform", "processor", "cpu_count", "cpus_usable", "load_average", "python", "numpy", "torch", "blas"]
        ),
    }
    emit(report, indent=None)


if __name__ == "__main__":
    main()
