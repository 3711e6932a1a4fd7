"""Bad configurations, overrides and list lines end `mvector train` (and siblings) with exit 2 and ONE line
`error: ...` naming the file, key or line — raised by the parser that read them, not a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mvector.config import load_config
from mvector.data.lists import Utterance, check_num_speakers, read_kaldi_dir, read_list
from mvector.errors import ConfigError, DataListError
from mvector.evaluation.scoring import read_trials
from mvector.utils.yaml_io import MAX_DEPTH, load_yaml

ROOT = Path(__file__).resolve().parents[1]
BIG = "1" * 4301
DEEP = "[" * 495 + "]" * 495


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "mvector", "train", "--use_gpu", "False", "--save_model_path", str(cwd / "m"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _config(tmp_path: Path, body: bytes) -> str:
    path = tmp_path / "bad.yml"
    path.write_bytes(b"use_model: TDNN\nuse_loss: AAM\n" + body)
    return str(path)


def _list_with_nul(tmp_path: Path) -> str:
    (tmp_path / "a.wav").write_bytes(b"")
    path = tmp_path / "list.txt"
    path.write_bytes(b"a.wav\t0\n~\x00x.wav\t1\n")
    return str(path)


def _kaldi_with_nul(tmp_path: Path) -> str:
    folder = tmp_path / "kaldi"
    folder.mkdir()
    (folder / "wav.scp").write_bytes(b"u1 ~\x00x.wav\n")
    (folder / "utt2spk").write_bytes(b"u1 s1\n")
    return str(folder)


# (arguments for `mvector train`, words the one error line must hold)
CASES = {
    "config not UTF-8": (lambda t: ["--configs", _config(t, b"# caf\xe9\n")], ["bad.yml", "not UTF-8", "line 3"]),
    "loss_conf embd_dim": (
        lambda t: ["--configs", _config(t, b"loss_conf: {embd_dim: 8}\n")],
        ["'embd_dim'", "loss_conf"],
    ),
    "impossible date": (
        lambda t: ["--configs", _config(t, b"dataset_conf:\n  train_list: 2001-13-45\n")],
        ["bad.yml", "line 4", "2001-13-45"],
    ),
    "float xyz": (
        lambda t: ["--configs", _config(t, b"loss_conf:\n  margin: !!float xyz\n")],
        ["bad.yml", "line 4", "xyz"],
    ),
    "4301 digits in a file": (
        lambda t: ["--configs", _config(t, f"loss_conf:\n  margin: {BIG}\n".encode())],
        ["bad.yml", "line 4", "4301"],
    ),
    "4301 digits as an override": (
        lambda t: ["--configs", "tdnn", f"--train_conf.max_epoch={BIG}"],
        ["--train_conf.max_epoch", "4301 digits"],
    ),
    "4301 digits in an override list": (
        lambda t: ["--configs", "tdnn", f"--loss_conf.margin=[{BIG}]"],
        ["--loss_conf.margin", "4301"],
    ),
    "495 deep in a file": (
        lambda t: ["--configs", _config(t, f"loss_conf:\n  x: {DEEP}\n".encode())],
        ["bad.yml", "line 4", "nested"],
    ),
    "495 deep as an override": (lambda t: ["--configs", "tdnn", f"--loss_conf.x={DEEP}"], ["--loss_conf.x", "nested"]),
    "NUL in a list line": (
        lambda t: ["--configs", "tdnn", f"--dataset_conf.train_list={_list_with_nul(t)}"],
        ["list.txt", "line 2", "NUL"],
    ),
    "NUL in a wav.scp line": (
        lambda t: ["--configs", "tdnn", f"--dataset_conf.train_list={_kaldi_with_nul(t)}"],
        ["kaldi", "wav.scp line 1", "NUL"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_train_with_one_error_line_and_exit_2(case, tmp_path):
    make_args, words = CASES[case]
    proc = _train(make_args(tmp_path), tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_yaml_reader_refuses_what_would_blow_up_later(tmp_path):
    with pytest.raises(ConfigError, match="refers to a value that contains it"):
        load_yaml("a: &a [*a]", "x.yml")
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcde", "bcdef")
    )
    with pytest.raises(ConfigError, match="values once its aliases"):
        load_yaml(bomb, "x.yml")
    with pytest.raises(ConfigError, match=r"x.yml: line 2, column 1: the key 'a' appears twice"):
        load_yaml("a: 1\na: 2\n", "x.yml")
    assert load_yaml("b: &b {x: 1}\nc: {<<: *b, x: 2}\n", "x.yml") == {"b": {"x": 1}, "c": {"x": 2}}
    assert load_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH, "x") is not None
    with pytest.raises(ConfigError, match=r"line 1: the character U\+0000"):
        load_yaml("a: \x00", "x.yml")
    path = tmp_path / "c.yml"
    path.write_bytes(b"train_conf:\n  max_epoch: 2\ntrain_conf:\n  max_epoch: 3\n")
    with pytest.raises(ConfigError, match="c.yml: line 3, column 1: the key 'train_conf' appears twice"):
        load_config(path)


def test_trial_list_and_lists_name_the_line_of_a_nul_byte(tmp_path):
    trials = tmp_path / "trials.txt"
    trials.write_bytes(b"1 a.wav b.wav\n0 a.wav c\x00.wav\n")
    with pytest.raises(DataListError, match=r"trials.txt:2: a path holds a NUL byte"):
        read_trials(trials)
    with pytest.raises(DataListError, match=r"list.txt: line 2: the path .* NUL"):
        read_list(_list_with_nul(tmp_path), check_files=False)
    with pytest.raises(DataListError, match=r"wav.scp line 1: the path .* NUL"):
        read_kaldi_dir(_kaldi_with_nul(tmp_path), check_files=False)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("model_conf.channels", "-1", "model_conf (TDNN): cannot build"),
        ("model_conf.channels", "0", "model_conf (TDNN): cannot build"),
        ("model_conf.channels", "99999999999", "model_conf (TDNN)"),
        ("model_conf.channels", "200000", "parameters"),
        ("model_conf.embd_dim", "99999999999", "model_conf (TDNN)"),
        ("feature_conf.num_mel_bins", "99999999999", "feature_conf.num_mel_bins"),
        ("feature_conf.frame_length", "99999999999", "feature_conf.frame_length"),
        ("feature_conf.num_mel_bins", "1e400", "feature_conf"),
        ("loss_conf.sub_centers", "99999999999", "sub_centers"),
        ("optimizer_conf.weight_decay", "-1", "optimizer_conf.weight_decay"),
    ],
)
def test_sizes_that_would_allocate_gigabytes_or_crash_a_constructor_name_the_key(key, value, words):
    # Checked on torch's meta device: nothing is allocated, whatever the width.
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config("tdnn", overrides={key: value})


def test_num_speakers_far_above_the_list_is_refused_without_listing_every_unused_label():
    utts = [Utterance(f"/a{i}.wav", i % 4, i + 1) for i in range(8)]
    with pytest.raises(DataListError, match="num_speakers is 99999999999, far above the 4 speakers"):
        check_num_speakers(utts, 99999999999)


def test_deeply_nested_json_in_a_model_folder_is_a_checkpoint_error(tmp_path):
    from mvector.embedding.backends import read_export_meta
    from mvector.errors import CheckpointError
    from mvector.evaluation.calibration_store import read_calibration

    (tmp_path / "meta.json").write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match="meta.json"):
        read_export_meta(tmp_path)
    (tmp_path / "calibration.json").write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match="calibration"):
        read_calibration(tmp_path / "calibration.json")
