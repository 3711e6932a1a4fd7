"""Score calibration: known answers (separable toy, shifted Gaussian scores), Cllr / min Cllr / actual DCF,
operating points, JSON storage with the model fingerprint, export carry-over, and `mvector calibrate`."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from mvector.errors import CheckpointError, ConfigError
from mvector.evaluation.calibration import Calibration, actual_dcf, cllr, duration_features, logit, min_cllr, pav_llr
from mvector.evaluation.calibration_fit import (
    calibration_report,
    choose_operating_point,
    cross_validated_llrs,
    fit_calibration,
)
from mvector.evaluation.calibration_store import (
    CALIBRATION_FILENAME,
    load_calibration,
    read_calibration,
    resolve_threshold,
    save_calibration,
)
from mvector.evaluation.metrics import compute_eer, compute_min_dcf
from mvector.evaluation.reliability_plot import reliability_curve, save_reliability_plot


def gaussian_scores(n_t: int, n_n: int, mu_t: float, mu_n: float, sd: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(mu_t, sd, n_t), rng.normal(mu_n, sd, n_n)]
    labels = np.r_[np.ones(n_t, int), np.zeros(n_n, int)]
    return scores, labels


# ------------------------------------------------------------------------------------------ known answers
def test_shifted_gaussian_scores_recover_the_true_llr() -> None:
    # Equal-variance Gaussians: the true LLR is linear, a = (mu_t - mu_n) / sd², b = -a·(mu_t + mu_n) / 2.
    scores, labels = gaussian_scores(20000, 20000, 0.45, 0.15, 0.1)
    cal = fit_calibration(scores, labels)
    a_true, b_true = 0.3 / 0.01, -30.0 * 0.3
    assert cal.weights["score"] == pytest.approx(a_true, rel=0.05)
    assert cal.bias == pytest.approx(b_true, rel=0.05)
    # the calibrated LLR is close to the truth over the bulk of the scores
    grid = np.linspace(0.1, 0.5, 9)
    np.testing.assert_allclose(cal.llr(grid), a_true * grid + b_true, atol=0.5)
    # and the calibration is near-perfect: Cllr ≈ min Cllr, act DCF ≈ min DCF
    report = calibration_report(scores, labels, cal, p_target=0.05)
    assert report["cllr"] - report["min_cllr"] < 0.01
    assert report["act_dcf"] - report["min_dcf"] < 0.03
    # a shift of every score by +0.2 shifts the bias by -a·0.2 and nothing else
    shifted = fit_calibration(scores + 0.2, labels)
    assert shifted.weights["score"] == pytest.approx(cal.weights["score"], rel=1e-6)
    assert shifted.bias == pytest.approx(cal.bias - 0.2 * cal.weights["score"], rel=1e-6)


def test_prior_weighting_makes_the_fit_independent_of_the_share_of_targets() -> None:
    balanced = fit_calibration(*gaussian_scores(4000, 4000, 0.5, 0.1, 0.12, seed=3))
    skewed = fit_calibration(*gaussian_scores(400, 8000, 0.5, 0.1, 0.12, seed=4))
    assert skewed.weights["score"] == pytest.approx(balanced.weights["score"], rel=0.1)
    assert skewed.score_for_llr(0.0) == pytest.approx(balanced.score_for_llr(0.0), abs=0.01)


def test_fitting_prior_changes_the_fit_weighting_but_not_the_meaning() -> None:
    scores, labels = gaussian_scores(5000, 5000, 0.5, 0.1, 0.1, seed=5)
    at_half = fit_calibration(scores, labels, prior=0.5)
    at_low = fit_calibration(scores, labels, prior=0.05)
    # both are LLRs of the same Gaussians: the crossing point stays near the midpoint
    assert at_half.score_for_llr(0.0) == pytest.approx(0.3, abs=0.01)
    assert at_low.score_for_llr(0.0) == pytest.approx(0.3, abs=0.03)
    assert at_low.prior == 0.05


def test_perfectly_separable_toy() -> None:
    scores = np.array([0.1, 0.15, 0.2, 0.25, 0.6, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    cal = fit_calibration(scores, labels)
    llrs = cal.llr(scores)
    assert np.isfinite(llrs).all() and np.isfinite(cal.bias)
    assert (llrs[labels == 1] > 3).all() and (llrs[labels == 0] < -3).all()
    assert cllr(llrs, labels) < 0.02
    assert min_cllr(scores, labels) == 0.0
    assert actual_dcf(llrs, labels, p_target=0.5) == 0.0
    assert 0.25 < cal.score_for_llr(0.0) < 0.6


def test_duration_quality_measures_help_when_short_trials_are_less_reliable() -> None:
    rng = np.random.default_rng(7)
    n = 6000
    labels = rng.integers(0, 2, n)
    d1, d2 = rng.uniform(1.0, 10.0, n), rng.uniform(1.0, 10.0, n)
    q = duration_features(d1, d2)
    # short trials: targets and non-targets overlap more, and every score sits lower
    sep = 0.1 + 0.1 * q["log_min_duration"]
    scores = np.where(labels == 1, sep, -sep) * 0.5 + 0.05 * q["log_min_duration"] + rng.normal(0, 0.1, n)
    plain = fit_calibration(scores, labels)
    qmf = fit_calibration(scores, labels, quality=q, quality_features=("log_min_duration", "log_max_duration"))
    assert qmf.needs_durations and qmf.quality_features == ("log_min_duration", "log_max_duration")
    assert cllr(qmf.llr(scores, q), labels) < cllr(plain.llr(scores), labels) - 0.01
    with pytest.raises(ConfigError, match="quality"):
        qmf.llr(scores)
    assert qmf.score_for_llr(0.0) is None


# ------------------------------------------------------------------------------------------ measures
def test_cllr_reference_values() -> None:
    assert cllr([0.0, 0.0, 0.0], [1, 0, 0]) == pytest.approx(1.0)
    # one target at LLR log 3 and one non-target at -log 3: each costs log2(4/3)
    assert cllr([math.log(3), -math.log(3)], [1, 0]) == pytest.approx(math.log2(4 / 3))
    assert cllr([-5.0, 5.0], [1, 0]) > 5  # confidently wrong is worse than saying nothing
    assert cllr([np.inf, -np.inf], [1, 0]) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        cllr([np.nan, 1.0], [1, 0])
    with pytest.raises(ValueError, match="both target and non-target"):
        cllr([1.0, 2.0], [1, 1])


def test_pav_is_monotone_optimal_and_invariant_to_monotone_maps() -> None:
    scores, labels = gaussian_scores(300, 700, 0.4, 0.1, 0.15, seed=9)
    llr = pav_llr(scores, labels)
    order = np.argsort(scores, kind="stable")
    ordered = llr[order]
    assert (ordered[1:] >= ordered[:-1]).all()
    assert min_cllr(np.exp(3 * scores), labels) == pytest.approx(min_cllr(scores, labels))
    # min Cllr is a lower bound of the Cllr of any monotone calibration, the fitted one included
    cal = fit_calibration(scores, labels)
    assert min_cllr(scores, labels) <= cllr(cal.llr(scores), labels) + 1e-9
    # ties are one bin: equal scores get equal LLRs
    tied = pav_llr([0.5, 0.5, 0.5, 0.9], [1, 0, 0, 1])
    assert tied[0] == tied[1] == tied[2]


def test_pav_small_example_by_hand() -> None:
    # sorted labels 0 1 0 1 1: PAV pools (1, 0) into 0.5; posteriors 0, .5, .5, 1, 1; prior 3/5
    llr = pav_llr([1, 2, 3, 4, 5], [0, 1, 0, 1, 1])
    expected_mid = 0.0 - float(logit(0.6))
    assert llr[0] == -np.inf and llr[3] == np.inf and llr[4] == np.inf
    assert llr[1] == pytest.approx(expected_mid) and llr[2] == pytest.approx(expected_mid)


def test_actual_dcf_uses_the_bayes_threshold_and_is_never_below_min_dcf() -> None:
    scores, labels = gaussian_scores(500, 5000, 0.45, 0.1, 0.12, seed=11)
    for p in (0.01, 0.05, 0.5):
        llrs = fit_calibration(scores, labels).llr(scores)
        assert actual_dcf(llrs, labels, p) >= compute_min_dcf(llrs, labels, p_target=p)[0] - 1e-12
    # raw cosine scores read as LLRs are badly calibrated at p = 0.01: they accept nearly nothing
    assert actual_dcf(scores, labels, 0.01) == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ConfigError, match="p_target"):
        actual_dcf(scores, labels, 1.5)


def test_cross_validated_llrs_are_honest() -> None:
    scores, labels = gaussian_scores(60, 60, 0.3, 0.1, 0.1, seed=13)
    cv = cross_validated_llrs(scores, labels, folds=5)
    fitted = fit_calibration(scores, labels).llr(scores)
    assert cv.shape == scores.shape
    assert cllr(cv, labels) >= cllr(fitted, labels) - 1e-9
    with pytest.raises(ConfigError, match="folds"):
        cross_validated_llrs(scores, labels, folds=1)


# ------------------------------------------------------------------------------------------ operating points
def test_far_rule_is_the_lowest_threshold_within_the_target() -> None:
    scores, labels = gaussian_scores(1000, 1000, 0.5, 0.1, 0.15, seed=17)
    op = choose_operating_point(scores, labels, "far", 0.01, data="trials.txt")
    non = scores[labels == 0]
    assert op["far"] <= 0.01 and op["far"] == pytest.approx((non >= op["threshold"]).mean())
    lower = scores[scores < op["threshold"]].max()  # the next operating point down breaks the target
    assert (non >= lower).mean() > 0.01
    assert op["rule"] == "far" and op["target"] == 0.01 and op["data"] == "trials.txt"
    assert op["n_target"] == 1000 and op["n_nontarget"] == 1000 and "created" in op


def test_frr_eer_and_probability_rules() -> None:
    scores, labels = gaussian_scores(1000, 1000, 0.5, 0.1, 0.15, seed=19)
    op = choose_operating_point(scores, labels, "frr", 0.05)
    tgt = scores[labels == 1]
    assert op["frr"] <= 0.05 and (tgt < np.nextafter(op["threshold"], np.inf)).mean() > 0.05 - 1e-3
    assert choose_operating_point(scores, labels, "eer")["threshold"] == compute_eer(scores, labels)[1]
    cal = fit_calibration(scores, labels)
    op = choose_operating_point(scores, labels, "probability", 0.9, calibration=cal, prior=0.5)
    assert cal.probability(op["threshold"], prior=0.5) == pytest.approx(0.9, abs=1e-9)
    assert op["llr_threshold"] == pytest.approx(math.log(9))
    with pytest.raises(ConfigError, match="needs a calibration"):
        choose_operating_point(scores, labels, "probability", 0.9)
    with pytest.raises(ConfigError, match="unknown threshold rule"):
        choose_operating_point(scores, labels, "fa", 0.01)
    with pytest.raises(ConfigError, match="needs a target"):
        choose_operating_point(scores, labels, "far")


# ------------------------------------------------------------------------------------------ storage
def test_json_round_trip_atomic_and_umask(tmp_path: Path) -> None:
    scores, labels = gaussian_scores(200, 200, 0.5, 0.1, 0.1, seed=23)
    cal = fit_calibration(scores, labels, model_fingerprint="f" * 64, data="t.txt")
    cal.operating_point = choose_operating_point(scores, labels, "far", 0.05, data="t.txt")
    old = os.umask(0o022)
    try:
        path = save_calibration(cal, tmp_path)
    finally:
        os.umask(old)
    assert path == tmp_path / CALIBRATION_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [CALIBRATION_FILENAME]  # no temporary file left
    data = json.loads(path.read_text())
    assert data["format"] == "mvector-calibration" and data["operating_point"]["rule"] == "far"
    again = read_calibration(path)
    assert again == cal
    np.testing.assert_allclose(again.llr(scores), cal.llr(scores))


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "damaged calibration JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"weights": {"score": 1.0}}', "missing field 'bias'"),
        ('{"weights": {"score": "x"}, "bias": 0}', "'weights' must map"),
        ('{"weights": {"snr": 1.0, "score": 1.0}, "bias": 0}', "unknown calibration feature"),
        ('{"weights": {"score": 1.0}, "bias": 0, "version": 99}', "newer"),
        ('{"weights": {"score": 1.0}, "bias": 0, "prior": 1.0}', "prior"),
    ],
)
def test_bad_calibration_files_name_the_problem(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / CALIBRATION_FILENAME).write_text(content)
    with pytest.raises(CheckpointError, match=match) as info:
        read_calibration(tmp_path)
    assert CALIBRATION_FILENAME in str(info.value)


def test_a_calibration_of_another_model_is_ignored_or_refused(tmp_path: Path) -> None:
    save_calibration(Calibration({"score": 5.0}, -2.0, model_fingerprint="a" * 64), tmp_path)
    assert load_calibration(tmp_path, "a" * 64).weights == {"score": 5.0}
    with pytest.warns(UserWarning, match="another model"):
        assert load_calibration(tmp_path, "b" * 64) is None
    with pytest.raises(CheckpointError, match="another model"):
        load_calibration(tmp_path, "b" * 64, strict=True)
    assert load_calibration(tmp_path / "nowhere", "a" * 64) is None


def test_reliability_curve_and_plot(tmp_path: Path) -> None:
    scores, labels = gaussian_scores(2000, 2000, 0.4, 0.1, 0.1, seed=29)
    cal = fit_calibration(scores, labels)
    pred, obs, n = reliability_curve(cal.probability(scores), labels, bins=10)
    assert n.sum() == 4000
    assert np.average(np.abs(pred - obs), weights=n) < 0.03  # calibrated: on the diagonal
    raw_pred, raw_obs, raw_n = reliability_curve((scores + 1) / 2, labels, bins=10)
    assert np.average(np.abs(raw_pred - raw_obs), weights=raw_n) > 0.2  # (cos+1)/2 is not a probability
    out = save_reliability_plot(scores, labels, tmp_path / "img" / "reliability.png", cal)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ model folders
@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from mvector.data.synthetic import generate_corpus
    from mvector.data.trials import generate_trials
    from mvector.demo import tiny_checkpoint

    root = tmp_path_factory.mktemp("calib")
    model = tiny_checkpoint(root / "model")
    listing = generate_corpus(root / "corpus", 3, 3, min_duration=0.8, max_duration=1.2)
    rows = [line.split("\t") for line in listing.read_text().splitlines()]
    trials = generate_trials([int(r[1]) for r in rows])
    trial_file = root / "corpus" / "trials.txt"
    trial_file.write_text("".join(f"{lab} {rows[i][0]} {rows[j][0]}\n" for lab, i, j in trials))
    return model, trial_file


def test_cli_calibrate_writes_a_fingerprinted_calibration(tiny_setup, tmp_path: Path, capsys) -> None:
    from mvector.checkpoint import model_fingerprint
    from mvector.cli.calibrate import main

    model, trials = tiny_setup
    out = tmp_path / "calibration.json"
    args = ["--model_path", str(model), "--trials", str(trials), "--output", str(out), "--folds", "2"]
    # 3 speakers, 27 non-target trials: refused (says why), nothing written ...
    assert main([*args, "--rule", "far", "--target", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "3 speakers (at least 10 needed)" in err and "--force" in err and not out.exists()
    # ... unless forced (the names mvector eval uses; --rule / --target above are their aliases)
    assert main([*args, "--calibration_rule", "far", "--calibration_target", "0.2", "--force",
                 "--save_image_path", str(tmp_path)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["note"].startswith("stored anyway (--force)") and len(line["eer_ci95"]) == 2
    for key in ("cllr", "min_cllr", "act_dcf", "min_dcf", "eer", "cllr_cv"):
        assert isinstance(line[key], float), key
    assert line["operating_point"]["rule"] == "far" and line["operating_point"]["data"] == str(trials)
    cal = read_calibration(out)
    assert cal.model_fingerprint == model_fingerprint(model)
    assert cal.operating_point["target"] == 0.2 and cal.operating_point["far"] <= 0.2
    assert (tmp_path / "reliability.png").is_file()
    # bad input: one error line, exit status 2
    assert main(["--model_path", str(model), "--trials", str(tmp_path / "missing.txt")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main([*args, "--rule", "far"]) == 2  # far without a target
    assert "--calibration_target" in capsys.readouterr().err


def test_calibration_travels_with_an_export(tiny_setup, tmp_path: Path) -> None:
    from mvector.checkpoint import model_fingerprint
    from mvector.export import export_checkpoint

    model, _ = tiny_setup
    folder = tmp_path / "model"
    import shutil

    shutil.copytree(model, folder)
    save_calibration(Calibration({"score": 8.0}, -4.0, model_fingerprint=model_fingerprint(folder)), folder)
    out = export_checkpoint(folder, tmp_path / "exported", formats=("torchscript",))
    meta = json.loads((out / "meta.json").read_text())
    cal = load_calibration(out, meta["fingerprint"], strict=True)
    assert cal is not None and cal.weights == {"score": 8.0}


def test_contrast_result_unpacks_like_the_old_tuple() -> None:
    import copy

    from mvector.inference.results import ContrastResult

    r = ContrastResult(0.72, True, 1.5, 0.8176, prior=0.5, threshold=0.6, threshold_source={"rule": "far"})
    score, same = r
    assert (score, same) == (0.72, True) and r == (0.72, True) and len(r) == 2
    assert r.llr == 1.5 and r.probability == 0.8176 and r.threshold_source == {"rule": "far"}
    again = copy.deepcopy(r)
    assert again.llr == 1.5 and tuple(again) == (0.72, True)
    assert json.loads(json.dumps(r.to_dict()))["threshold"] == 0.6
    plain = ContrastResult(0.1, False)
    assert plain.llr is None and plain.probability is None


def test_resolve_threshold_prefers_the_calibrated_operating_point(tmp_path: Path) -> None:

    assert resolve_threshold(tmp_path) == (0.5, {"rule": "default", "file": None})
    (tmp_path / "result.json").write_text(json.dumps({"threshold": 0.61, "eer": 0.1}))
    thr, source = resolve_threshold(tmp_path)
    assert thr == 0.61 and source["rule"] == "eer" and source["file"].endswith("result.json") and source["eer"] == 0.1
    scores, labels = gaussian_scores(300, 300, 0.5, 0.1, 0.1, seed=31)
    cal = fit_calibration(scores, labels)
    cal.operating_point = choose_operating_point(scores, labels, "far", 0.01, data="mine.txt")
    thr, source = resolve_threshold(tmp_path, cal)
    assert thr == cal.operating_point["threshold"]
    assert source["rule"] == "far" and source["target"] == 0.01 and source["data"] == "mine.txt"
    (tmp_path / "result.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="damaged JSON"):
        resolve_threshold(tmp_path)


def test_eval_calibrate_prints_the_measures_and_the_predictor_uses_the_calibration(
    tiny_setup, tmp_path: Path, capsys
) -> None:
    import shutil
    import warnings

    from mvector.cli.evaluate import main as eval_main
    from mvector.inference.predictor import MVectorPredictor

    model, trials = tiny_setup
    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    args = ["--resume_model", str(folder), "--calibrate", f"--dataset_conf.trials_list={trials}", "--force"]
    args += ["--calibration_rule", "far", "--calibration_target", "0.2", "--save_image_path", str(tmp_path)]
    assert eval_main(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("cllr", "min_cllr", "act_dcf"):
        assert isinstance(line[key], float) and line[key] >= 0, key
    assert line["min_cllr"] <= line["cllr"] + 1e-9
    assert (tmp_path / "reliability.png").is_file()
    cal = read_calibration(folder)
    assert cal.operating_point["rule"] == "far" and cal.operating_point["data"] == str(trials)

    wave = (np.random.default_rng(0).standard_normal(16000).astype("float32") * 0.1, 16000)
    other = (np.random.default_rng(1).standard_normal(12000).astype("float32") * 0.1, 16000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = MVectorPredictor(model_path=folder, use_gpu=False, audio_db_path=tmp_path / "db")
    assert p.threshold == cal.operating_point["threshold"]
    assert "calibration.json" in p.threshold_source and "far" in p.threshold_source
    result = p.contrast(wave, other)
    score, same = result
    assert result.llr == pytest.approx(cal.llr(score))
    assert result.probability == pytest.approx(cal.probability(score, prior=0.5))
    assert same == (score >= p.threshold) and result.calibrated
    assert p.contrast(wave, other, prior=0.01).probability < result.probability


def test_predictor_ignores_a_calibration_of_another_model(tiny_setup, tmp_path: Path) -> None:
    import shutil

    from mvector.inference.predictor import MVectorPredictor

    model, _ = tiny_setup
    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    save_calibration(Calibration({"score": 3.0}, 0.0, model_fingerprint="0" * 64), folder)
    with pytest.warns(UserWarning, match="another model"):
        p = MVectorPredictor(model_path=folder, use_gpu=False, audio_db_path=tmp_path / "db")
    assert p.calibration is None
    wave = (np.random.default_rng(0).standard_normal(16000).astype("float32") * 0.1, 16000)
    assert p.contrast(wave, wave).llr is None


def test_predictor_with_a_duration_calibration_decides_on_the_llr(tiny_setup, tmp_path: Path) -> None:
    import shutil
    import warnings

    from mvector.checkpoint import model_fingerprint
    from mvector.inference.predictor import MVectorPredictor

    model, _ = tiny_setup
    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    weights = {"score": 10.0, "log_min_duration": 2.0, "log_max_duration": 0.0}
    cal = Calibration(weights, -10.0, model_fingerprint=model_fingerprint(folder))
    cal.operating_point = {"rule": "probability", "target": 0.5, "prior": 0.5, "llr_threshold": 0.0, "threshold": None}
    save_calibration(cal, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = MVectorPredictor(model_path=folder, use_gpu=False, audio_db_path=tmp_path / "db")
    assert p.llr_threshold == 0.0 and "LLR >= 0" in p.threshold_source
    rng = np.random.default_rng(0)
    long, short = rng.standard_normal(32000).astype("float32") * 0.1, rng.standard_normal(8000).astype("float32") * 0.1
    r_long = p.contrast((long, 16000), (long, 16000))
    r_short = p.contrast((short, 16000), (short, 16000))
    # same score (1.0) on both, but the shorter pair carries less evidence: log(0.5 s) < log(2 s)
    assert r_long.score == pytest.approx(r_short.score, abs=1e-5)
    assert r_long.llr == pytest.approx(10.0 * r_long.score - 10.0 + 2.0 * np.log(2.0), abs=1e-4)
    assert r_short.llr == pytest.approx(10.0 * r_short.score - 10.0 + 2.0 * np.log(0.5), abs=1e-4)
    assert r_long.same_speaker is True and r_short.same_speaker is False  # the decision is on the LLR


def test_predictor_ignores_a_calibration_of_as_norm_scores(tiny_setup, tmp_path: Path) -> None:
    import shutil

    from mvector.checkpoint import model_fingerprint
    from mvector.inference.predictor import MVectorPredictor

    model, _ = tiny_setup
    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    as_norm = Calibration({"score": 1.0}, 0.0, score_type="as_norm", model_fingerprint=model_fingerprint(folder))
    save_calibration(as_norm, folder)
    with pytest.warns(UserWarning, match="as_norm scores"):
        p = MVectorPredictor(model_path=folder, use_gpu=False, audio_db_path=tmp_path / "db")
    assert p.calibration is None
