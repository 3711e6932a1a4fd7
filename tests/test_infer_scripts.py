"""The inference scripts as a user runs them (subprocesses): infer_contrast.py, infer_recognition.py and
export_model.py with --json output, concurrent enrolment, one-line errors with exit status 2, and the interactive
loop (refused without a terminal; driven in-process with a fake terminal and microphone)."""

from __future__ import annotations

import builtins
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mvector.audio import save_wav
from mvector.data.synthetic import make_voices, synthesize_utterance
from mvector.demo import tiny_checkpoint
from mvector.inference.predictor import MVectorPredictor

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def start(script: str, *args: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err


def run_all(*commands: tuple, cwd: Path) -> list[tuple[int, str, str]]:
    """Run several scripts at once (they are independent) and return (status, stdout, stderr) for each."""
    procs = [start(*c, cwd=cwd) for c in commands]
    return [finish(p) for p in procs]


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("scripts")
    voices = make_voices(2, seed=3)
    files = {}
    for name, voice in (("a", 0), ("b", 1)):
        wave = synthesize_utterance(voices[voice], 0.8, SR, rng=np.random.default_rng(voice))
        files[name] = root / f"{name}.wav"
        save_wav(files[name], wave, SR)
    return {"root": root, "model": tiny_checkpoint(root / "models"), **files}


@pytest.mark.slow
def test_contrast_json_and_text(setup):
    root, model, a, b = setup["root"], setup["model"], setup["a"], setup["b"]
    (rc1, out1, err1), (rc2, out2, err2) = run_all(
        ("infer_contrast.py", "--audio_path1", a, "--audio_path2", b, "--model_path", model, "--json"),
        ("infer_contrast.py", "--audio_path1", a, "--audio_path2", a, "--model_path", model, "--threshold", "0.25"),
        cwd=root,
    )
    assert rc1 == 0, err1
    (result,) = json_lines(out1)
    assert {"score", "same_speaker", "llr", "probability", "threshold", "threshold_source"} <= set(result)
    assert result["llr"] is None  # no calibration in this model folder: no LLR, not a made-up one
    score, same = MVectorPredictor(model, use_gpu=False).contrast(a, b)
    assert result["score"] == pytest.approx(score, abs=1e-5) and result["same_speaker"] is same
    assert rc2 == 0, err2
    assert "score 1.00000 -> the same speaker (threshold 0.25000)" in out2


@pytest.mark.slow
def test_register_concurrently_then_recognize_list_remove(setup, tmp_path):
    model, a, b = setup["model"], setup["a"], setup["b"]
    common = ("--model_path", model, "--audio_db_path", tmp_path / "audio_db", "--json")
    results = run_all(
        ("infer_recognition.py", *common, "--register", "alice", a),
        ("infer_recognition.py", *common, "--register", "bob", b, b),
        cwd=tmp_path,
    )
    assert [r[0] for r in results] == [0, 0], [r[2] for r in results]
    registered = [json_lines(out)[0] for _, out, _ in results[:2]]
    assert [(r["registered"], r["files"]) for r in registered] == [("alice", 1), ("bob", 2)]
    assert all(isinstance(r["warnings"], list) for r in registered)  # enrolment checks warn by default
    (rc_rec, out_rec, err_rec), (rc_list, out_list, _) = run_all(
        ("infer_recognition.py", *common, "--threshold", "0.9", "--recognize", a, b),
        ("infer_recognition.py", *common, "--list"),
        cwd=tmp_path,
    )
    assert rc_rec == 0, err_rec
    lines = json_lines(out_rec)
    assert all({"file", "name", "score", "reason", "llr", "probability", "threshold"} <= set(x) for x in lines)
    assert [x["reason"] for x in lines] == ["accepted", "accepted"]
    assert [(x["file"], x["name"]) for x in lines] == [(str(a), "alice"), (str(b), "bob")]
    assert all(x["score"] == pytest.approx(1.0, abs=1e-4) for x in lines)
    assert rc_list == 0 and sorted(json_lines(out_list)[0]["speakers"]) == ["alice", "bob"]
    # Plain text without --json; a relative database path is taken from the working folder.
    rc, out, err = finish(
        start(
            "infer_recognition.py",
            "--model_path",
            model,
            "--audio_db_path",
            "audio_db",
            "--remove",
            "alice",
            cwd=tmp_path,
        )
    )
    assert rc == 0 and out.strip() == "removed alice", err
    with MVectorPredictor(model, audio_db_path=tmp_path / "audio_db", use_gpu=False) as p:
        assert p.speakers() == ["bob"] and p.db.num_utterances("bob") == 2


@pytest.mark.slow
def test_errors_are_one_line_with_status_2(setup, tmp_path):
    model, a = setup["model"], setup["a"]
    db = ("--model_path", model, "--audio_db_path", tmp_path / "empty_db")
    cases = {
        "missing file": (("infer_contrast.py", "--audio_path1", a, "--audio_path2", tmp_path / "nope.wav",
                          "--model_path", model), "nope.wav: file not found"),
        "missing model": (("infer_contrast.py", "--audio_path1", a, "--audio_path2", a, "--model_path",
                           tmp_path / "no_model"), "no_model does not exist"),
        # a database is created only by registering: a mistyped --audio_db_path is refused, not made empty
        "remove without a database": (("infer_recognition.py", *db, "--remove", "carol"), "no speaker database"),
        "recognize without a database": (("infer_recognition.py", *db, "--recognize", a), "--audio_db_path"),
        "bad name": (("infer_recognition.py", *db, "--register", "../evil", a), "bad speaker name '../evil'"),
        "no terminal": (("infer_recognition.py", *db), "needs a terminal"),
        "export without a model": (("export_model.py", "--model_path", tmp_path / "none", "--output_dir",
                                    tmp_path / "out"), "does not exist"),
    }  # fmt: skip
    results = run_all(*(command for command, _ in cases.values()), cwd=tmp_path)
    for (what, (_, expected)), (rc, out, err) in zip(cases.items(), results):
        assert rc == 2, (what, rc, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (what, err)
        assert "Traceback" not in err and out == "", what
    assert not (tmp_path / "evil").exists() and not (tmp_path / "empty_db").exists()


@pytest.mark.slow
def test_export_script_and_predicting_from_the_export(setup, tmp_path):
    model, a, b = setup["model"], setup["a"], setup["b"]
    out_dir = tmp_path / "exported"
    rc, out, err = finish(
        start("export_model.py", "--model_path", model, "--output_dir", out_dir, "--json", cwd=tmp_path)
    )
    assert rc == 0, err
    meta = json_lines(out)[0]
    assert meta["formats"] == ["torchscript", "onnx"] and meta["threshold"] == 0.5 and meta["embd_dim"] == 32
    assert meta["fingerprint"] == MVectorPredictor(model, use_gpu=False).fingerprint
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.yml", "meta.json", "model.onnx", "model.ts"]
    expected, _ = MVectorPredictor(model, use_gpu=False).contrast(a, b)
    results = run_all(
        *(
            (
                "infer_contrast.py",
                "--audio_path1",
                a,
                "--audio_path2",
                b,
                "--model_path",
                out_dir,
                "--backend",
                x,
                "--json",
            )
            for x in ("torchscript", "onnx")
        ),
        cwd=tmp_path,
    )
    for rc, out, err in results:
        assert rc == 0, err
        assert json_lines(out)[0]["score"] == pytest.approx(expected, abs=1e-4)


def load_script(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interactive_loop_with_a_fake_terminal_and_microphone(setup, tmp_path, monkeypatch, capsys):
    script = load_script("infer_recognition.py")
    voices = make_voices(2, seed=3)
    takes = iter(
        [
            synthesize_utterance(voices[0], 0.5, SR, rng=np.random.default_rng(10)),  # register alice
            synthesize_utterance(voices[0], 0.5, SR, rng=np.random.default_rng(10)),  # recognise: the same take
        ]
    )

    def fake_record(seconds, sample_rate=16000, device_index=None):
        assert seconds == 0.5 and sample_rate == SR
        return next(takes)

    answers = iter(["0", "alice", "", "1", "", "3", "2", "nobody", "2", "alice", "3", "9", "q"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setitem(sys.modules, "pyaudio", types.SimpleNamespace())
    monkeypatch.setattr("mvector.inference.microphone.record_seconds", fake_record)
    db = tmp_path / "db"
    status = script.main(
        ["--model_path", str(setup["model"]), "--audio_db_path", str(db), "--record_seconds", "0.5"],
    )
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out == [
        "registered alice",
        "alice (score 1.0000)",
        "alice",
        "error: unknown speaker 'nobody' in " + str(db / "speakers.sqlite") + " (1 enrolled); "
        "known speakers include: alice",
        "removed alice",
        "(no speakers enrolled)",
        "unknown choice '9'",
    ]
    # Without PyAudio the loop is refused up front with the install instructions.
    monkeypatch.setitem(sys.modules, "pyaudio", None)
    assert script.main(["--model_path", str(setup["model"])]) == 2
    assert "portaudio19-dev" in capsys.readouterr().err
