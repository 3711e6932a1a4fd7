"""The non-interactive command-line scripts: infer_contrast.py, infer_recognition.py, export_model.py.

Run as real subprocesses with no standard input, as CI and shell scripts use them; ``--json`` output parsed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mvector.audio import save_wav
from mvector.data.synthetic import make_voices, synthesize_utterance
from mvector.demo import tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
SR = 16000


def run(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scripts")
    model = tiny_checkpoint(root / "model", threshold=0.9)
    voices = make_voices(2, seed=3)
    files = {}
    for v in range(2):
        for k in range(2):
            wave = synthesize_utterance(voices[v], 1.0, SR, rng=np.random.default_rng(10 * v + k))
            path = root / f"v{v}_{k}.wav"
            save_wav(path, wave, SR)
            files[(v, k)] = path
    return {"root": root, "model": model, "files": files}


def test_contrast_json_same_file_is_the_same_speaker(setup):
    f = setup["files"]
    proc = run(
        str(REPO / "infer_contrast.py"),
        "--audio_path1", str(f[(0, 0)]),
        "--audio_path2", str(f[(0, 0)]),
        "--model_path", str(setup["model"]),
        "--json",
        cwd=setup["root"],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (result,) = json_lines(proc.stdout)
    assert result["same"] is True and result["score"] == pytest.approx(1.0, abs=1e-5)


def test_contrast_threshold_flag_decides_the_verdict(setup):
    f = setup["files"]
    args = [str(REPO / "infer_contrast.py"), "--audio_path1", str(f[(0, 0)]), "--audio_path2", str(f[(1, 0)])]
    args += ["--model_path", str(setup["model"]), "--json"]
    low = json_lines(run(*args, "--threshold", "-1", cwd=setup["root"]).stdout)[0]
    high = json_lines(run(*args, "--threshold", "1.01", cwd=setup["root"]).stdout)[0]
    assert low["same"] is True and high["same"] is False
    assert low["score"] == pytest.approx(high["score"])


def test_contrast_errors_are_one_line_and_nonzero(setup, tmp_path):
    proc = run(
        str(REPO / "infer_contrast.py"),
        "--audio_path1", str(tmp_path / "missing.wav"),
        "--audio_path2", str(setup["files"][(0, 0)]),
        "--model_path", str(setup["model"]),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "missing.wav" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(
        str(REPO / "infer_contrast.py"),
        "--audio_path1", str(setup["files"][(0, 0)]),
        "--audio_path2", str(setup["files"][(0, 1)]),
        "--model_path", str(tmp_path / "no_model"),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "no_model" in proc.stderr and "Traceback" not in proc.stderr


def test_recognition_register_recognize_list_remove(setup, tmp_path):
    f = setup["files"]
    base = [str(REPO / "infer_recognition.py"), "--model_path", str(setup["model"]), "--audio_db_path", str(tmp_path)]
    proc = run(*base, "--recognize", str(f[(0, 0)]), "--json", cwd=tmp_path)
    assert proc.returncode != 0 and "no speakers" in proc.stderr.lower() and "Traceback" not in proc.stderr
    assert run(*base, "--register", "alice", str(f[(0, 0)]), cwd=tmp_path).returncode == 0
    assert run(*base, "--register", "bob", str(f[(1, 0)]), cwd=tmp_path).returncode == 0
    proc = run(*base, "--recognize", str(f[(0, 0)]), str(f[(1, 0)]), "--json", "--threshold", "0.99", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = json_lines(proc.stdout)
    assert [line["name"] for line in lines] == ["alice", "bob"]
    assert {"file", "name", "score"} <= set(lines[0])
    assert lines[0]["file"].endswith("v0_0.wav") and lines[0]["score"] == pytest.approx(1.0, abs=1e-4)
    listed = json_lines(run(*base, "--list", "--json", cwd=tmp_path).stdout)[0]
    assert sorted(listed["speakers"]) == ["alice", "bob"]
    assert run(*base, "--remove", "alice", cwd=tmp_path).returncode == 0
    proc = run(*base, "--remove", "alice", cwd=tmp_path)
    assert proc.returncode != 0 and "alice" in proc.stderr and "Traceback" not in proc.stderr
    listed = json_lines(run(*base, "--list", "--json", cwd=tmp_path).stdout)[0]
    assert listed["speakers"] == ["bob"]


def test_bad_speaker_name_is_refused(setup, tmp_path):
    base = [str(REPO / "infer_recognition.py"), "--model_path", str(setup["model"]), "--audio_db_path", str(tmp_path)]
    proc = run(*base, "--register", "../evil", str(setup["files"][(0, 0)]), cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert not (tmp_path.parent / "evil").exists()


def test_two_processes_registering_at_once_lose_nothing(setup, tmp_path):
    base = [str(REPO / "infer_recognition.py"), "--model_path", str(setup["model"]), "--audio_db_path", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, *base, "--register", name, str(setup["files"][(i, 0)])],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for i, name in enumerate(["carol", "dave"])
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    listed = json_lines(run(*base, "--list", "--json", cwd=tmp_path).stdout)[0]
    assert sorted(listed["speakers"]) == ["carol", "dave"]


def test_interactive_loop_without_a_terminal_exits_clearly(setup, tmp_path):
    proc = run(
        str(REPO / "infer_recognition.py"),
        "--model_path", str(setup["model"]),
        "--audio_db_path", str(tmp_path),
        cwd=tmp_path,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "--register" in (proc.stderr + proc.stdout)


def test_export_script_then_contrast_with_the_export(setup, tmp_path):
    proc = run(
        str(REPO / "export_model.py"),
        "--model_path", str(setup["model"]),
        "--output_dir", str(tmp_path / "exported"),
        "--formats", "torchscript",
        "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = json_lines(proc.stdout)[0]
    assert meta["threshold"] == pytest.approx(0.9)
    f = setup["files"]
    scores = []
    for model in (setup["model"], tmp_path / "exported"):
        proc = run(
            str(REPO / "infer_contrast.py"),
            "--audio_path1", str(f[(0, 0)]),
            "--audio_path2", str(f[(0, 1)]),
            "--model_path", str(model),
            "--json",
            cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        scores.append(json_lines(proc.stdout)[0]["score"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)
