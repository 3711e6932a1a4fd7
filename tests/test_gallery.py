"""Decisions over a gallery (mvector.evaluation.gallery): the posterior and FPIR rules on scores with known
distributions, the FPIR threshold following the gallery, AS-norm over a tiny gallery, the acceptance calls, the
threshold warnings."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from mvector.errors import ConfigError
from mvector.evaluation.calibration import Calibration
from mvector.evaluation.calibration_fit import fit_calibration
from mvector.evaluation.calibration_store import read_calibration, save_calibration
from mvector.evaluation.gallery import (
    NonTargetTail,
    expected_fpir,
    fpir_threshold,
    gallery_as_norm,
    gallery_posterior,
    pair_far_for_fpir,
    posterior_llr_bar,
)
from mvector.evaluation.uncertainty import evidence_problem, rate_interval, refuse_weak_operating_point

MU_T, MU_N, SD = 0.6, 0.0, 0.12  # target and non-target cosine scores: N(0.6, 0.12) and N(0, 0.12)


@pytest.fixture(scope="module")
def known():
    """A calibration and a non-target tail fitted on trials drawn from the known distributions."""
    rng = np.random.default_rng(0)
    tar, non = rng.normal(MU_T, SD, 4000), rng.normal(MU_N, SD, 40000)
    cal = fit_calibration(np.r_[tar, non], np.r_[np.ones(tar.size), np.zeros(non.size)])
    return cal, NonTargetTail.from_scores(non)


@pytest.mark.parametrize("n", [1, 5, 20, 80])
def test_fpir_rule_keeps_the_asked_rate_at_every_gallery_size(known, n):
    _, tail = known
    rng = np.random.default_rng(n)
    strangers = rng.normal(MU_N, SD, (20000, n))  # a stranger against n enrolled speakers
    thr = fpir_threshold(tail, 0.05, n)
    measured = float((strangers.max(axis=1) >= thr).mean())
    lo, hi = rate_interval(int(measured * 20000), 20000, level=0.999)
    assert lo - 0.01 <= 0.05 <= hi + 0.01, (n, measured)
    # the old rule (one threshold for 5 % per pair) names far more strangers as the gallery grows
    single = tail.threshold_for_far(0.05)
    assert float((strangers.max(axis=1) >= single).mean()) > (0.2 if n >= 5 else 0.03)


@pytest.mark.parametrize("n", [5, 20, 80])
def test_posterior_rule_on_known_distributions(known, n):
    cal, tail = known
    rng = np.random.default_rng(100 + n)
    n_probe = 6000
    is_stranger = rng.random(n_probe) < 0.5  # half the probes are strangers: the prior 0.5 is right
    scores = rng.normal(MU_N, SD, (n_probe, n))
    truth = rng.integers(0, n, n_probe)
    own = ~is_stranger
    scores[own, truth[own]] = rng.normal(MU_T, SD, own.sum())
    decisions = [gallery_posterior(cal.llr(row), unknown_prior=0.5) for row in scores]
    named = np.array([d.best is not None for d in decisions])
    p_unknown = np.array([d.p_unknown for d in decisions])
    # the posterior of "someone else" is calibrated: on average it equals the share of strangers
    assert abs(p_unknown.mean() - is_stranger.mean()) < 0.03
    assert abs(p_unknown[is_stranger].mean() - 1.0) < 0.1
    # it names a stranger only above the LLR bar log(N), and the tail predicts how often that happens
    bar_score = cal.score_for_llr(posterior_llr_bar(n, 0.5))
    measured = float(named[is_stranger].mean())
    assert abs(measured - expected_fpir(tail, bar_score, n)) < 0.02
    found = named[own] & (np.array([d.best for d in decisions], dtype=object)[own] == truth[own])
    assert found.mean() > 0.9


def test_pair_far_and_posterior_bar_follow_the_gallery():
    assert pair_far_for_fpir(0.05, 40) < pair_far_for_fpir(0.05, 10) < 0.05
    assert posterior_llr_bar(40, 0.5) > posterior_llr_bar(10, 0.5) > 0
    assert posterior_llr_bar(10, 0.01) < 0  # nearly everyone is enrolled: a weak match is enough
    with pytest.raises(ConfigError, match="gallery size"):
        pair_far_for_fpir(0.05, 0)
    with pytest.raises(ConfigError, match="unknown_prior"):
        gallery_posterior([1.0], unknown_prior=1.0)


def test_nontarget_tail_round_trips_through_calibration_json(known, tmp_path):
    _, tail = known
    cal = Calibration(weights={"score": 10.0}, bias=-3.0, nontarget=tail.to_dict())
    save_calibration(cal, tmp_path)
    again = read_calibration(tmp_path)
    assert NonTargetTail.from_dict(again.nontarget) == tail
    broken = json.loads((tmp_path / "calibration.json").read_text())
    broken["nontarget"]["tail"] = {"loc": 0.0}
    (tmp_path / "calibration.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match="nontarget"):
        read_calibration(tmp_path)


def test_as_norm_on_a_tiny_gallery_matches_the_definition():
    rng = np.random.default_rng(3)
    models = rng.standard_normal((4, 8))
    models /= np.linalg.norm(models, axis=1, keepdims=True)
    probes = rng.standard_normal((5, 8))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    s, m = probes @ models.T, models @ models.T
    k = 2
    got = gallery_as_norm(s, m, top_k=k)
    for p in range(5):
        for i in range(4):
            others = [j for j in range(4) if j != i]
            spk_top = np.sort(m[i, others])[-k:]
            probe_top = np.sort(s[p, others])[-k:]
            want = 0.5 * ((s[p, i] - spk_top.mean()) / spk_top.std() + (s[p, i] - probe_top.mean()) / probe_top.std())
            assert got[p, i] == pytest.approx(want, rel=1e-9, abs=1e-9)
    with pytest.raises(ConfigError, match="at least 3"):
        gallery_as_norm(s[:, :2], m[:2, :2])


def test_refusal_to_store_an_operating_point_from_two_speakers():
    assert "2 speakers" in evidence_problem(2, 5000)
    with pytest.raises(ConfigError, match=r"2 speakers \(at least 10 needed\).*--force"):
        refuse_weak_operating_point(2, 5000, force=False, what="result.json")
    assert refuse_weak_operating_point(2, 5000, force=True, what="result.json").startswith("stored anyway")
    assert refuse_weak_operating_point(40, 5000, force=False, what="result.json") is None


# ------------------------------------------------------------------------------------------ through the predictor
@pytest.fixture()
def tiny_model(tmp_path):
    from mvector.demo import tiny_checkpoint

    return Path(tiny_checkpoint(tmp_path / "model"))


def _wave(seed: int) -> tuple[np.ndarray, int]:
    return (np.random.default_rng(seed).standard_normal(12000).astype("float32") * 0.1, 16000)


def test_fpir_threshold_follows_the_gallery_as_it_changes(tiny_model, tmp_path, known, monkeypatch):
    from mvector.inference.predictor import MVectorPredictor

    _, tail = known
    save_calibration(Calibration(weights={"score": 10.0}, bias=-3.0, nontarget=tail.to_dict()), tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model with a calibration: no threshold warning
        p = MVectorPredictor(tiny_model, audio_db_path=tmp_path / "db", use_gpu=False, open_set_rule="fpir")
    rng = np.random.default_rng(0)
    p.db.add_many({f"s{i}": rng.standard_normal((1, p.embd_dim)) for i in range(3)})
    r3 = p.recognize(_wave(1))
    assert r3.rule == "fpir" and r3.gallery_size == 3
    assert r3.threshold == pytest.approx(fpir_threshold(tail, 0.05, 3))
    assert "5.0% of strangers at 3 enrolled" in r3.promise and r3.expected_fpir == pytest.approx(0.05, abs=1e-6)
    p.db.add_many({f"t{i}": rng.standard_normal((1, p.embd_dim)) for i in range(27)})
    r30 = p.recognize(_wave(1))
    assert r30.gallery_size == 30 and r30.threshold > r3.threshold
    for i in range(27):
        p.remove(f"t{i}")
    assert p.recognize(_wave(1)).threshold == pytest.approx(r3.threshold)
    # a threshold given by the caller decides alone, and says so
    given = p.recognize(_wave(1), threshold=0.1)
    assert given.rule == "threshold" and given.threshold == 0.1 and "per comparison" in given.promise
    # the posterior rule of the same model: posteriors over the gallery and "someone else"
    post = p.recognize(_wave(1), rule="posterior", unknown_prior=0.3)
    assert post.rule == "posterior" and set(post.posteriors) == {"s0", "s1", "s2"}
    assert sum(post.posteriors.values()) + post.p_unknown == pytest.approx(1.0)
    # AS-norm with the other enrolled speakers as the cohort: on by a flag, needs its own threshold
    normed = p.recognize(_wave(1), score_norm="gallery", threshold=-100.0, candidates=3)
    emb = p.embed(_wave(1))
    means = np.stack([p.db.mean_embedding(n) for n in ("s0", "s1", "s2")]).astype(np.float64)
    raw = means @ (emb / np.linalg.norm(emb))
    want = gallery_as_norm(raw[None], means @ means.T, top_k=300)[0]
    assert normed.score_norm == "gallery" and normed[1] == pytest.approx(want.max(), abs=1e-4)
    assert [n for n, _ in normed.candidates] == [f"s{i}" for i in np.argsort(-want)]
    with pytest.raises(ConfigError, match="another scale"):
        p.recognize(_wave(1), score_norm="gallery")
    import mvector.inference.predictor as predictor_module

    with monkeypatch.context() as patch:  # a gallery too large to score every pair: a clear error, nothing allocated
        patch.setattr(predictor_module, "GALLERY_NORM_MAX_SPEAKERS", 2)
        with pytest.raises(ConfigError, match=r"3 x 3 scores.*at most 2 speakers.*score_norm='as_norm'"):
            p.recognize(_wave(1), score_norm="gallery", threshold=-100.0)
        patch.setattr(predictor_module, "GALLERY_NORM_MAX_SPEAKERS", 3)
        assert p.recognize(_wave(1), score_norm="gallery", threshold=-100.0).score_norm == "gallery"
    with pytest.raises(ConfigError, match="rule must be one of"):
        p.recognize(_wave(1), rule="bogus")
    p.close()


def test_acceptance_calls_calibrate_then_recognize_with_the_default_rule(tiny_model, tmp_path):
    from mvector.cli.calibrate import main as calibrate_main
    from mvector.data.samples import write_samples
    from mvector.inference.predictor import MVectorPredictor

    samples = tmp_path / "samples"
    write_samples(samples, pair_speakers=12, pair_recordings=4)
    trials = samples / "my_pairs.txt"
    argv = ["--model_path", str(tiny_model), "--trials", str(trials), "--rule", "far", "--target", "0.01"]
    assert calibrate_main(argv) == 0
    stored = json.loads((tiny_model / "calibration.json").read_text())
    assert stored["nontarget"]["n"] == 12 * 11 // 2 * 16  # every different-speaker pair of the trial list
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = MVectorPredictor(model_path=tiny_model, audio_db_path=tmp_path / "db", use_gpu=False)
    p.register("alice", [str(samples / f"alice{k}.wav") for k in (1, 2, 3)])
    p.register("bob", [str(samples / f"bob{k}.wav") for k in (1, 2, 3)])
    result = p.recognize(str(samples / "who.wav"))
    name, score = result
    assert name in (None, "alice", "bob") and isinstance(score, float)
    assert result.rule == p.open_set_rule == ("posterior_fpir" if p.calibration.weights["score"] > 0 else "fpir")
    assert result.fpir == 0.05 and result.threshold >= fpir_threshold(NonTargetTail.from_dict(stored["nontarget"]),
                                                                       0.05, 2)
    assert result.gallery_size == 2 and result.promise and result.expected_fpir is not None
    p.close()


def _diarize(model: Path, audio: Path, out: Path, *extra: str) -> str:
    env_cmd = [sys.executable, "-m", "mvector", "diarize", "--model_path", str(model), "--output_dir", str(out),
               "--num_speakers", "2", *extra, str(audio)]  # fmt: skip
    done = subprocess.run(env_cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_no_threshold_warning_when_the_thresholds_are_given(tiny_model, tmp_path):
    from mvector.audio import save_wav
    from mvector.inference.predictor import MVectorPredictor

    for stored in ("result.json", "calibration.json", "meta.json"):
        (tiny_model / stored).unlink(missing_ok=True)  # a folder that sets no threshold
    with pytest.warns(UserWarning, match=r"mvector calibrate --model_path .*mvector eval --model_path .*--set_thr"):
        MVectorPredictor(tiny_model, use_gpu=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MVectorPredictor(tiny_model, use_gpu=False, threshold=0.4)
    audio = tmp_path / "two.wav"
    save_wav(audio, np.concatenate([_wave(1)[0], _wave(2)[0]]), 16000)
    both = _diarize(tiny_model, audio, tmp_path / "a", "--threshold", "0.3", "--name_threshold", "0.4")
    assert "mvector calibrate" not in both
    one = _diarize(tiny_model, audio, tmp_path / "b", "--threshold", "0.3")
    assert "mvector calibrate" in one  # the name threshold still comes from the model: say what fixes it
