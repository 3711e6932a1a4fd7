"""The user's loop on one tiny trained model: train -> checkpoint -> eval -> export -> enrol and recognize, through
the trainer, the checkpoint folder and the commands; what each step says when it goes wrong (resume mismatches,
non-finite losses, label typos, hand-edited or half-saved folders, bad files among good ones).

Each test is a few lines on shared fixtures, so the next case is easy to add. The trained model is a tiny TDNN
trained once for the module. Faults of one module are tested beside it (test_audio, test_dataset, test_embedding,
test_scoring, test_predictor, ...).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import TINY_TRAINING

from mvector.audio import save_wav
from mvector.data.synthetic import generate_corpus
from mvector.errors import CheckpointError, ConfigError, DataListError, MVectorError

SMALL = {
    "use_model": "TDNN",
    **TINY_TRAINING,
    "train_conf.max_epoch": "1",
    "train_conf.log_interval": "100",
    "train_conf.log_backend": "none",
    "loss_conf.margin_scheduler.end_epoch": "1",
}


def strict_json(text: str):
    """``json.loads`` that refuses NaN / Infinity, as strict parsers do."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_corpus")
    train = generate_corpus(root / "train", 4, 4, seed=0, min_duration=1.0, max_duration=1.3)
    test = generate_corpus(root / "test", 3, 3, seed=1, min_duration=1.0, max_duration=1.3)
    return {"train": Path(train), "test": Path(test), "root": root}


def overrides(corpus, **extra) -> dict[str, str]:
    out = dict(SMALL)
    out["dataset_conf.train_list"] = str(corpus["train"])
    out["dataset_conf.test_list"] = str(corpus["test"])
    out.update({k: str(v) for k, v in extra.items()})
    return out


def train(corpus, save, callbacks=(), **extra):
    from mvector.training.trainer import MVectorTrainer

    resume = extra.pop("resume_model", None)
    overwrite = extra.pop("overwrite", False)
    trainer = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides=overrides(corpus, **extra), callbacks=callbacks)
    return trainer, trainer.train(save_model_path=save, resume_model=resume, overwrite=overwrite)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One tiny training run: ``models/TDNN_MelSpectrogram/{best_model,last_model,epoch_1}``, lists elsewhere."""
    save = tmp_path_factory.mktemp("faults_models")
    train(corpus, save)
    return save / "TDNN_MelSpectrogram"


def run_main(main, argv):
    """Run a command's ``main``; returns ``(status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def copy_model(trained, tmp_path, name="best_model") -> Path:
    dst = tmp_path / "model" / name
    shutil.copytree(trained / name, dst)
    return dst


# ------------------------------------------------------------------------------------------------ traps in the loop
def test_eval_uses_the_lists_stored_with_the_checkpoint(trained, tmp_path, monkeypatch):
    from mvector.cli.evaluate import main

    monkeypatch.chdir(tmp_path)  # no dataset/ here: the bundled default lists do not exist
    model = copy_model(trained, tmp_path)
    status, out, err = run_main(main, ["--resume_model", str(model)])
    assert status == 0, err
    assert "EER" in out and "data list not found" not in err


def test_resume_with_more_epochs_replans_the_cosine(corpus, trained, tmp_path):
    from mvector.training.callbacks import Callback

    lrs = []

    class Record(Callback):
        def on_step_end(self, trainer, info):
            lrs.append(float(info.lr))

    trainer, _ = train(corpus, tmp_path, [Record()], resume_model=trained / "last_model", **{"train_conf.max_epoch": 2})
    peak = float(trainer.configs["optimizer_conf"]["learning_rate"])
    min_lr = float(trainer.configs["optimizer_conf"]["min_lr"])
    assert lrs and min(lrs) >= min_lr - 1e-12
    # The extra epochs follow a cosine re-planned over the new length: they start near the peak and decay to
    # min_lr at the new end, instead of training every step at min_lr (the end of the old plan).
    assert len(lrs) == trainer.steps_per_epoch >= 2
    assert lrs[0] > min_lr + 0.1 * (peak - min_lr) and lrs[0] <= peak  # not stuck at min_lr, the old plan's end
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # and decaying over the new length


