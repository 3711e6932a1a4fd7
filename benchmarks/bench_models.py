"""Benchmark the backbones: parameters, inference and training throughput, ECAPA-TDNN real-time factor, and
CAM++ beside ECAPA-TDNN on the same input (``campplus_vs_ecapa``; ``--no-campplus`` leaves it out).

Prints one JSON object. The baseline is a plain ECAPA-TDNN written directly from the paper inside this file
(no length masking, Res2Net slices through a split/loop/concatenate, attention input built by concatenating the
repeated utterance statistics), at the same size as ours, measured in the same run.

    python benchmarks/bench_models.py            # default (< 2 min on 2 cores)
    python benchmarks/bench_models.py --quick    # smoke run (< 20 s)

Numbers taken while other processes load the CPU are provisional; the JSON carries the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from common import add_repo_to_path, emit, machine_info, stats
from torch import nn

add_repo_to_path()

from mvector.models import build_backbone  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# Baseline: a straightforward ECAPA-TDNN, as commonly written (no masks, naive Res2Net loop, concatenated ASP input)


class PlainTdnnBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, d: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, dilation=d, padding=d * (k - 1) // 2)
        self.act = nn.ReLU()
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        return self.bn(self.act(self.conv(x)))


class PlainRes2(nn.Module):
    def __init__(self, c: int, k: int, d: int, scale: int = 8):
        super().__init__()
        self.scale = scale
        self.blocks = nn.ModuleList(PlainTdnnBlock(c // scale, c // scale, k, d) for _ in range(scale - 1))

    def forward(self, x):
        ys = []
        for i, xi in enumerate(torch.chunk(x, self.scale, dim=1)):
            if i == 0:
                yi = xi
            elif i == 1:
                yi = self.blocks[i - 1](xi)
            else:
                yi = self.blocks[i - 1](xi + yi)
            ys.append(yi)
        return torch.cat(ys, dim=1)


class PlainSE(nn.Module):
    def __init__(self, c: int, bottleneck: int = 128):
        super().__init__()
        self.conv1 = nn.Conv1d(c, bottleneck, 1)
        self.conv2 = nn.Conv1d(bottleneck, c, 1)

    def forward(self, x):
        s = x.mean(dim=2, keepdim=True)
        s = torch.sigmoid(self.conv2(torch.relu(self.conv1(s))))
        return s * x


class PlainSERes2Block(nn.Module):
    def __init__(self, c: int, d: int):
        super().__init__()
        self.tdnn1 = PlainTdnnBlock(c, c, 1)
        self.res2 = PlainRes2(c, 3, d)
        self.tdnn2 = PlainTdnnBlock(c, c, 1)
        self.se = PlainSE(c)

    def forward(self, x):
        return self.se(self.tdnn2(self.res2(self.tdnn1(x)))) + x


class PlainASP(nn.Module):
    def __init__(self, c: int, att: int = 128):
        super().__init__()
        self.tdnn = PlainTdnnBlock(3 * c, att, 1)
        self.conv = nn.Conv1d(att, c, 1)

    def forward(self, x):
        t = x.shape[-1]
        mean = x.mean(dim=2, keepdim=True)
        std = x.std(dim=2, keepdim=True, unbiased=False).clamp(min=1e-6)
        attn_in = torch.cat([x, mean.repeat(1, 1, t), std.repeat(1, 1, t)], dim=1)
        w = torch.softmax(self.conv(torch.tanh(self.tdnn(attn_in))), dim=2)
        mu = (w * x).sum(dim=2)
        sg = torch.sqrt(((w * x * x).sum(dim=2) - mu * mu).clamp(min=1e-6))
        return torch.cat([mu, sg], dim=1)


class PlainEcapa(nn.Module):
    def __init__(self, input_size: int = 80, c: int = 512, embd_dim: int = 192):
        super().__init__()
        self.embd_dim = embd_dim
        self.layer1 = PlainTdnnBlock(input_size, c, 5)
        self.layer2 = PlainSERes2Block(c, 2)
        self.layer3 = PlainSERes2Block(c, 3)
        self.layer4 = PlainSERes2Block(c, 4)
        self.mfa = PlainTdnnBlock(3 * c, 3 * c, 1)
        self.pool = PlainASP(3 * c)
        self.bn1 = nn.BatchNorm1d(6 * c)
        self.fc = nn.Linear(6 * c, embd_dim)
        self.bn2 = nn.BatchNorm1d(embd_dim)

    def forward(self, x, lengths=None):
        x = self.layer1(x.transpose(1, 2))
        x2 = self.layer2(x)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        x = self.mfa(torch.cat([x2, x3, x4], dim=1))
        return self.bn2(self.fc(self.bn1(self.pool(x))))


# ----------------------------------------------------------------------------------------------------------------


def summary(times: list[float], items: int) -> dict:
    return stats([items / t for t in times], digits=2)


class InferenceTimer:
    """Times ``model(x, lengths)`` under ``torch.inference_mode`` in eval mode (after one warm-up call)."""

    def __init__(self, model: nn.Module, batch: int, frames: int, feats: int):
        self.model = model.eval()
        self.x = torch.randn(batch, frames, feats)
        self.lengths = torch.full((batch,), frames, dtype=torch.int64)
        self.times: list[float] = []
        self.run()

    def run(self) -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            self.model(self.x, self.lengths)
            return time.perf_counter() - t0

    def measure(self) -> None:
        self.times.append(self.run())


class TrainTimer:
    """Times one training step: forward, cross-entropy on a linear head, backward, Adam (after warm-up steps)."""

    def __init__(self, model: nn.Module, batch: int, frames: int, feats: int, classes: int = 100, warmup: int = 2):
        self.model = model.train()
        self.head = nn.Linear(model.embd_dim, classes)
        self.opt = torch.optim.Adam(list(model.parameters()) + list(self.head.parameters()), lr=1e-4)
        self.x = torch.randn(batch, frames, feats)
        self.lengths = torch.full((batch,), frames, dtype=torch.int64)
        self.labels = torch.randint(0, classes, (batch,))
        self.times: list[float] = []
        for _ in range(warmup):
            self.run()

    def run(self) -> float:
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(self.head(self.model(self.x, self.lengths)), self.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0

    def measure(self) -> None:
        self.times.append(self.run())


def interleaved(timers: list, repeats: int) -> None:
    """Measure the timers in turn, ``repeats`` rounds, so a change in machine load hits all of them alike."""
    for _ in range(repeats):
        for timer in timers:
            timer.measure()


def real_time_factor(model: nn.Module, seconds: float, threads: int, repeats: int) -> dict:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        x = torch.randn(1, int(seconds * 100), 80)
        times = []
        with torch.inference_mode():
            model(x)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    rtf = [t / seconds for t in times]
    return {
        "threads": threads,
        "median": round(statistics.median(rtf), 5),
        "min": round(min(rtf), 5),
        "max": round(max(rtf), 5),
    }


def campplus_vs_ecapa(
    ecapa: nn.Module, batch: int, frames: int, feats: int, repeats: int, warmup: int, seconds: float, rtf_reps: int
) -> dict:
    """CAM++ at the released size (6.85 M parameters, 192-d) beside ECAPA-TDNN C=512 on the same input, timed in
    alternation; utterances per second (inference and training step) and single-utterance real-time factors."""
    torch.manual_seed(0)
    cam = build_backbone("CAMPPlus", feats)
    inf = [InferenceTimer(cam, batch, frames, feats), InferenceTimer(ecapa, batch, frames, feats)]
    inf[1].x, inf[1].lengths = inf[0].x, inf[0].lengths  # the very same input
    interleaved(inf, repeats)
    train = [
        TrainTimer(cam, batch, frames, feats, warmup=warmup),
        TrainTimer(ecapa, batch, frames, feats, warmup=warmup),
    ]
    train[1].x, train[1].lengths, train[1].labels = train[0].x, train[0].lengths, train[0].labels
    interleaved(train, repeats)
    out = {}
    for name, model, i in (("CAMPPlus", cam, 0), ("EcapaTdnn", ecapa, 1)):
        out[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "inference_utt_per_s": summary(inf[i].times, batch),
            "train_step_utt_per_s": summary(train[i].times, batch),
            "rtf_one_thread": real_time_factor(model, seconds, 1, rtf_reps),
            "rtf_all_threads": real_time_factor(model, seconds, torch.get_num_threads(), rtf_reps),
        }
    c, e = out["CAMPPlus"], out["EcapaTdnn"]
    out["campplus_over_ecapa"] = {
        "inference": round(c["inference_utt_per_s"]["median"] / e["inference_utt_per_s"]["median"], 3),
        "train_step": round(c["train_step_utt_per_s"]["median"] / e["train_step_utt_per_s"]["median"], 3),
        "rtf_one_thread": round(c["rtf_one_thread"]["median"] / e["rtf_one_thread"]["median"], 3),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 20 s): small batch, one repeat")
    parser.add_argument("--backbones", default="TDNN,Res2Net,ResNetSE", help="besides EcapaTdnn (always run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--no-campplus", action="store_true", help="leave out the CAM++ / ECAPA-TDNN comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    feats = 80
    batch, frames = (4, 100) if args.quick else (32, 200)
    repeats = 2 if args.quick else 3
    slow_repeats = 1 if args.quick else 2
    warmup = 1
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    result: dict = {
        "benchmark": "bench_models",
        "setup": f"batch {batch} x {frames} frames x {feats} features, float32, CPU",
        "machine": {
            **machine_info(["platform", "processor", "cpu_count", "torch_threads", "python", "torch", "numpy"]),
            "loadavg_before": [round(v, 2) for v in load_before],
        },
        "backbones": {},
    }
    names = [n for n in args.backbones.split(",") if n]
    for name in names:
        if name == "EcapaTdnn":
            continue
        model = build_backbone(name, feats)
        reps = repeats if name == "TDNN" else slow_repeats
        inf = InferenceTimer(model, batch, frames, feats)
        interleaved([inf], reps)
        train = TrainTimer(model, batch, frames, feats, warmup=warmup)
        interleaved([train], reps)
        result["backbones"][name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "inference_utt_per_s": summary(inf.times, batch),
            "train_step_utt_per_s": summary(train.times, batch),
        }

    # Ours and the plain baseline, measured in alternation.
    torch.manual_seed(0)
    ecapa = build_backbone("EcapaTdnn", feats)
    baseline = PlainEcapa(feats)
    timers = [InferenceTimer(ecapa, batch, frames, feats), InferenceTimer(baseline, batch, frames, feats)]
    interleaved(timers, repeats)
    train_timers = [
        TrainTimer(ecapa, batch, frames, feats, warmup=warmup),
        TrainTimer(baseline, batch, frames, feats, warmup=warmup),
    ]
    interleaved(train_timers, repeats)
    ours = {
        "parameters": sum(p.numel() for p in ecapa.parameters()),
        "inference_utt_per_s": summary(timers[0].times, batch),
        "train_step_utt_per_s": summary(train_timers[0].times, batch),
    }
    base = {
        "parameters": sum(p.numel() for p in baseline.parameters()),
        "inference_utt_per_s": summary(timers[1].times, batch),
        "train_step_utt_per_s": summary(train_timers[1].times, batch),
    }
    result["backbones"] = {"EcapaTdnn": ours, **result["backbones"]}
    result["baseline_plain_ecapa_tdnn"] = base
    result["ecapa_vs_baseline"] = {
        "inference_speedup": round(ours["inference_utt_per_s"]["median"] / base["inference_utt_per_s"]["median"], 3),
        "train_step_speedup": round(ours["train_step_utt_per_s"]["median"] / base["train_step_utt_per_s"]["median"], 3),
    }
    seconds = 2.0 if args.quick else 10.0
    rtf_reps = 3 if args.quick else 5
    result["ecapa_rtf_single_utterance"] = {
        "clip_seconds": seconds,
        "one_thread": real_time_factor(ecapa, seconds, 1, rtf_reps),
        "all_threads": real_time_factor(ecapa, seconds, torch.get_num_threads(), rtf_reps),
        "baseline_one_thread": real_time_factor(baseline, seconds, 1, rtf_reps),
        "baseline_all_threads": real_time_factor(baseline, seconds, torch.get_num_threads(), rtf_reps),
    }
    if not args.no_campplus:
        result["campplus_vs_ecapa"] = campplus_vs_ecapa(ecapa, batch, frames, feats, repeats, warmup, seconds, rtf_reps)
    result["reference_2core_ecapa_c512_batch32x200x80"] = {
        "fastest_known_inference_utt_per_s": 54,
        "fastest_known_train_utt_per_s": 19,
        "speechbrain_inference_utt_per_s": 31,
        "speechbrain_train_utt_per_s": 14,
    }
    load_after = os.getloadavg()
    result["machine"]["loadavg_after"] = [round(v, 2) for v in load_after]
    # Other processes on the cores make multi-threaded timings noisy (threads wait for each other).
    result["provisional"] = bool(max(load_before[0], load_after[0]) > 0.5)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    emit(result, indent=1)


if __name__ == "__main__":
    main()
