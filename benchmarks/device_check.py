"""The GPU check behind ``benchmarks/device_check.sh``: CUDA tests, then CUDA benchmarks, every figure as JSON.

Steps (each with its own time limit; the whole run is planned for under 6 minutes on one H100):

1. ``env``      - GPU, driver, torch / CUDA versions, CPU count;
2. ``tests``    - ``pytest tests/test_cuda.py`` (featurizers on GPU = CPU, no host syncs, bf16/fp16 AMP steps
   finite and learning, one-process NCCL torchrun of two training steps, export of the GPU-trained model);
3. ``models``   - training-step and inference throughput of ECAPA-TDNN C=512 and CAM++ in bf16 (batch 128 x
   300 frames x 80 Fbank, AAM head over 1,000 speakers, AdamW);
4. ``features`` - ``bench_features.py --device cuda`` (featurizer throughput against the plain-torch baseline);
5. ``corpus``   - a synthetic corpus on local disk (WAV files, plus noise and impulse-response folders);
6. ``e2e``      - end-to-end training throughput from those files: ECAPA-TDNN C=512, bf16, batch 128, 3 s crops,
   80-bin Fbank, SpecAugment, augmentation on (speed, reverb, noise, volume) either on the GPU
   (:class:`~mvector.audio.gpu_augment.GpuAugmenter`: workers only decode and crop) or in the workers (the CPU
   augmenter), with N loader workers; plus the compute-only ceiling (the same batches preloaded on the GPU and
   replayed) and each run's ratio to it, and the share of wall time the loop waited for data;
7. ``trainer``  - ``bench_train.py --device cuda --steps 4`` (the real ``MVectorTrainer`` loop vs its compute-only
   ceiling, C=512, bf16, batch 128), if time is left.

Results go to ``OUT/device_check.json`` after every step (a run cut short keeps what it measured), logs to
``OUT/device_check.log`` and ``OUT/cuda_tests.log``. ``--dry-run`` only plans (prints the steps, checks every
import) and ``--smoke`` runs every step on the CPU at toy sizes in seconds (what the test suite does).

    python benchmarks/device_check.py --out /tmp/out --dry-run
    python benchmarks/device_check.py --out /tmp/out --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

STEPS = ("env", "tests", "models", "features", "corpus", "e2e", "trainer")
#: Seconds each step may take on the GPU machine (a step is skipped when less than its need is left).
LIMITS = {"env": 20, "tests": 150, "models": 60, "features": 40, "corpus": 40, "e2e": 120, "trainer": 90}
NEEDS = {"env": 1, "tests": 60, "models": 30, "features": 15, "corpus": 10, "e2e": 40, "trainer": 60}


# ------------------------------------------------------------------------------------------------- sizes
def sizes(smoke: bool) -> dict[str, Any]:
    """Workload sizes: the real ones, or toy ones for the CPU smoke run."""
    if smoke:
        return {
            "device": "cpu",
            "amp": False,  # bf16 autocast on a CPU is slow; the smoke run checks code paths, not speed
            "model_batch": 2,
            "model_frames": 50,
            "model_steps": 1,
            "models": [("EcapaTdnn", {"channels": 32}), ("CAMPPlus", {})],
            "speakers": 4,
            "utts": 2,
            "noise_files": 2,
            "rir_files": 2,
            "e2e_batch": 4,
            "e2e_channels": 32,
            "e2e_warmup": 1,
            "e2e_steps": 2,
            "e2e_runs": [("gpu_aug", 0), ("cpu_aug", 0)],
            "crop_seconds": 1.0,
        }
    cpus = os.cpu_count() or 16
    return {
        "device": "cuda",
        "amp": True,
        "model_batch": 128,
        "model_frames": 300,
        "model_steps": 20,
        "models": [("EcapaTdnn", {"channels": 512}), ("CAMPPlus", {})],
        "speakers": 64,
        "utts": 8,
        "noise_files": 16,
        "rir_files": 16,
        "e2e_batch": 128,
        "e2e_channels": 512,
        "e2e_warmup": 6,
        "e2e_steps": 30,
        "e2e_runs": [("gpu_aug", min(8, cpus - 1)), ("gpu_aug", cpus - 1), ("cpu_aug", cpus - 1)],
        "crop_seconds": 3.0,
    }


# ------------------------------------------------------------------------------------------------ steps
def step_env(ctx: dict) -> dict:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    for name in ("soundfile", "soxr", "onnxruntime", "yaml", "sklearn", "scipy"):
        try:
            module = __import__(name)
            info[f"{name}_version"] = getattr(module, "__version__", "present")
        except ImportError:
            info[f"{name}_version"] = None
    return info


def step_tests(ctx: dict) -> dict:
    log = Path(ctx["out"]) / "cuda_tests.log"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(ROOT / "tests" / "test_cuda.py")]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=ctx["limit"])
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        text, code = f"{err.stdout or ''}{err.stderr or ''}\nTIMEOUT after {ctx['limit']} s", 124
    log.write_text(text if isinstance(text, str) else text.decode(errors="replace"))
    summary = [line for line in str(text).splitlines() if " passed" in line or " failed" in line or " skipped" in line]
    seconds = round(time.perf_counter() - start, 1)
    return {"returncode": code, "summary": summary[-1] if summary else None, "seconds": seconds}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _time_model(name: str, conf: dict, device: str, batch: int, frames: int, steps: int, amp: bool) -> dict:
    """bf16 training-step and inference throughput of one backbone with an AAM head over 1,000 speakers."""
    import torch

    from mvector.models import build_backbone, build_head

    backbone = build_backbone(name, 80, **conf).to(device)
    head = build_head("AAM", backbone.embd_dim, 1000).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, fused=device == "cuda")
    feats = torch.randn(batch, frames, 80, device=device)
    lengths = torch.full((batch,), frames, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def train_step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss, _ = head(backbone(feats, lengths), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.inference_mode()
    def infer_step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            backbone(feats, lengths)

    row: dict[str, Any] = {"parameters_m": round(sum(p.numel() for p in backbone.parameters()) / 1e6, 2)}
    for label, fn in (("train", train_step), ("inference", infer_step)):
        backbone.train(label == "train")
        for _ in range(3):
            fn()
        _sync(device)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        times.sort()
        row[f"{label}_samples_per_s"] = round(batch / times[len(times) // 2], 1)
        row[f"{label}_step_ms_median"] = round(1000 * times[len(times) // 2], 2)
    if device == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    return row


def step_models(ctx: dict) -> dict:
    import torch

    s = ctx["sizes"]
    device = s["device"]
    torch.backends.cudnn.benchmark = device == "cuda"
    batch, frames = s["model_batch"], s["model_frames"]
    results: dict[str, Any] = {}
    for name, conf in s["models"]:
        try:
            results[name] = _time_model(name, conf, device, batch, frames, s["model_steps"], s["amp"])
        except Exception as err:  # noqa: BLE001 - a backbone that does not exist yet is reported, not fatal
            results[name] = {"error": f"{type(err).__name__}: {err}"}
    workload = f"bf16 autocast, batch {batch} x {frames} frames x 80, AAM head 1000 speakers, AdamW"
    return {"workload": workload, **results}


def step_features(ctx: dict) -> dict:
    from bench_features import main as features_main

    device = ctx["sizes"]["device"]
    argv = ["--device", device, "--quick"]
    if ctx["smoke"]:
        argv += ["--batch", "2", "--seconds", "0.5", "--rounds", "1"]
    report = features_main(argv)
    return {"figure": report["figure"], "results": report["results"]}


def _noise_file(args: tuple[str, int, int]) -> None:
    from mvector.audio import save_wav

    path, seed, samples = args
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(samples)
    colored = np.cumsum(white) * 0.02 + white  # some low-frequency weight, like real noise
    colored -= colored.mean()
    save_wav(path, (0.3 * colored / np.abs(colored).max()).astype(np.float32), 16000)


def _rir_file(args: tuple[str, int]) -> None:
    from mvector.audio import save_wav

    path, seed = args
    rng = np.random.default_rng(seed)
    n = 4000
    decay = np.exp(-np.arange(n) / (200 + 100 * seed % 7))
    rir = rng.standard_normal(n) * decay * 0.3
    rir[40] = 1.0  # direct path
    save_wav(path, rir.astype(np.float32), 16000)


def _corpus_part(args: tuple[str, int, int, int, float]) -> list[str]:
    from mvector.data.synthetic import generate_corpus

    folder, seed, speakers, utts, max_dur = args
    lst = generate_corpus(folder, speakers, utts, min_duration=max_dur, max_duration=max_dur + 0.5, seed=seed)
    pairs = (line.split("\t") for line in lst.read_text().splitlines())
    return [f"{Path(folder) / rel}\t{label}" for rel, label in pairs]


def step_corpus(ctx: dict) -> dict:
    s = ctx["sizes"]
    root = Path(ctx["work"]) / "corpus"
    (root / "noise").mkdir(parents=True, exist_ok=True)
    (root / "rir").mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(16, (os.cpu_count() or 2)))
    parts = max(1, min(jobs, s["speakers"] // 2))
    per = s["speakers"] // parts
    min_dur = s["crop_seconds"] * 1.1 + 0.1
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs) as pool:
        tasks = [(str(root / f"part{i}"), 100 + i, per, s["utts"], min_dur) for i in range(parts)]
        lines: list[str] = []
        for offset, part in enumerate(pool.map(_corpus_part, tasks)):
            lines += [f"{p}\t{int(label) + offset * per}" for p, label in (x.split("\t") for x in part)]
        noise = [(str(root / "noise" / f"n{i}.wav"), i, 16000 * 5) for i in range(s["noise_files"])]
        list(pool.map(_noise_file, noise))
        list(pool.map(_rir_file, [(str(root / "rir" / f"r{i}.wav"), i) for i in range(s["rir_files"])]))
    size = sum(p.stat().st_size for p in root.rglob("*.wav"))
    ctx["corpus"] = {
        "lines": lines,
        "speakers": parts * per,
        "noise_dir": str(root / "noise"),
        "rir_dir": str(root / "rir"),
    }
    return {
        "files": len(lines),
        "speakers": parts * per,
        "megabytes": round(size / 1e6, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "folder": "local disk (temp folder)",
    }


def augmentation_conf(noise_dir: str, rir_dir: str) -> dict:
    """The bundled augmentation probabilities (speed, reverb, noise, volume) pointing at the given folders."""
    return {
        "speed": {"prob": 0.5, "speeds": [0.9, 1.0, 1.1]},
        "volume": {"prob": 0.3, "min_gain_db": -6.0, "max_gain_db": 6.0},
        "noise": {"prob": 0.3, "noise_dir": noise_dir, "min_snr_db": 5.0, "max_snr_db": 20.0},
        "reverb": {"prob": 0.2, "rir_dir": rir_dir},
        "shift": {"prob": 0.0},
    }


def e2e_run(ctx: dict, mode: str, workers: int, replay: bool = False) -> dict:
    """One end-to-end training run; ``mode`` is ``gpu_aug`` or ``cpu_aug``; ``replay`` times the ceiling."""
    import torch
    from torch.utils.data import DataLoader

    from mvector.audio.augment import build_augmenter
    from mvector.audio.gpu_augment import GpuAugmenter
    from mvector.data.dataset import TrainDataset, collate_batch
    from mvector.data.lists import Utterance
    from mvector.features import SpecAugment, build_featurizer
    from mvector.models import build_backbone, build_head

    s, corpus = ctx["sizes"], ctx["corpus"]
    device = s["device"]
    crop = s["crop_seconds"]
    conf = augmentation_conf(corpus["noise_dir"], corpus["rir_dir"])
    gpu_aug = GpuAugmenter.from_config(conf, 16000).to(device) if mode == "gpu_aug" else None
    cpu_aug = build_augmenter(conf) if mode == "cpu_aug" else None
    lines = corpus["lines"]
    total_steps = s["e2e_warmup"] + s["e2e_steps"]
    repeat = math.ceil(total_steps * s["e2e_batch"] / len(lines)) + 1
    utts = [Utterance(p, int(label)) for p, label in (x.split("\t") for x in lines)] * repeat
    # GPU augmentation: workers crop max_speed x longer so sped-up clips still fill the crop.
    max_dur = crop * (gpu_aug.max_speed if gpu_aug is not None else 1.0)
    dataset = TrainDataset(utts, 16000, max_duration=max_dur, min_duration=0.0, augmenter=cpu_aug, seed=0)
    loader = DataLoader(
        dataset,
        batch_size=s["e2e_batch"],
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_batch,
        pin_memory=device == "cuda",
        drop_last=True,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(0),
    )
    torch.manual_seed(0)
    featurizer = build_featurizer("Fbank", {"num_mel_bins": 80}).train().to(device)
    spec_aug = SpecAugment(prob=0.5).train()
    backbone = build_backbone("EcapaTdnn", 80, channels=s["e2e_channels"]).to(device)
    head = build_head("AAM", backbone.embd_dim, corpus["speakers"]).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, fused=device == "cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    out_samples = int(crop * 16000)

    def step(batch) -> None:
        waves = batch.waveforms.to(device, non_blocking=True)
        lengths = batch.lengths.to(device, non_blocking=True)
        labels = batch.labels.to(device, non_blocking=True)
        with torch.no_grad():
            if gpu_aug is not None:
                waves, lengths = gpu_aug(waves, lengths, gen, out_samples=out_samples)
            feats, frames = featurizer(waves, lengths)
            feats = spec_aug(feats, frames)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=s["amp"]):
            loss, _ = head(backbone(feats, frames), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    wait = 0.0
    t_first = time.perf_counter()
    it = iter(loader)
    if replay:
        batches = [next(it) for _ in range(min(4, total_steps))]
        batches = [b.to(device, non_blocking=True) if hasattr(b, "to") else b for b in batches]
        source = (batches[i % len(batches)] for i in range(total_steps))
    else:
        source = it
    samples = 0
    start = None
    for i in range(total_steps):
        if i == s["e2e_warmup"]:
            _sync(device)
            start, wait, samples = time.perf_counter(), 0.0, 0
        t0 = time.perf_counter()
        batch = next(source)
        wait += time.perf_counter() - t0
        step(batch)
        samples += int(batch.labels.shape[0])
    _sync(device)
    elapsed = time.perf_counter() - (start or t_first)
    del it
    return {
        "mode": mode if not replay else "compute_only",
        "workers": workers if not replay else None,
        "samples_per_s": round(samples / elapsed, 1),
        "data_wait_share": round(wait / elapsed, 4),
        "timed_steps": s["e2e_steps"],
        "seconds": round(elapsed, 2),
        "startup_seconds": round((start or t_first) - t_first, 1),
    }


def step_e2e(ctx: dict) -> dict:
    s = ctx["sizes"]
    runs = [e2e_run(ctx, "gpu_aug", 0, replay=True)]
    ceiling = runs[0]["samples_per_s"]
    for mode, workers in s["e2e_runs"]:
        if time.monotonic() > ctx["deadline"] - 15:
            runs.append({"mode": mode, "workers": workers, "skipped": "time budget"})
            continue
        row = e2e_run(ctx, mode, workers)
        row["ratio_to_compute_only"] = round(row["samples_per_s"] / ceiling, 3)
        runs.append(row)
    return {
        "workload": (
            f"ECAPA-TDNN C={s['e2e_channels']}, bf16 autocast, batch {s['e2e_batch']}, {s['crop_seconds']:g} s crops, "
            "80-bin Fbank + SpecAugment on the device, augmentation speed/reverb/noise/volume (bundled probabilities)"
        ),
        "goal": ">= 2,000 samples/s on one H100 with < 5 % of step time waiting for data",
        "compute_only_samples_per_s": ceiling,
        "runs": runs,
    }


def step_trainer(ctx: dict) -> dict:
    cmd = [sys.executable, str(HERE / "bench_train.py"), "--device", ctx["sizes"]["device"]]
    # The real trainer loop at full size on CUDA (C=512, bf16, batch 128), 4 steps x 2 epochs; toy sizes otherwise.
    cmd += ["--quick"] if ctx["smoke"] else ["--steps", "4", "--epochs", "2", "--timeout", str(int(ctx["limit"]))]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=ctx["limit"])
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {ctx['limit']} s"}
    (Path(ctx["out"]) / "bench_train.log").write_text(proc.stdout + proc.stderr)
    try:
        start = proc.stdout.index("{")
        return json.loads(proc.stdout[start:])
    except ValueError:
        return {"error": f"exit {proc.returncode}", "tail": (proc.stdout + proc.stderr)[-1500:]}


RUNNERS: dict[str, Callable[[dict], dict]] = {
    "env": step_env,
    "tests": step_tests,
    "models": step_models,
    "features": step_features,
    "corpus": step_corpus,
    "e2e": step_e2e,
    "trainer": step_trainer,
}


# -------------------------------------------------------------------------------------------------- main
def plan(args: argparse.Namespace) -> dict:
    """The steps that would run, their limits, and whether everything they import is importable."""
    imports = {}
    for module in (
        "torch",
        "mvector.features",
        "mvector.audio.gpu_augment",
        "mvector.audio.augment",
        "mvector.data.dataset",
        "mvector.data.synthetic",
        "mvector.models",
        "bench_features",
        "soundfile",
        "soxr",
        "pytest",
    ):
        try:
            __import__(module)
            imports[module] = "ok"
        except Exception as err:  # noqa: BLE001 - a plan reports every problem at once
            imports[module] = f"{type(err).__name__}: {err}"
    steps = [s for s in STEPS if s not in args.skip]
    return {
        "steps": [{"name": s, "limit_s": LIMITS[s], "needs_s": NEEDS[s]} for s in steps],
        "budget_s": args.budget,
        "imports": imports,
        "sizes": sizes(args.smoke),
        "out": str(args.out),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device_out")), help="results folder")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for the whole run")
    parser.add_argument("--dry-run", action="store_true", help="only plan and check imports")
    parser.add_argument("--smoke", action="store_true", help="every step on the CPU at toy sizes")
    parser.add_argument("--skip", nargs="*", default=[], choices=STEPS, help="steps to leave out")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "device_check.json"
    the_plan = plan(args)
    report: dict[str, Any] = {"plan": the_plan, "dry_run": args.dry_run, "smoke": args.smoke, "results": {}}
    if args.dry_run:
        result_path.write_text(json.dumps(report, indent=2))
        print(json.dumps(the_plan, indent=2))
        return 0 if all(v == "ok" for v in the_plan["imports"].values()) else 1
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("device_check: no CUDA device; use --smoke for a CPU run", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)  # toy sizes: one thread is faster and immune to a busy machine's stalls
    start = time.monotonic()
    ctx: dict[str, Any] = {
        "out": str(args.out),
        "smoke": args.smoke,
        "sizes": sizes(args.smoke),
        "deadline": start + args.budget,
    }
    failures = 0
    with tempfile.TemporaryDirectory(prefix="mvector-device-check-") as work:
        ctx["work"] = work
        for step in [s for s in STEPS if s not in args.skip]:
            left = ctx["deadline"] - time.monotonic()
            if step == "e2e" and "corpus" not in ctx:
                report["results"][step] = {"skipped": "no corpus"}
                continue
            if left < NEEDS[step] and not args.smoke:
                report["results"][step] = {"skipped": f"time budget ({left:.0f} s left)"}
                continue
            ctx["limit"] = max(5, min(LIMITS[step], left))
            t0 = time.monotonic()
            print(f"[device_check] {step} ...", flush=True)
            try:
                report["results"][step] = RUNNERS[step](ctx)
            except Exception as err:  # noqa: BLE001 - one broken step must not cost the others' figures
                failures += 1
                error = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
                report["results"][step] = error
            report["results"][step]["step_seconds"] = round(time.monotonic() - t0, 1)
            report["elapsed_s"] = round(time.monotonic() - start, 1)
            result_path.write_text(json.dumps(report, indent=2))
            print(json.dumps({step: report["results"][step]}, indent=2)[:4000], flush=True)
    tests = report["results"].get("tests", {})
    if tests.get("returncode") not in (None, 0, 5):
        failures += 1
    print(f"[device_check] done in {time.monotonic() - start:.0f} s, {failures} failed step(s); {result_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