def test_eval_keeps_the_operating_point_unless_asked(corpus, trained, tmp_path):
    from mvector.cli.evaluate import main

    model = copy_model(trained, tmp_path)
    before = (model / "result.json").read_bytes() if (model / "result.json").exists() else None
    status, out, err = run_main(main, ["--resume_model", str(model)])
    assert status == 0, err
    written = model / "evaluations" / f"{corpus['test'].stem}.json"
    assert written.is_file() and str(written) in out
    assert strict_json(written.read_text())["evaluated_on"] == str(corpus["test"])
    after = (model / "result.json").read_bytes() if (model / "result.json").exists() else None
    assert after == before
    status, out, err = run_main(main, ["--resume_model", str(model), "--set_threshold"])
    assert status == 2 and "speakers (at least 10 needed)" in err and "--force" in err  # a tiny test split
    assert ((model / "result.json").read_bytes() if (model / "result.json").exists() else None) == before
    status, out, err = run_main(main, ["--resume_model", str(model), "--set_threshold", "--force"])
    assert status == 0 and "result.json" in out
    assert "threshold" in strict_json((model / "result.json").read_text())


def test_all_json_written_is_standard(trained, tmp_path):
    from mvector.utils.files import atomic_write_json, dumps_json

    for path in [*trained.rglob("*.json")]:
        strict_json(path.read_text())
    target = atomic_write_json(tmp_path / "r.json", {"min_dcf_threshold": float("inf"), "x": np.float32("nan")})
    assert strict_json(target.read_text()) == {"min_dcf_threshold": None, "x": None}
    assert strict_json(dumps_json({"a": float("-inf")})) == {"a": None}






def test_training_logs_by_time(corpus, tmp_path, capsys):
    train(corpus, tmp_path, **{"train_conf.log_interval": 10_000, "train_conf.log_seconds": 0.0})
    out = capsys.readouterr()
    steps = [line for line in out.out.splitlines() if "step " in line and "/" in line]
    assert len(steps) >= 2, out.out  # every step logged although log_interval is never reached


def test_evaluation_progress_counts_rows(corpus, tmp_path):
    from mvector.demo import tiny_checkpoint
    from mvector.embedding.backends import open_backend
    from mvector.evaluation.evaluator import EvalSettings, Evaluator

    totals = []

    class Bar:
        def __init__(self, total, **_):
            self.n, self.total = 0, total

        def update(self, k):
            self.n += k

        def close(self):
            totals.append((self.n, self.total))

    import tqdm

    real = tqdm.tqdm
    tqdm.tqdm = Bar
    try:
        ev = Evaluator(open_backend(tiny_checkpoint(tmp_path)), EvalSettings(batch_size=2), progress=True, log=print)
        ev.evaluate(test_list=corpus["test"])
    finally:
        tqdm.tqdm = real
    assert totals == [(9, 9)]  # the bar ends at the number of files, not a sum of running totals


def test_written_files_follow_the_umask(corpus, trained, tmp_path):
    from mvector.checkpoint import save_checkpoint
    from mvector.cli.create_data import main as create_data
    from mvector.data.corpora.common import convert_to_wav
    from mvector.export import export_checkpoint

    old = os.umask(0o027)
    try:
        status, _, err = run_main(create_data, ["folder", str(corpus["train"].parent), "--output_dir",
                                                str(tmp_path / "lists"), "--test_speakers", "2"])
        assert status == 0, err
        export_checkpoint(trained / "best_model", tmp_path / "export", formats=("torchscript",))
        ckpt = save_checkpoint(tmp_path / "ckpt", model_state={"w": torch.ones(1)}, config={}, epoch=1, step=1,
                               best_eer=None)
        convert_to_wav(next(corpus["train"].parent.rglob("*.wav")), tmp_path / "conv" / "a.wav", 8000)
        files = [*(tmp_path / "lists").iterdir(), *(tmp_path / "export").iterdir(), *ckpt.iterdir(),
                 tmp_path / "conv" / "a.wav"]
    finally:
        os.umask(old)
    assert len(files) > 8
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path  # 0666 & ~umask, not mkstemp's 0600


