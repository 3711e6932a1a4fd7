"""A gallery at 10 k / 100 k / 1 M speakers on both stores (SQLite folder, PostgreSQL): what one replica costs.

For each store and size, with synthetic 192-d unit embeddings (one utterance per speaker):

* bulk enrolment: ``SpeakerDatabase.add_many`` in chunks of 100 k speakers (speakers per second);
* a replica's cold start, in a fresh process: open the gallery and answer the first search (every mean read into
  the in-memory matrix), and its memory: resident-set growth against the matrix's own size (n x 192 x 4 bytes);
* exact search in that replica: one query (p50 / p99 over ``--queries`` probes) and a batch of 100 queries, with a
  bare numpy scan of the same matrix (``matrix @ q`` + argmax) measured in the same process as the floor;
* with ``--ann``: the approximate index (:mod:`mvector.inference.ann_index`, ``--ann_kind``, PQ codes by default)
  built over that matrix and searched through ``SpeakerDatabase.search`` as ``search_index=...`` does: build time,
  its memory, one-query p50 / p99 and recall@1 (the fraction of probes whose top-1 is exact search's top-1).

Probes are enrolled speakers' vectors with noise (cosine ``--probe_cos`` to their speaker, about 0.75 by default:
a same-speaker score of a real model), so exact search knows the right answer.

    python benchmarks/bench_gallery_scale.py --sizes 10000 100000 --stores sqlite postgres
    python benchmarks/bench_gallery_scale.py --sizes 1000000 --stores sqlite postgres --ann
    python benchmarks/bench_gallery_scale.py --postgres_url postgresql://user:pw@host/db ...   # an existing server

Without ``--postgres_url`` a throwaway PostgreSQL is started (tests/postgres_server.py: initdb in a temporary folder,
fsync off, 32 MB shared buffers) and removed afterwards. Prints one JSON object; ``--table`` also prints the README's
Markdown rows. Targets at 1 M on 2 cores: cold start <= 5 s from PostgreSQL, exact p50 <= 30 ms, memory <= 1.3x
the matrix; approximate p50 <= 2 ms with recall@1 >= 0.99.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, add_repo_to_path, emit, machine_info

add_repo_to_path()

from mvector.inference.ann_index import APPROXIMATE_KINDS  # noqa: E402
from mvector.inference.speaker_db import SpeakerDatabase  # noqa: E402

CHUNK = 100_000
FINGERPRINT = "bench-gallery-scale"
TARGETS = {"cold_start_s": 5.0, "search_p50_ms": 30.0, "memory_ratio": 1.3, "ann_p50_ms": 2.0, "ann_recall": 0.99}


def unit_rows(seed: int, chunk: int, n: int, dim: int) -> np.ndarray:
    """Chunk ``chunk``'s ``n`` unit rows (deterministic, so a replica can rebuild any probe's speaker)."""
    rows = np.random.default_rng([seed, chunk]).standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def name_of(i: int) -> str:
    return f"spk{i:07d}"


def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def enrol(location: str, gallery: str, n: int, dim: int, seed: int) -> dict:
    """Bulk-enrol ``n`` speakers (chunks of 100 k) into a new gallery; returns the rate."""
    spent = 0.0
    with SpeakerDatabase(location, FINGERPRINT, dim, gallery=gallery) as db:
        if len(db):
            raise SystemExit(f"{location} already holds speakers; give an empty store")
        for chunk, start in enumerate(range(0, n, CHUNK)):
            count = min(CHUNK, n - start)
            rows = unit_rows(seed, chunk, count, dim)
            items = {name_of(start + i): rows[i] for i in range(count)}
            t0 = time.perf_counter()
            db.add_many(items)
            spent += time.perf_counter() - t0
    return {"enrol_s": round(spent, 2), "enrol_speakers_per_s": round(n / spent, 1)}


def probes(n: int, dim: int, seed: int, count: int, cos: float) -> tuple[np.ndarray, list[str]]:
    """``count`` noisy unit probes of enrolled speakers (cosine about ``cos`` to their speaker) and their names."""
    rng = np.random.default_rng([seed, 999])
    first = unit_rows(seed, 0, min(n, CHUNK), dim)
    picks = rng.choice(len(first), size=min(count, len(first)), replace=False)
    sigma = np.sqrt((1.0 / cos**2 - 1.0) / dim)  # |noise|^2 = dim * sigma^2 gives the wanted cosine on average
    noisy = first[picks] + sigma * rng.standard_normal((len(picks), dim), dtype=np.float32)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32), [name_of(int(i)) for i in picks]


def timed_searches(db: SpeakerDatabase, queries: np.ndarray, wanted: list[str]) -> tuple[list[float], int]:
    """One ``db.search`` per query: the seconds of each, and how many named the wanted speaker first."""
    seconds, hits = [], 0
    for q, want in zip(queries, wanted):
        t = time.perf_counter()
        top = db.search(q)[0][0][0]
        seconds.append(time.perf_counter() - t)
        hits += top == want
    return seconds, hits


def fresh_memory_touch(nbytes: int) -> float:
    """Seconds to write ``nbytes`` of newly allocated memory once (then freed): what the machine charges for memory
    a process has not used yet. On a plain machine a few hundred MB take well under a second; in a virtual machine
    whose host gives memory back lazily (free-page reporting) pages unused for a while cost far more, and a cold
    start's matrix pays the same."""
    t = time.perf_counter()
    block = np.empty(nbytes, np.uint8)
    block.fill(1)
    seconds = time.perf_counter() - t
    del block
    return round(seconds, 3)


