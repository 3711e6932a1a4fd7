"""CUDA tests: featurizers and batched augmentation on the GPU equal the CPU and never synchronise the host, AMP
training steps (bf16, fp16) stay finite and learn, a one-process NCCL torchrun of two steps, and the export of a
GPU-trained model. Every test is skipped without CUDA; ``benchmarks/device_check.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mvector.audio.gpu_augment import GpuAugmenter
from mvector.features import SpecAugment, build_featurizer, masked_cmvn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROOT = Path(__file__).resolve().parents[1]
METHODS = [
    ("Spectrogram", {}),
    ("MelSpectrogram", {"n_mels": 80}),
    ("MFCC", {"n_mels": 64, "n_mfcc": 40}),
    ("Fbank", {"num_mel_bins": 80}),
    ("Fbank", {"num_mel_bins": 40, "snip_edges": False}),
]


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    t = np.arange(24000) / 16000.0
    rows = [0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(t.size) for f in (150.0, 220.0, 330.0, 440.0)]
    waves = torch.from_numpy(np.stack(rows).astype(np.float32))
    lengths = torch.tensor([24000, 20000, 9001, 4000])
    waves[2, 9001:] = 0.8  # batch padding garbage must not leak on either device
    return waves, lengths


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("method,conf", METHODS, ids=["spec", "mel", "mfcc", "fbank", "fbank-nosnip"])
def test_featurizers_on_gpu_equal_cpu(method: str, conf: dict, normalize: bool) -> None:
    waves, lengths = _batch()
    fz = build_featurizer(method, conf, normalize=normalize).eval()
    cpu, cpu_frames = fz(waves, lengths)
    gpu, gpu_frames = fz.cuda()(waves.cuda(), lengths.cuda())
    assert torch.equal(gpu_frames.cpu(), cpu_frames)
    # Both against exact float64 features: the GPU (cuFFT, dense mel product) errs no more than the CPU.
    exact = fz.cpu().double().compute(waves.double(), lengths)
    valid = (torch.arange(exact.shape[1])[None, :] < cpu_frames[:, None]).unsqueeze(-1)
    exact = masked_cmvn(exact, cpu_frames) if normalize else torch.where(valid, exact, 0.0)
    err_cpu = (cpu.double() - exact).abs().max().item()
    err_gpu = (gpu.cpu().double() - exact).abs().max().item()
    assert err_gpu <= 3.0 * err_cpu + 1e-4, (err_gpu, err_cpu)
    assert torch.all(gpu.cpu()[~valid.expand_as(gpu.cpu())] == 0)


def test_featurizer_specaugment_and_gpu_augmenter_never_sync_the_host() -> None:
    waves, lengths = _batch()
    waves, lengths = waves.cuda(), lengths.cuda()
    rir = np.r_[0.0, 1.0, np.zeros(200), 0.3].astype(np.float32)
    aug = GpuAugmenter(
        {"speed": {"prob": 1.0}, "reverb": {"prob": 0.5}, "noise": {"prob": 0.5}, "volume": {"prob": 0.5}},
        noise=[np.random.default_rng(0).standard_normal(5000).astype(np.float32)],
        rirs=[rir],
    ).cuda()
    fz = build_featurizer("Fbank", {"num_mel_bins": 80}).train().cuda()
    spec_aug = SpecAugment(prob=1.0).train()
    gen = torch.Generator(device="cuda").manual_seed(0)
    aug(waves, lengths, gen)  # warm-up: cuFFT plans, the reverb bank spectrum
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x, n = aug(waves, lengths, gen, out_samples=24000)
        feats, frames = fz(x, n)
        feats = spec_aug(feats, frames)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(feats).all()


def test_gpu_augmenter_equals_cpu_for_fixed_draws() -> None:
    rir = np.r_[0.2, 1.0, np.zeros(300), -0.4].astype(np.float32)
    conf = {
        "speed": {"prob": 1.0, "speeds": [1.1]},
        "reverb": {"prob": 1.0},
        "noise": {"prob": 0.0},
        "volume": {"prob": 1.0, "min_gain_db": 3.0, "max_gain_db": 3.0},
    }
    aug = GpuAugmenter(conf, rirs=[rir])
    waves, lengths = _batch(1)
    cpu, cpu_n = aug(waves, lengths, torch.Generator().manual_seed(0))
    gpu, gpu_n = aug.cuda()(waves.cuda(), lengths.cuda(), torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(gpu_n.cpu(), cpu_n)
    assert (gpu.cpu() - cpu).abs().max().item() < 1e-4


def _tiny_problem(device: str, seed: int = 0):
    from mvector.models import build_backbone, build_head

    torch.manual_seed(seed)
    backbone = build_backbone("EcapaTdnn", 80, channels=64).to(device)
    head = build_head("AAM", backbone.embd_dim, 8, margin=0.1, scale=16).to(device)
    labels = torch.arange(32, device=device) % 8
    feats = torch.randn(32, 150, 80, device=device) + labels[:, None, None].float() * 0.3  # separable classes
    return backbone, head, feats, labels


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_amp_training_steps_are_finite_and_learn(dtype: torch.dtype) -> None:
    backbone, head, feats, labels = _tiny_problem("cuda")
    lengths = torch.full((32,), 150, device="cuda")
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=dtype):
            loss, _ = head(backbone(feats, lengths), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert all(torch.isfinite(p).all() for p in params)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_trainer_train_step_never_syncs_the_host(tmp_path: Path) -> None:
    """A whole training step (featurizer, SpecAugment, bf16 forward/backward, optimiser, schedules, accounting)
    queues its work without waiting for the GPU: the loop can run ahead and overlap the data pipeline."""
    from mvector.data.synthetic import generate_corpus
    from mvector.training.trainer import MVectorTrainer, StepInfo

    lst = generate_corpus(tmp_path / "data", 4, 2, min_duration=1.0, max_duration=1.5)
    pairs = [line.split("\t") for line in lst.read_text().splitlines()]
    train = tmp_path / "train.txt"
    train.write_text("".join(f"{lst.parent / rel}\t{label}\n" for rel, label in pairs))
    overrides = {
        "dataset_conf.train_list": str(train),
        "dataset_conf.batch_size": "4",
        "dataset_conf.num_workers": "0",
        "model_conf.channels": "32",
        "train_conf.amp": "true",
        "train_conf.amp_dtype": "bfloat16",
        "train_conf.log_backend": "none",
    }
    trainer = MVectorTrainer("ecapa_tdnn", use_gpu=True, overrides=overrides)
    trainer.setup_data()
    trainer.setup_model()
    trainer.setup_optimizer()
    batch = next(iter(trainer.loader))
    info = StepInfo(1, 1, trainer.steps_per_epoch)
    trainer.train_step(batch, info)  # warm-up: cuDNN / cuFFT plans, optimiser state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_step(batch, info)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.check_finite(info)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gpu_trained_model(tmp_path_factory) -> Path:
    """Two NCCL training steps under a one-process torchrun of ``train.py``; returns the checkpoint folder."""
    from mvector.data.synthetic import generate_corpus

    tmp = tmp_path_factory.mktemp("torchrun")
    train = generate_corpus(tmp / "train", 4, 2, min_duration=1.0, max_duration=1.5, seed=0)
    test = generate_corpus(tmp / "test", 2, 2, min_duration=1.0, max_duration=1.5, seed=1)

    def absolute(lst: Path) -> Path:
        pairs = [line.split("\t") for line in lst.read_text().splitlines() if line]
        lines = [f"{lst.parent / rel}\t{label}" for rel, label in pairs]
        out = lst.with_name("abs.txt")
        out.write_text("\n".join(lines) + "\n")
        return out

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={_free_port()}",
        str(ROOT / "train.py"), "--configs", "ecapa_tdnn", "--use_gpu", "True",
        f"--dataset_conf.train_list={absolute(train)}", f"--dataset_conf.test_list={absolute(test)}",
        "--dataset_conf.batch_size=4", "--dataset_conf.max_duration=1.0", "--dataset_conf.num_workers=1",
        "--model_conf.channels=32", "--train_conf.max_epoch=1", "--train_conf.log_interval=1",
        "--train_conf.log_backend=none", "--save_model_path", str(tmp / "models"),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "step 2/2" in log, log[-4000:]
    found = sorted((tmp / "models").glob("*/last_model"))
    assert found, log[-2000:]
    return found[0]


def test_torchrun_nccl_one_process_two_steps(gpu_trained_model: Path) -> None:
    assert (gpu_trained_model / "model.pt").exists()
    state = json.loads((gpu_trained_model / "state.json").read_text())
    assert state["epoch"] == 1, state


def test_export_of_a_gpu_trained_model(gpu_trained_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from mvector.export import export_checkpoint
    from mvector.inference.predictor import MVectorPredictor

    formats = ["torchscript", "onnx"]
    out = export_checkpoint(gpu_trained_model, tmp_path / "export", formats=formats, example_seconds=1.0)
    wave = (0.1 * np.sin(np.arange(24000) * 0.05)).astype(np.float32)
    db = str(tmp_path / "db")
    ref = MVectorPredictor(gpu_trained_model, audio_db_path=db, use_gpu=True).embed(wave, 16000)
    for backend in ("torchscript", "onnx"):
        emb = MVectorPredictor(out, audio_db_path=db, backend=backend, use_gpu=False).embed(wave, 16000)
        cos = float(np.dot(emb, ref) / (np.linalg.norm(emb) * np.linalg.norm(ref)))
        assert cos > 0.999, (backend, cos)