def test_lists_for_audio_outside_the_output_folder_survive_a_move(corpus, tmp_path):
    from mvector.cli.create_data import main as create_data
    from mvector.data.lists import read_list

    audio = corpus["train"].parent
    status, _, err = run_main(create_data, ["folder", str(audio), "--output_dir", str(tmp_path / "a"),
                                            "--test_speakers", "2"])
    assert status == 0, err
    shutil.move(tmp_path / "a", tmp_path / "moved" / "b")
    utts = read_list(tmp_path / "moved" / "b" / "train_list.txt")  # checks every file exists
    assert utts and all(os.path.isabs(u.path) for u in utts)


@pytest.fixture()
def enrolled(trained, tmp_path, corpus):
    """A database with one speaker registered through the command; returns (model, db, good audio file)."""
    from mvector.cli.recognize import main

    audio = sorted((corpus["test"].parent).rglob("*.wav"))
    db = tmp_path / "db"
    status, _, err = run_main(main, ["--model_path", str(trained), "--audio_db_path", str(db), "--register",
                                     "alice", str(audio[0])])
    assert status == 0, err
    return trained, db, audio[1]


def test_recognize_reports_each_bad_file_and_goes_on(enrolled, tmp_path):
    from mvector.cli.recognize import main

    model, db, good = enrolled
    (tmp_path / "garbage.wav").write_bytes(b"RIFF not really audio")
    args = ["--model_path", str(model), "--audio_db_path", str(db), "--recognize", str(tmp_path / "garbage.wav"),
            str(tmp_path / "missing.wav"), str(good)]
    status, out, err = run_main(main, args + ["--json"])
    lines = [strict_json(line) for line in out.splitlines()]
    assert status == 1 and len(lines) == 3
    assert "error" in lines[0] and "garbage.wav" in lines[0]["error"]
    assert "error" in lines[1] and "missing.wav" in lines[1]["error"]
    assert lines[2]["file"] == str(good) and "score" in lines[2]
    status, out, err = run_main(main, args)
    assert status == 1 and str(good) in out
    assert [line for line in err.splitlines() if line.startswith("error:")].__len__() == 2
    status, _, _ = run_main(main, ["--model_path", str(model), "--audio_db_path", str(db), "--recognize", str(good)])
    assert status == 0


def test_recognize_messages_name_flags_and_refuse_a_mistyped_database(enrolled, tmp_path):
    from mvector.cli.recognize import main

    model, db, good = enrolled
    status, out, _ = run_main(main, ["--model_path", str(model), "--audio_db_path", str(db), "--register", "alice",
                                     str(good)])
    assert status == 0 and "already enrolled" in out and "now 2" in out
    status, out, _ = run_main(main, ["--model_path", str(model), "--audio_db_path", str(db), "--list"])
    assert status == 0 and "alice\t2 recording(s)\tenrolled 20" in out
    status, out, _ = run_main(main, ["--model_path", str(model), "--audio_db_path", str(db), "--list", "--json"])
    row = strict_json(out)["details"][0]
    assert row["name"] == "alice" and row["utterances"] == 2 and row["enrolled"] <= row["updated"]
    for command in (["--list"], ["--remove", "alice"], ["--recognize", str(good)]):
        typo = tmp_path / "dbb"
        status, _, err = run_main(main, ["--model_path", str(model), "--audio_db_path", str(typo), *command])
        assert status == 2 and "--audio_db_path" in err and "--register" in err
        assert not typo.exists()  # nothing created
    run_main(main, ["--model_path", str(model), "--audio_db_path", str(db), "--remove", "alice"])
    status, _, err = run_main(main, ["--model_path", str(model), "--audio_db_path", str(db), "--recognize", str(good)])
    assert status == 2 and "--register NAME FILE" in err and "add_many" not in err




