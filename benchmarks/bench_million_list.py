"""Start-up at the field's scale: a 1,000,000-line training list, time to the first training step and peak memory.

A temp folder gets a few real WAVs (``mvector.data.synthetic.generate_corpus``) and one hard link per list line
(1000 links per sub-folder), and a ``path<TAB>label`` list over them with ``--speakers`` labels (VoxCeleb2 has
5994). Then ``MVectorTrainer`` (bundled ``ecapa_tdnn``, CPU, batch ``--batch_size``) is started in a fresh process
and timed from the launch to the end of its first ``train_step``; each process reports its peak resident memory
(``ru_maxrss``, DataLoader workers: none on the CPU). Four runs:

* ``single_cold``: one process, no cache: reads and checks the list, reads every header, writes the cache
  beside the list (``.train.txt.mvector-index.npz``);
* ``single_warm``: one process, the cache present;
* ``torchrun2_cold`` / ``torchrun2_warm``: ``torchrun --nproc_per_node=2`` (gloo): rank 0 reads and caches the
  list while rank 1 waits, then rank 1 loads the cache.

Targets (issue 22): first step in under 60 s and under 2 GB peak per rank.

    python benchmarks/bench_million_list.py                      # 1,000,000 lines (~5 min incl. the links)
    python benchmarks/bench_million_list.py --lines 20000        # quick look
    python benchmarks/bench_million_list.py --work /tmp/ml --keep  # reuse the links of an earlier run

Prints one JSON object; figures taken while other jobs share the CPU are provisional (see load_average).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, add_repo_to_path, machine_info  # noqa: E402

add_repo_to_path()

PER_FOLDER = 1000


def make_list(work: Path, lines: int, speakers: int) -> Path:
    """Write ``lines`` hard links to a few generated WAVs and the training list over them; returns the list."""
    from mvector.data.synthetic import generate_corpus

    listing = work / "train.txt"
    if listing.exists() and sum(1 for _ in open(listing, "rb")) == lines:
        return listing
    bases = [line.split("\t")[0] for line in generate_corpus(work / "base", 8, 4, seed=3).read_text().splitlines()]
    bases = [str(work / "base" / b) for b in bases]
    links = work / "links"
    with open(work / "train.tmp", "w", encoding="utf-8") as out:
        for i in range(lines):
            folder = links / f"{i // PER_FOLDER:04d}"
            if i % PER_FOLDER == 0:
                folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"u{i:07d}.wav"
            if not target.exists():
                os.link(bases[i % len(bases)], target)
            out.write(f"links/{i // PER_FOLDER:04d}/u{i:07d}.wav\t{i % speakers}\n")
    os.replace(work / "train.tmp", listing)
    return listing


def worker(args: argparse.Namespace) -> None:
    """One training process: set up the trainer, run one step, write the figures (one JSON file per rank)."""
    import resource

    import torch

    from mvector.training.trainer import MVectorTrainer, StepInfo
    from mvector.utils.threads import apply_thread_policy

    apply_thread_policy()
    overrides = {
        "dataset_conf.train_list": args.list,
        "dataset_conf.test_list": args.list,
        "dataset_conf.batch_size": str(args.batch_size),
        "train_conf.max_epoch": "1",
        "train_conf.log_backend": "none",
    }
    trainer = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides=overrides)
    marks = {}
    trainer.setup_data()
    marks["data_ready"] = time.time()
    trainer.setup_model()
    trainer.setup_optimizer()
    trainer.dataset.set_epoch(1)
    if trainer.sampler is not None:
        trainer.sampler.set_epoch(1)
    info = StepInfo(1, 1, trainer.steps_per_epoch)
    trainer.model.train()
    for batch in trainer.loader:
        trainer.train_step(batch, info)
        break
    marks["first_step"] = time.time()
    rank = trainer.ctx.rank
    record = {
        "rank": rank,
        "utterances": len(trainer.dataset),
        "threads": torch.get_num_threads(),
        "data_ready_s": round(marks["data_ready"] - args.t0, 2),
        "first_step_s": round(marks["first_step"] - args.t0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "table_mb": round(trainer.dataset.utterances.nbytes() / 2**20, 1),
    }
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(record))
    trainer.ctx.close()


def run(name: str, listing: Path, ranks: int, batch_size: int, timeout: float) -> dict:
    """Launch one run (a fresh process, or ``ranks`` under torchrun) and collect its per-rank figures."""
    out = Path(tempfile.mkdtemp(prefix=f"ml_{name}_"))
    t0 = time.time()
    script = [str(Path(__file__).resolve()), "--worker", "--list", str(listing), "--out", str(out)]
    script += ["--t0", repr(t0), "--batch_size", str(batch_size)]
    if ranks == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *script]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    records = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0 or len(records) != ranks:
        tail = (proc.stdout + proc.stderr)[-3000:]
        return {"name": name, "error": f"exit {proc.returncode}", "log_tail": tail}
    result = {
        "name": name,
        "ranks": ranks,
        "first_step_s": max(r["first_step_s"] for r in records),
        "peak_rss_mb_max_rank": max(r["peak_rss_mb"] for r in records),
        "wall_s": round(wall, 1),
        "per_rank": records,
    }
    print(
        f"{name:15s} first step {result['first_step_s']:7.1f} s   peak RSS {result['peak_rss_mb_max_rank']:7.0f} MB "
        f"per rank (max)   list ready {max(r['data_ready_s'] for r in records):6.1f} s",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--speakers", type=int, default=5994)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--work", default=None, help="folder for the links and the list (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--runs", nargs="+", default=["single_cold", "single_warm", "torchrun2_cold", "torchrun2_warm"])
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run at most")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--list", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="mvector_million_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.time()
        listing = make_list(work, args.lines, args.speakers)
        print(f"{args.lines} lines in {listing} ({time.time() - started:.0f} s to create)", flush=True)
        from mvector.data.header_cache import cache_paths

        results = []
        for name in args.runs:
            if name.endswith("_cold"):
                for cached in cache_paths(listing):
                    cached.unlink(missing_ok=True)
            ranks = 2 if name.startswith("torchrun2") else 1
            results.append(run(name, listing, ranks, args.batch_size, args.timeout))
        report = {
            "benchmark": "million_list",
            "lines": args.lines,
            "speakers": args.speakers,
            "batch_size": args.batch_size,
            "load_average": os.getloadavg(),
            "machine": machine_info(["cpu_count", "torch", "numpy", "python"]),
            "results": results,
        }
        print(json.dumps(report))
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
