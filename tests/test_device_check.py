"""The GPU check (benchmarks/device_check.sh + device_check.py) parses, plans and runs its steps on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"
PY_SCRIPT = ROOT / "benchmarks" / "device_check.py"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _env(out: Path) -> dict:
    return dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1")


def test_shell_script_parses_and_prints_usage() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    usage = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "--prepare-wheels" in usage.stdout and "carry" in usage.stdout


def test_dry_run_plans_every_step_and_checks_imports(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "device_check.json").read_text())
    plan = report["plan"]
    assert report["dry_run"] is True and report["results"] == {}
    assert [s["name"] for s in plan["steps"]] == ["env", "tests", "models", "features", "corpus", "e2e", "trainer"]
    assert sum(s["needs_s"] for s in plan["steps"]) < plan["budget_s"] <= 360
    assert all(v == "ok" for v in plan["imports"].values()), plan["imports"]
    # The real sizes: the full ECAPA-TDNN and CAM++, batch 128, 3 s crops, on CUDA.
    assert plan["sizes"]["device"] == "cuda" and plan["sizes"]["e2e_channels"] == 512
    assert [m[0] for m in plan["sizes"]["models"]] == ["EcapaTdnn", "CAMPPlus"]
    assert (tmp_path / "device_check.log").read_text().startswith("device_check: mode=dry")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_real_run_without_cuda_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(PY_SCRIPT), "--out", str(tmp_path), "--skip", "tests"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


@pytest.mark.slow
def test_smoke_run_writes_every_figure_as_json(tmp_path: Path) -> None:
    cmd = [sys.executable, str(PY_SCRIPT), "--out", str(tmp_path), "--smoke", "--skip", "tests", "trainer", "models"]
    proc = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "device_check.json").read_text())["results"]
    assert set(results) == {"env", "features", "corpus", "e2e"}
    assert results["env"]["torch"] == torch.__version__
    assert results["corpus"]["files"] == 8
    assert set(results["features"]["figure"]) == {"MelSpectrogram/cpu_ratio_vs_stft_mel", "Fbank/cpu_ratio_vs_stft_mel"}
    runs = results["e2e"]["runs"]
    assert [r["mode"] for r in runs] == ["compute_only", "gpu_aug", "cpu_aug"]
    assert all(r["samples_per_s"] > 0 and 0 <= r["data_wait_share"] <= 1 for r in runs)
    assert all("ratio_to_compute_only" in r for r in runs[1:])


def test_model_throughput_step_on_a_tiny_model() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from device_check import _time_model
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        row = _time_model("EcapaTdnn", {"channels": 16}, "cpu", 2, 40, 1, False)
    finally:
        torch.set_num_threads(threads)
    assert row["train_samples_per_s"] > 0 and row["inference_samples_per_s"] > 0 and row["parameters_m"] > 0