def test_warnings_print_as_one_plain_line():
    from mvector.cli.common import run_cli

    def job(argv):
        warnings.warn("noise_conf: folder noise/ holds no audio; noise augmentation is off", UserWarning, stacklevel=2)

    status, _, err = run_main(lambda argv: run_cli(job, argv), [])
    assert status == 0
    assert err == "warning: noise_conf: folder noise/ holds no audio; noise augmentation is off\n"










def test_short_test_clips_are_left_out_with_their_names(corpus, tmp_path):
    from mvector.demo import tiny_checkpoint
    from mvector.embedding.backends import open_backend
    from mvector.evaluation.evaluator import EvalSettings, Evaluator

    lines = corpus["test"].read_text().splitlines()
    base = corpus["test"].parent
    short = tmp_path / "tiny.wav"
    save_wav(short, np.zeros(80, "float32") + 0.1, 16000)  # 5 ms: shorter than one 25 ms window
    rows = [f"{base / p}\t{lab}" for p, lab in (line.split("\t") for line in lines)] + [f"{short}\t0"]
    (tmp_path / "test.txt").write_text("\n".join(rows) + "\n")
    notes = []
    ev = Evaluator(open_backend(tiny_checkpoint(tmp_path / "m")), EvalSettings(), progress=False, log=notes.append)
    metrics = ev.evaluate(test_list=tmp_path / "test.txt")
    assert metrics["unreadable_files"] == [str(short)]
    assert "tiny.wav" in notes[0] and "analysis window" in notes[0]








def test_resume_refuses_another_optimizer_head_or_speakers(corpus, trained, tmp_path):
    for key, value in (("use_loss", "AM"), ("optimizer_conf.optimizer", "SGD"), ("dataset_conf.num_speakers", 9)):
        with pytest.raises(CheckpointError, match="Differences") as info:
            train(corpus, tmp_path / key, resume_model=trained / "last_model", **{key: value})
        assert key.split(".")[-1] in str(info.value)


def test_a_new_run_does_not_mix_with_another(corpus, trained, tmp_path):
    save = tmp_path / "models"
    shutil.copytree(trained, save / "TDNN_MelSpectrogram")
    with pytest.raises(MVectorError, match="--overwrite"):
        train(corpus, save)
    train(corpus, save, overwrite=True)
    epochs = sorted(p.name for p in (save / "TDNN_MelSpectrogram").iterdir() if p.name.startswith("epoch_"))
    assert epochs == ["epoch_1"]


