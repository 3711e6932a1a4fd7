"""Score normalisation stored with the model (score_norm.npz): fitted by training, used by evaluation, the predictor,
speaker search and exports; the low-false-alarm tail metrics with their intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_helpers import TINY_TRAINING

from mvector.data.synthetic import generate_corpus
from mvector.errors import CheckpointError, ConfigError
from mvector.evaluation.metrics import compute_eer, compute_min_dcf, frr_at_far
from mvector.evaluation.model_eval import evaluate_model_folder
from mvector.evaluation.score_norm import SCORE_NORM_FILE, ScoreNorm, check_score_norm_conf
from mvector.evaluation.scoring import as_norm
from mvector.evaluation.uncertainty import tail_metrics
from mvector.inference.predictor import MVectorPredictor
from mvector.training.trainer import MVectorTrainer

SMALL = {
    **TINY_TRAINING,
    "train_conf.max_epoch": "1",
    "train_conf.log_backend": "none",
}


def test_score_norm_is_as_norm_of_the_transformed_embeddings_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    vecs, labels = rng.standard_normal((40, 6)) + 1.0, np.repeat(np.arange(8), 5)
    sn = ScoreNorm.fit(vecs, labels, centre=True, top_k=3)
    assert sn.cohort.shape == (8, 6)
    assert ScoreNorm.fit(vecs, labels, whiten=True, cohort="utterances").cohort.shape == (40, 6)
    pairs = rng.integers(0, 40, (25, 2))
    t = sn.transform(vecs)
    cosine = np.sum(t[pairs[:, 0]].astype(np.float64) * t[pairs[:, 1]], axis=1)
    expected = as_norm(cosine, t[pairs[:, 0]], t[pairs[:, 1]], sn.cohort, top_k=3)
    assert np.allclose(sn.score_pairs(vecs, pairs), expected, atol=1e-5)
    sn.save(tmp_path)
    back = ScoreNorm.load(tmp_path, embd_dim=6)
    assert np.allclose(back.score_pairs(vecs, pairs), expected, atol=1e-5) and back.top_k == 3
    assert ScoreNorm.load(tmp_path / "nothing") is None
    with pytest.raises(CheckpointError, match="does not fit the model"):
        ScoreNorm.load(tmp_path, embd_dim=7)
    (tmp_path / SCORE_NORM_FILE).write_bytes(b"not an npz file")
    with pytest.raises(CheckpointError, match=SCORE_NORM_FILE):
        ScoreNorm.load(tmp_path)


def test_score_norm_conf_is_checked_by_name():
    with pytest.raises(ConfigError, match="score_norm_conf.top_k"):
        check_score_norm_conf({"cohort": "speakers", "top_k": 0})
    with pytest.raises(ConfigError, match="score_norm_conf.cohort"):
        check_score_norm_conf({"cohort": "all"})


def test_tail_metrics_match_the_exact_metrics_and_bracket_them():
    rng = np.random.default_rng(1)
    spk = np.repeat(np.arange(12), 5)
    i, j = np.triu_indices(spk.size, 1)
    y = (spk[i] == spk[j]).astype(int)
    s = rng.normal(2.5 * y, 1.0)
    m = tail_metrics(s, y, spk[i], spk[j], rounds=50)
    assert m["eer"] == pytest.approx(compute_eer(s, y)[0])
    assert m["min_dcf_0.01"] == pytest.approx(compute_min_dcf(s, y, 0.01)[0])
    assert m["min_dcf_0.001"] == pytest.approx(compute_min_dcf(s, y, 0.001)[0])
    assert m["frr_at_far_1%"] == pytest.approx(frr_at_far(s, y, 0.01))
    for name in ("eer", "min_dcf_0.01", "frr_at_far_1%"):
        lo, hi = m[f"{name}_ci"]
        assert lo <= m[name] <= hi and hi > lo
    # FRR at FAR 0: only scores above every non-target are accepted
    assert frr_at_far([3.0, 2.0, 1.0, 0.5], [1, 0, 1, 0], 0.0) == 0.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sn")
    train = generate_corpus(root / "train", 6, 5, seed=0, min_duration=1.0, max_duration=1.4)
    test = generate_corpus(root / "test", 4, 4, seed=1, min_duration=1.0, max_duration=1.4)
    overrides = dict(
        SMALL,
        **{
            "dataset_conf.train_list": str(train),
            "dataset_conf.test_list": str(test),
            "score_norm_conf.cohort": "speakers",
            "score_norm_conf.top_k": "3",
            "score_norm_conf.max_per_speaker": "4",
            "score_norm_conf.cohort_speeds": "[1.0]",  # the clips as recorded (other speeds: test_tail_cohort.py)
        },
    )
    trainer = MVectorTrainer("ecapa_tdnn", use_gpu=False, overrides=overrides)
    result = trainer.train(save_model_path=root / "models")
    return {"root": root, "test": test, "result": result, "dir": root / "models" / "EcapaTdnn_MelSpectrogram"}


def test_training_stores_the_cohort_and_evaluation_and_predictor_score_with_it(trained, tmp_path):
    last = trained["dir"] / "last_model"
    sn = ScoreNorm.load(last)
    assert sn is not None and sn.cohort.shape == (6, 32) and sn.top_k == 3  # one row per training speaker
    stored = json.loads((last / "result.json").read_text())
    assert stored["score_type"] == "as_norm_model" and stored["score_norm"]["size"] == 6
    assert stored["score_norm"]["speeds"] == [1.0]
    assert stored["score_norm"]["cohort"] == "training speakers"
    run = evaluate_model_folder(last, progress=False, output=tmp_path / "m.json")
    assert run.metrics["score_type"] == "as_norm_model"
    assert run.metrics["eer"] == pytest.approx(stored["eer"])  # the same scores as training's own evaluation
    plain = evaluate_model_folder(last, progress=False, output=tmp_path / "p.json", use_score_norm=False)
    assert plain.metrics["score_type"] == "cosine"

    p = MVectorPredictor(last, use_gpu=False, audio_db_path=tmp_path / "db")
    assert p.score_type == "as_norm_model" and p.threshold == pytest.approx(stored["threshold"])
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(32), rng.standard_normal(32)
    assert p.pair_score(a, b) == pytest.approx(float(sn.score(a[None], b[None])[0]))
    assert p.pair_score(a, b) != pytest.approx(p.similarity(a, b))
    # identification scores the enrolled means on the same scale as verification
    lines = [ln.split("\t") for ln in trained["test"].read_text().splitlines()]
    first = {}
    for path, label in lines:
        first.setdefault(label, trained["test"].parent / path)
    for label, path in first.items():
        p.register(f"spk{label}", str(path))
    name, score = p.recognize(str(first["0"]), threshold=-1e9)
    assert name == "spk0"
    emb = p.embed(str(first["0"]))
    assert score == pytest.approx(p.pair_score(emb, p.db.mean_embedding("spk0")), abs=1e-4)


def test_a_model_without_the_file_scores_with_plain_cosine(trained, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(trained["dir"] / "last_model", folder)
    (folder / SCORE_NORM_FILE).unlink()
    p = MVectorPredictor(folder, use_gpu=False, audio_db_path=tmp_path / "db")
    a, b = np.ones(32), np.arange(32.0)
    assert p.score_type == "cosine" and p.pair_score(a, b) == pytest.approx(p.similarity(a, b))


def test_calibrate_fits_on_the_models_own_scale_and_the_predictor_keeps_it(trained, tmp_path):
    import shutil
    import warnings

    from mvector.cli.calibrate import main as calibrate_main

    folder = tmp_path / "model"
    shutil.copytree(trained["dir"] / "last_model", folder)
    lines = [ln.split("\t") for ln in trained["test"].read_text().splitlines()]
    paths = [str(trained["test"].parent / p) for p, _ in lines]
    labels = [lab for _, lab in lines]
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(
        f"{int(labels[i] == labels[j])} {paths[i]} {paths[j]}\n"
        for i in range(len(paths)) for j in range(i + 1, len(paths))
    ))  # fmt: skip
    assert calibrate_main(["--model_path", str(folder), "--trials", str(trials), "--rule", "far", "--target", "0.1",
                           "--force", "--use_gpu", "false"]) == 0  # fmt: skip
    stored = json.loads((folder / "calibration.json").read_text())
    assert stored["score_type"] == "as_norm_model"  # scored as the predictor scores: AS-norm with the cohort
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "ignoring it" warning
        p = MVectorPredictor(folder, use_gpu=False, audio_db_path=tmp_path / "db")
    assert p.calibration is not None and p.threshold_info["rule"] == "far"