def replica(args: argparse.Namespace) -> dict:
    """One replica's cold start, memory and searches (run in a fresh process)."""
    queries, expected = probes(args.n, args.dim, args.seed, args.queries, args.probe_cos)
    from mvector.store import open_store

    open_store(args.location)  # the store's modules (psycopg ...) are imported before memory is measured
    before = rss_bytes()
    t0 = time.perf_counter()
    db = SpeakerDatabase(args.location, FINGERPRINT, args.dim, gallery=args.gallery)
    first = db.search(queries[0])
    cold = time.perf_counter() - t0
    after = rss_bytes()
    cache = db._cache
    matrix = cache.matrix[: cache.count]
    out = {
        "cold_start_s": round(cold, 3),
        "matrix_mb": round(matrix.nbytes / 2**20, 1),
        "rss_delta_mb": round((after - before) / 2**20, 1),
        "memory_ratio": round((after - before) / matrix.nbytes, 3),
    }
    assert first[0][0][0] == expected[0], (first, expected[0])
    out["fresh_memory_touch_s"] = fresh_memory_touch(matrix.nbytes)
    if args.cold_only:
        db.close()
        return out
    single, hits = timed_searches(db, queries, expected)
    out["search"] = percentiles(single)
    out["search_found_own_speaker"] = round(hits / len(queries), 4)
    bare = []
    for q in queries:
        t = time.perf_counter()
        int(np.argmax(matrix @ q))
        bare.append(time.perf_counter() - t)
    out["bare_numpy_scan"] = percentiles(bare)
    out["search_vs_bare_p50"] = round(out["search"]["p50_ms"] / out["bare_numpy_scan"]["p50_ms"], 2)
    batch = queries[:100]
    times = []
    for _ in range(args.batch_repeats):
        t = time.perf_counter()
        db.search(batch)
        times.append(time.perf_counter() - t)
    out["search_100"] = percentiles(times)
    if args.ann:
        out["ann"] = ann(db, queries, args)
    db.close()
    return out