def test_non_finite_config_and_loss(corpus, tmp_path, monkeypatch):
    from mvector.checkpoint import load_checkpoint
    from mvector.config import load_config
    from mvector.training.trainer import MVectorTrainer, TrainingDiverged

    with pytest.raises(ConfigError, match="grad_clip"):
        load_config("ecapa_tdnn", {"train_conf.grad_clip": ".nan"})
    trainer = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides=overrides(corpus, **{"train_conf.max_epoch": 2}))
    real_step = MVectorTrainer.train_step

    def poisoned(self, batch, info):
        if self.global_step == 2:  # 16 utterances in batches of 8: the first step of epoch 2 gets a NaN loss
            batch.waveforms[:] = float("nan")
        return real_step(self, batch, info)

    monkeypatch.setattr(MVectorTrainer, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 3 \(epoch 2\)"):
        trainer.train(save_model_path=tmp_path)
    # the last good checkpoint is kept
    assert load_checkpoint(tmp_path / "TDNN_MelSpectrogram" / "last_model").epoch == 1


def test_a_label_typo_is_an_error_naming_the_line(corpus, tmp_path):
    from mvector.data.lists import infer_num_speakers, load_utterances

    rows = corpus["train"].read_text().splitlines()
    path, _ = rows[5].split("\t")
    rows[5] = f"{path}\t100000000"
    (corpus["train"].parent / "typo.txt").write_text("\n".join(rows) + "\n")
    utts = load_utterances(corpus["train"].parent / "typo.txt")
    with pytest.raises(DataListError, match=r"label 100000000 on line 6"):
        infer_num_speakers(utts)
    with pytest.raises(DataListError, match="line 6"):
        train(corpus, tmp_path, **{"dataset_conf.train_list": corpus["train"].parent / "typo.txt"})


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s, d: s.update(files={}), "'files' fingerprint map is missing or empty"),
        (lambda s, d: s.pop("files"), "'files' fingerprint map is missing or empty"),
        (lambda s, d: s.update(model_sha256="0" * 64), "model_sha256 does not match"),
        (lambda s, d: s["files"].pop("config.yml"), r"config\.yml is not fingerprinted"),
        (lambda s, d: s["files"].pop("head.pt"), r"head\.pt: not fingerprinted"),
    ],
)
def test_hand_edited_state_json_is_refused(trained, tmp_path, edit, match):
    from mvector.checkpoint import load_checkpoint

    folder = copy_model(trained, tmp_path, "last_model")
    state = json.loads((folder / "state.json").read_text())
    edit(state, folder)
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(folder)


def test_auto_backend_order_and_swapped_export_file(trained, tmp_path):
    from mvector.embedding.backends import AUTO_ORDER, open_backend, pick_backend
    from mvector.export import export_checkpoint

    assert AUTO_ORDER.index("torchscript") == len(AUTO_ORDER) - 1
    out = export_checkpoint(trained / "best_model", tmp_path / "export", formats=("torchscript",))
    meta = strict_json((out / "meta.json").read_text())
    assert len(meta["files"]["model.ts"]) == 64
    shutil.copytree(trained / "best_model", tmp_path / "both")
    shutil.copy(out / "model.ts", tmp_path / "both" / "model.ts")
    assert pick_backend(tmp_path / "both") == "torch"
    (out / "model.ts").write_bytes((out / "model.ts").read_bytes() + b"\0")  # swapped / altered
    with pytest.raises(CheckpointError, match="model.ts"):
        open_backend(out, "torchscript")


def test_interrupted_save_is_recovered_for_every_reader(trained, tmp_path):
    from mvector.cli.evaluate import main
    from mvector.inference.predictor import MVectorPredictor

    model = copy_model(trained, tmp_path)
    model.rename(model.with_name("best_model.old"))  # killed between the two renames of a save
    status, _, err = run_main(main, ["--resume_model", str(model)])
    assert status == 0, err
    assert model.is_dir() and not model.with_name("best_model.old").exists()
    model.rename(model.with_name("best_model.old"))
    with MVectorPredictor(model.parent, use_gpu=False) as p:
        assert p.embed((np.full(16000, 0.1, "float32"), 16000)).shape == (32,)




def test_create_data_hash_speaker_folder_and_output_dir_naming_a_file(tmp_path):
    from mvector.cli.create_data import main as create_data
    from mvector.data.lists import read_list

    root = tmp_path / "lists"
    for spk in ("#alice", "bob", "#carol", "dave"):
        for k in range(3):
            save_wav(root / spk / f"{k}.wav", np.full(8000, 0.1, "float32"), 16000)
    status, _, err = run_main(create_data, ["folder", str(root), "--output_dir", str(root), "--test_speakers", "2"])
    assert status == 0, err
    written = [ln for name in ("train_list.txt", "test_list.txt") for ln in (root / name).read_text().splitlines()]
    assert len(written) == 12
    assert len(read_list(root / "train_list.txt")) + len(read_list(root / "test_list.txt")) == 12
    (tmp_path / "afile").write_text("x")
    status, _, err = run_main(create_data, ["folder", str(root), "--output_dir", str(tmp_path / "afile")])
    assert status == 2 and "afile" in err and "not a folder" in err








