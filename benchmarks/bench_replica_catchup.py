"""What the store seam costs a search: exact search over N speakers from the SQLite folder and from PostgreSQL,
and a search right after another handle (another replica) wrote, measured in the same run (issue 27).

Every search first asks the store for the gallery's version (one indexed row) and, when it moved, fetches only
the rows changed since; this prints the p50 / p99 of a plain search, of a search that must catch up with one
enrolment made elsewhere, the bulk enrolment and the cold load of a fresh handle, for both stores, with the load
average (the figures move a lot on a shared machine: compare the two stores within one run).

    python benchmarks/bench_replica_catchup.py        # starts a throwaway PostgreSQL (tests/postgres_server.py)
    python benchmarks/bench_replica_catchup.py --postgres postgresql://user:pw@host/db --speakers 100000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mvector.inference.speaker_db import SpeakerDatabase


def measure(location: str, emb: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """Bulk enrolment, cold load, search p50/p99, and search-after-another-handle's-write p50 (ms) at ``location``."""
    dim = emb.shape[1]
    with SpeakerDatabase(location, "bench", dim) as writer:
        started = time.perf_counter()
        writer.add_many({f"s{i}": emb[i] for i in range(len(emb))})
        enrol = time.perf_counter() - started
    with SpeakerDatabase(location, "bench", dim) as reader, SpeakerDatabase(location, "bench", dim) as other:
        started = time.perf_counter()
        len(reader)  # loads the matrix
        cold = time.perf_counter() - started
        plain = []
        for q in queries:
            started = time.perf_counter()
            reader.search(q)
            plain.append(time.perf_counter() - started)
        after = []
        for i, q in enumerate(queries[:50]):
            other.add(f"new{i}", q)
            started = time.perf_counter()
            assert reader.search(q)[0][0][0] == f"new{i}"
            after.append(time.perf_counter() - started)
    return {
        "enrol_s": round(enrol, 3),
        "cold_load_s": round(cold, 3),
        "search_p50_ms": round(float(np.percentile(plain, 50)) * 1e3, 3),
        "search_p99_ms": round(float(np.percentile(plain, 99)) * 1e3, 3),
        "search_after_other_write_p50_ms": round(float(np.percentile(after, 50)) * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--postgres", default=None, help="an empty database's URL (default: a throwaway server)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.speakers, args.dim)).astype(np.float32)
    queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    server = None
    url = args.postgres
    if url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from postgres_server import start_server

        server = start_server()
        url = server.new_database()
    try:
        out = {
            "speakers": args.speakers,
            "dim": args.dim,
            "queries": args.queries,
            "load_average_1min": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
            "sqlite": measure(str(Path(tempfile.mkdtemp()) / "db"), emb, queries),
            "postgres": measure(url, emb, queries),
        }
        out["postgres_over_sqlite_search_p50"] = round(
            out["postgres"]["search_p50_ms"] / out["sqlite"]["search_p50_ms"], 2
        )
        print(json.dumps(out))
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