def ann(db: SpeakerDatabase, queries: np.ndarray, args: argparse.Namespace) -> dict:
    """Give the replica an approximate index over its matrix (as ``SpeakerDatabase(search_index=...)`` does at its
    first load) and measure plain searches through it: build time, the index's memory, one-query p50 / p99 and
    recall@1 (the share of probes whose top-1 is exact search's top-1)."""
    from mvector.inference.ann_index import ApproximateIndex

    cache = db._cache
    matrix, ids = cache.matrix[: cache.count], cache.ids[: cache.count]
    exact = [cache.names[r] for r in np.argmax(queries @ matrix.T, axis=1)]
    before = rss_bytes()
    t0 = time.perf_counter()
    index = ApproximateIndex(matrix.shape[1], kind=args.ann_kind, min_rows=0, rows_of=db._means_of)
    index.build(ids, matrix)
    built = time.perf_counter() - t0
    grown = rss_bytes() - before
    db._index = index  # what search_index=... gives a replica; plain searches now go through it
    out: dict = {"kind": args.ann_kind, "build_s": round(built, 1), "rss_delta_mb": round(grown / 2**20, 1),
                 "memory_ratio": round(grown / matrix.nbytes, 3), "settings": []}
    for effort in args.ann_effort:
        index.set_effort(effort)
        lat, agree = timed_searches(db, queries, exact)
        out["settings"].append({"effort": effort, **percentiles(lat), "recall_at_1": round(agree / len(queries), 4)})
    return out


