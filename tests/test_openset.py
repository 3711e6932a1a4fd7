"""Open-set identification: decisions with threshold and margin, DIR at FAR against a brute-force count, the
speaker database's AS-norm search against the reference AS-norm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mvector.errors import ConfigError, SpeakerDBError
from mvector.evaluation.openset import (
    dir_at_far,
    open_set_decision,
    open_set_metrics,
    threshold_for_far,
)
from mvector.evaluation.scoring import as_norm
from mvector.inference.speaker_db import SpeakerDatabase


def test_decision_reasons() -> None:
    assert open_set_decision([("ann", 0.8), ("bob", 0.2)], threshold=0.5).name == "ann"
    low = open_set_decision([("ann", 0.4), ("bob", 0.2)], threshold=0.5)
    assert low.name is None and low.reason == "below_threshold" and low.score == 0.4
    close = open_set_decision([("ann", 0.8), ("bob", 0.75)], threshold=0.5, margin=0.1)
    assert close.name is None and close.reason == "ambiguous" and close.runner_up == "bob"
    alone = open_set_decision([("ann", 0.8)], threshold=0.5, margin=0.3)
    assert alone.name == "ann" and alone.runner_up is None
    with pytest.raises(ConfigError, match="margin"):
        open_set_decision([("ann", 0.8)], threshold=0.5, margin=-1)
    with pytest.raises(ConfigError, match="no candidates"):
        open_set_decision([], threshold=0.5)


def brute_force(scores: np.ndarray, truth: np.ndarray, thr: float, margin: float) -> tuple[float, float]:
    hits = fa = 0
    for row, t in zip(scores, truth):
        order = np.argsort(-row)
        best, second = row[order[0]], (row[order[1]] if len(row) > 1 else -np.inf)
        accepted = best >= thr and best - second >= margin
        if t >= 0 and accepted and order[0] == t:
            hits += 1
        if t < 0 and accepted:
            fa += 1
    return hits / (truth >= 0).sum(), fa / (truth < 0).sum()


@pytest.mark.parametrize("margin", [0.0, 0.05])
def test_metrics_match_a_brute_force_count(margin: float) -> None:
    rng = np.random.default_rng(0)
    n_enrolled, n_probes = 6, 300
    truth = rng.integers(-1, n_enrolled, n_probes)
    scores = rng.normal(0.2, 0.1, (n_probes, n_enrolled))
    known = truth >= 0
    scores[np.flatnonzero(known), truth[known]] += rng.uniform(0.0, 0.5, known.sum())
    for thr in (0.2, 0.35, 0.5):
        m = open_set_metrics(scores, truth, thr, margin)
        assert (m["dir"], m["far"]) == pytest.approx(brute_force(scores, truth, thr, margin))
        assert m["dir"] + m["misidentified"] + m["false_reject"] == pytest.approx(1.0)
    for far in (0.01, 0.1, 0.3):
        thr = threshold_for_far(scores, truth, far, margin)
        dir_, far_reached = brute_force(scores, truth, thr, margin)
        assert far_reached <= far
        lower = np.nextafter(thr, -np.inf)  # any lower threshold breaks the target (it is the lowest one)
        assert brute_force(scores, truth, lower, margin)[1] > far or thr == -np.inf
        r = dir_at_far(scores, truth, fars=(far,), margin=margin)
        assert r[f"dir@far={far:g}"] == pytest.approx(dir_)


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown ones"):
        open_set_metrics([[0.9, 0.1]], [0], 0.5)
    with pytest.raises(ValueError, match=r"truth\[1\] = 5"):
        open_set_metrics([[0.9, 0.1], [0.2, 0.3]], [0, 5], 0.5)
    with pytest.raises(ValueError, match="matrix"):
        open_set_metrics([0.9, 0.1], [0, -1], 0.5)


def test_database_as_norm_search_matches_reference_as_norm(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    dim = 12
    speakers = rng.standard_normal((5, dim))
    cohort = rng.standard_normal((40, dim))
    queries = speakers[[0, 3]] + 0.3 * rng.standard_normal((2, dim))
    with SpeakerDatabase(tmp_path, "fp", dim) as db:
        db.add_many({f"s{i}": speakers[i] for i in range(5)})
        with pytest.raises(SpeakerDBError, match="no AS-norm cohort"):
            db.search(queries[0], score_norm="as_norm")
        db.set_cohort(cohort, source="random cohort")
        got = db.search(queries, top_k=5, score_norm="as_norm", cohort_top_k=10)
        for q, hits in zip(queries, got):
            names = [f"s{i}" for i in range(5)]
            raw = speakers / np.linalg.norm(speakers, axis=1, keepdims=True) @ (q / np.linalg.norm(q))
            ref = as_norm(raw, speakers, np.repeat(q[None], 5, axis=0), cohort, top_k=10)
            expected = sorted(zip(names, ref), key=lambda x: -x[1])
            assert [n for n, _ in hits] == [n for n, _ in expected]
            np.testing.assert_allclose([s for _, s in hits], [s for _, s in expected], atol=1e-4)
        # a new speaker changes the speakers' statistics cache; the search stays consistent
        db.add("s5", speakers[0] * -1)
        assert len(db.search(queries[0], top_k=6, score_norm="as_norm", cohort_top_k=10)[0]) == 6
        with pytest.raises(SpeakerDBError, match="score_norm"):
            db.search(queries[0], score_norm="z_norm")
        db.clear_cohort()
        assert db.cohort() is None and db.cohort_source is None


def test_as_norm_makes_scores_independent_of_other_enrolled_speakers(tmp_path: Path) -> None:
    # With AS-norm, a speaker's score depends on the cohort, not on who else is enrolled.
    rng = np.random.default_rng(2)
    dim = 16
    base = rng.standard_normal((3, dim))
    extra = rng.standard_normal((20, dim))
    query = base[1] + 0.2 * rng.standard_normal(dim)
    cohort = rng.standard_normal((50, dim))
    with SpeakerDatabase(tmp_path / "a", "fp", dim) as small, SpeakerDatabase(tmp_path / "b", "fp", dim) as big:
        small.add_many({f"b{i}": base[i] for i in range(3)})
        big.add_many({**{f"b{i}": base[i] for i in range(3)}, **{f"x{i}": extra[i] for i in range(20)}})
        small.set_cohort(cohort)
        big.set_cohort(cohort)
        a = dict(small.search(query, top_k=3, score_norm="as_norm", cohort_top_k=20)[0])
        b = dict(big.search(query, top_k=23, score_norm="as_norm", cohort_top_k=20)[0])
        assert a["b1"] == pytest.approx(b["b1"], abs=1e-5)


def test_predictor_recognize_answers_unknown(tmp_path: Path) -> None:
    import warnings

    from mvector.data.synthetic import make_voices, synthesize_utterance
    from mvector.demo import tiny_checkpoint
    from mvector.inference.predictor import MVectorPredictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = MVectorPredictor(tiny_checkpoint(tmp_path / "m"), audio_db_path=tmp_path / "db", use_gpu=False)
    voices = make_voices(3, seed=0)
    clip = [(synthesize_utterance(v, 1.0, rng=np.random.default_rng(i)), 16000) for i, v in enumerate(voices)]
    p.register("ann", clip[0])
    p.register("bob", clip[1])
    stranger = clip[2]
    top = p.rank_speakers(stranger, top_k=2)
    best, second = top[0][1], top[1][1]
    name, score = p.recognize(stranger, threshold=best + 1e-6)  # below the threshold: unknown
    assert name is None and score == pytest.approx(best)
    r = p.recognize(stranger, threshold=-1.0, margin=(best - second) + 1e-6)  # best and second too close
    assert r[0] is None and r.reason == "ambiguous" and r.unknown and r.runner_up == top[1][0]
    r = p.recognize(stranger, threshold=-1.0, margin=0.0)
    assert r[0] == top[0][0] and r.reason == "accepted"
    assert p.recognize(clip[0], threshold=-1.0)[0] == "ann"
    with pytest.raises(ConfigError, match="another scale"):
        p.recognize(stranger, score_norm="as_norm")
    p.db.set_cohort(p.embed_batch([stranger, clip[0], clip[1]]))
    r = p.recognize(clip[0], threshold=-100.0, score_norm="as_norm", cohort_top_k=2)
    assert r.score_norm == "as_norm" and r[0] is not None
    p.close()


def test_open_set_protocol_counts_and_checks() -> None:
    from mvector.evaluation.openset import open_set_protocol

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((9, 24))
    emb = np.repeat(centres, 6, axis=0) + 0.2 * rng.standard_normal((54, 24))
    spk = np.repeat(np.arange(9), 6)
    r = open_set_protocol(emb, spk, repeats=4, threshold=0.6, margin=0.0)
    assert r["n_unknown_speakers"] == 3 and r["n_enrolled_speakers"] == 6
    assert r["dir@far=0.01"] == pytest.approx(1.0) and r["decisions"]["far"] == 0.0
    closed = open_set_protocol(emb, spk, repeats=4, threshold=-1.0)
    assert closed["decisions"]["far"] == 1.0  # accepting everything names a speaker for every stranger
    with pytest.raises(ConfigError, match="unknown_fraction"):
        open_set_protocol(emb, spk, unknown_fraction=1.0)
    with pytest.raises(ValueError, match="more than 6 recordings"):
        open_set_protocol(emb, spk, enrol_per_speaker=6)


def test_eval_open_set_reports_dir_at_far(tmp_path: Path, capsys) -> None:
    import json

    from mvector.cli.evaluate import main as eval_main
    from mvector.data.synthetic import generate_corpus
    from mvector.demo import tiny_checkpoint

    model = tiny_checkpoint(tmp_path / "m")
    listing = generate_corpus(tmp_path / "corpus", 4, 4, min_duration=0.8, max_duration=1.0)
    args = ["--resume_model", str(model), "--open_set", "--open_set_repeats", "2", "--margin", "0.01"]
    assert eval_main([*args, f"--dataset_conf.test_list={listing}"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])["open_set"]
    assert result["n_enrolled_speakers"] + result["n_unknown_speakers"] == 4 and result["repeats"] == 2
    # DIR grows with the false-alarm rate it is read at and never passes the closed-set rank-1 rate.
    assert result["dir@far=0.01"] <= result["dir@far=0.05"] <= result["dir@far=0.1"] <= result["rank1"] <= 1.0
    assert result["decisions"]["margin"] == 0.01 and "open set" in out
    assert result["score_type"] == "cosine"

    # a model folder with a stored AS-norm cohort: the protocol scores on that scale, the threshold's scale
    from mvector.embedding.backends import open_backend
    from mvector.evaluation.score_norm import ScoreNorm

    dim = open_backend(model).embd_dim
    cohort = np.random.default_rng(0).standard_normal((12, dim)).astype(np.float32)
    ScoreNorm(np.zeros(dim, np.float32), None, cohort / np.linalg.norm(cohort, axis=1, keepdims=True), 4).save(model)
    assert eval_main([*args, f"--dataset_conf.test_list={listing}"]) == 0
    normed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["open_set"]
    assert normed["score_type"] == "as_norm_model"
    assert normed["decisions"]["threshold"] == result["decisions"]["threshold"]


def test_open_set_scores_a_model_with_a_cohort_as_the_speaker_database_searches(tmp_path: Path) -> None:
    """A model that stores an AS-norm cohort has its threshold on the AS-norm scale: the open-set protocol scores
    on that scale, equal to the database search the predictor runs (not on cosine, which the threshold is not on)."""
    from mvector.evaluation.openset import gallery_scores
    from mvector.evaluation.score_norm import ScoreNorm
    from mvector.inference.speaker_db import SpeakerDatabase

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((30, 16))
    train = np.repeat(centres[:20], 4, axis=0) + 0.5 * rng.standard_normal((80, 16))
    norm = ScoreNorm.fit(train, np.repeat(np.arange(20), 4), cohort="utterances", top_k=10)
    enrol = np.repeat(centres[20:], 3, axis=0) + 0.4 * rng.standard_normal((30, 16))
    probes = centres[20:] + 0.4 * rng.standard_normal((10, 16))
    unit = enrol / np.linalg.norm(enrol, axis=1, keepdims=True)
    means = unit.reshape(10, 3, 16).mean(axis=1)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    unit_probes = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    ours = gallery_scores(unit_probes, means, norm)
    with SpeakerDatabase(tmp_path / "db", "m", 16) as db:
        db.add_many({f"s{i}": enrol[3 * i : 3 * i + 3] for i in range(10)})
        hits = db.search(
            norm.transform(unit_probes), top_k=10, score_norm="as_norm", cohort=norm.cohort,
            transform=norm.transform, cohort_top_k=norm.top_k,
        )  # fmt: skip
    for row, hit in zip(ours, hits):
        for name, score in hit:
            assert abs(row[int(name[1:])] - score) < 1e-4
    cosine = gallery_scores(unit_probes, means, None)
    assert np.abs(ours - cosine).max() > 0.5  # the two scales differ: a cosine threshold would mean something else