def run_replica(location: str, gallery: str, n: int, args: argparse.Namespace, cold_only: bool = False) -> dict:
    """:func:`replica` in a fresh Python process (its own memory and caches, as a new replica has); ``cold_only``:
    its cold start and memory only."""
    cmd = [
        sys.executable, __file__, "--replica", "--location", location, "--gallery", gallery, "--n", str(n),
        "--dim", str(args.dim),
        "--seed", str(args.seed), "--queries", str(args.queries), "--probe_cos", str(args.probe_cos),
        "--batch_repeats", str(args.batch_repeats),
    ]
    if cold_only:
        cmd.append("--cold_only")
    elif args.ann:
        cmd += ["--ann", "--ann_kind", args.ann_kind, "--ann_effort", *map(str, args.ann_effort)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=Path(__file__).parent)
    if done.returncode != 0:
        raise SystemExit(f"replica failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def settle(url: str) -> float:
    """``VACUUM ANALYZE`` the database after a bulk load (what autovacuum would start on its own a moment later,
    competing with the replica for the same cores), then ``CHECKPOINT`` (write the pages both dirtied now, not
    during the measurement); its seconds. CHECKPOINT needs a superuser or pg_checkpoint: skipped without one."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass
    return round(time.perf_counter() - t0, 1)


def with_option(url: str, setting: str) -> str:
    """``url`` with a server setting added to its ``options`` parameter (``-c name=value``).

    >>> with_option("postgresql://u:p@h/db", "statement_timeout=0")
    'postgresql://u:p@h/db?options=-c%20statement_timeout%3D0'
    """
    from urllib.parse import quote

    return url + ("&" if "?" in url else "?") + "options=" + quote(f"-c {setting}", safe="")


def table(results: list[dict], load: list[float]) -> str:
    """The README's Markdown rows."""
    lines = [
        "| store | speakers | enrol (speakers/s) | cold start (s) | memory (x matrix) | exact 1 query p50 / p99 (ms) "
        "| bare numpy p50 (ms) | exact 100 queries p50 / p99 (ms) | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['store']} | {r['speakers']:,} | {r['enrol_speakers_per_s']:,.0f} | "
            f"{' / '.join(map(str, r.get('cold_starts_s', [r['cold_start_s']])))} | "
            f"{r['memory_ratio']} ({r['rss_delta_mb']:.0f} / {r['matrix_mb']:.0f} MB) | "
            f"{r['search']['p50_ms']} / {r['search']['p99_ms']} | {r['bare_numpy_scan']['p50_ms']} | "
            f"{r['search_100']['p50_ms']} / {r['search_100']['p99_ms']} | {r['load_1min']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--postgres_url", default=None, help="an existing, empty PostgreSQL database (default: a "
                        "throwaway server); each size uses its own gallery")
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--queries", type=int, default=300, help="probes for the one-query latency and recall")
    parser.add_argument("--batch_repeats", type=int, default=20, help="repeats of the 100-query batch")
    parser.add_argument("--probe_cos", type=float, default=0.75, help="probe-to-speaker cosine (noise level)")
    parser.add_argument("--ann", action="store_true", help="also build and measure the approximate index")
    parser.add_argument("--ann_kind", default="pq", choices=APPROXIMATE_KINDS, help="which approximate index")
    parser.add_argument("--ann_effort", type=int, nargs="+", default=[16, 64],
                        help="search effort settings to measure (PQ rows re-scored / HNSW efSearch / IVF nprobe)")
    parser.add_argument("--settle", action="store_true", help="VACUUM ANALYZE and CHECKPOINT a PostgreSQL database "
                        "after the bulk load, before the replica is measured (else that work may run during it)")
    parser.add_argument("--cold_starts", type=int, default=1, help="replicas started one after the other in fresh "
                        "processes; the first is measured in full, the others' cold start and memory are listed too "
                        "(the spread of a cold start)")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary folder)")
    parser.add_argument("--table", action="store_true", help="also print the README's Markdown rows")
    parser.add_argument("--replica", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--location", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--gallery", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--cold_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replica:
        print(json.dumps(replica(args)), flush=True)
        return

    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench_gallery_scale_", dir=args.dir))
    server = None
    results = []
    started = time.perf_counter()
    try:
        for store in args.stores:
            for n in args.sizes:
                if store == "sqlite":
                    location = str(root / f"db_{n}")
                else:
                    if args.postgres_url is None and server is None:
                        sys.path.insert(0, str(ROOT / "tests"))
                        from postgres_server import start_server

                        server = start_server()
                    location = args.postgres_url or server.new_database()
                gallery = f"scale-{n}" if args.postgres_url else "default"  # a given database: one gallery a size
                row = {"store": store, "speakers": n, "load_before": round(os.getloadavg()[0], 2)}
                # a bulk write of 100 k speakers may pass the store's 15 s statement timeout on a busy machine: the
                # enrolment lifts it; the replica runs with the store's defaults
                loader = location if store == "sqlite" else with_option(location, "statement_timeout=0")
                row.update(enrol(loader, gallery, n, args.dim, args.seed))
                if store == "postgres" and args.settle:
                    row["settle_s"] = settle(loader)
                row.update(run_replica(location, gallery, n, args))
                if args.cold_starts > 1:
                    again = [run_replica(location, gallery, n, args, cold_only=True)
                             for _ in range(args.cold_starts - 1)]
                    row["cold_starts_s"] = [row["cold_start_s"]] + [r["cold_start_s"] for r in again]
                    row["memory_ratios"] = [row["memory_ratio"]] + [r["memory_ratio"] for r in again]
                    row["fresh_memory_touches_s"] = [row["fresh_memory_touch_s"]] + [
                        r["fresh_memory_touch_s"] for r in again]
                row["load_1min"] = round(os.getloadavg()[0], 2)
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if store == "sqlite":
                    shutil.rmtree(location, ignore_errors=True)
                elif args.postgres_url is None:
                    server.sql(f"DROP DATABASE {location.rsplit('/', 1)[1]}")
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "benchmark": "gallery_scale",
        "targets_at_1M": TARGETS,
        "results": results,
        "dim": args.dim,
        "probe_cos": args.probe_cos,
        "total_s": round(time.perf_counter() - started, 1),
        "machine": machine_info(["platform", "processor", "cpu_count", "cpus_usable", "load_average", "python",
                                 "numpy", "blas"]),
        "note": "a shared machine: compare rows by their ratios (search vs bare numpy scan in the same process)",
    }
    emit(report, indent=None)
    if args.table:
        print(table(results, []))


if __name__ == "__main__":
    main()
