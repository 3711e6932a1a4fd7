"""Trial lists, vectorised cosine scoring, trial generation, AS-norm and the plots."""

from __future__ import annotations

import os
from itertools import combinations

import numpy as np
import pytest
import torch

from mvector.audio import save_wav
from mvector.data.trials import generate_trials
from mvector.errors import DataListError
from mvector.evaluation.metrics import compute_eer
from mvector.evaluation.scoring import as_norm, cosine_score_trials, read_trials, save_det_plot, save_score_histogram


# ----------------------------------------------------------------------------- read_trials
def write(tmp_path, text, name="trials.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_trials_resolves_paths(tmp_path):
    path = write(tmp_path, "# comment\n1 id1/a.wav id1/b.wav\n\n0   id1/a.wav\t/abs/c.wav  \n")
    trials = read_trials(path)
    assert trials == [
        (1, str(tmp_path / "id1/a.wav"), str(tmp_path / "id1/b.wav")),
        (0, str(tmp_path / "id1/a.wav"), "/abs/c.wav"),
    ]
    other = read_trials(str(path), root="/data/vox1")
    assert other[0] == (1, "/data/vox1/id1/a.wav", "/data/vox1/id1/b.wav")
    assert other[1][2] == "/abs/c.wav"


@pytest.mark.parametrize(
    "text, match",
    [
        ("1 a.wav b.wav\n1 a.wav\n", r"trials\.txt:2: expected 'label enroll test' \(3 fields\), got 2"),
        ("1 a.wav b.wav\n\n1 a.wav b.wav c.wav\n", r"trials\.txt:3: .*got 4"),
        ("target a.wav b.wav\n", r"trials\.txt:1: label must be 0 or 1, got 'target'"),
        ("1 a.wav b.wav\n2 a.wav b.wav\n", r"trials\.txt:2: label must be 0 or 1, got '2'"),
        ("\n# nothing\n", r"trials\.txt: no trials"),
    ],
)
def test_read_trials_bad_lines(tmp_path, text, match):
    with pytest.raises(DataListError, match=match):
        read_trials(write(tmp_path, text))


def test_read_trials_missing_and_binary(tmp_path):
    with pytest.raises(DataListError, match="not found"):
        read_trials(tmp_path / "nope.txt")
    path = tmp_path / "bin.txt"
    path.write_bytes(b"1 a.wav \xff\xfe.wav\n")
    with pytest.raises(DataListError, match="bin.txt: not a UTF-8"):
        read_trials(path)


# ----------------------------------------------------------------------------- cosine_score_trials
def naive_cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_cosine_scores_every_input_form():
    rng = np.random.default_rng(0)
    mat = rng.standard_normal((50, 12)) * rng.uniform(0.1, 10, (50, 1))
    rows = rng.integers(0, 50, (300, 2))
    want = np.array([naive_cosine(mat[i], mat[j]) for i, j in rows])
    labels = rng.integers(0, 2, 300)
    np.testing.assert_allclose(cosine_score_trials(mat, rows), want, atol=1e-6)
    np.testing.assert_allclose(cosine_score_trials(mat, np.column_stack((labels, rows))), want, atol=1e-6)
    np.testing.assert_allclose(cosine_score_trials(torch.tensor(mat), torch.tensor(rows)), want, atol=1e-6)
    as_tuples = [(int(lab), int(i), int(j)) for lab, (i, j) in zip(labels, rows)]
    np.testing.assert_allclose(cosine_score_trials(mat, as_tuples), want, atol=1e-6)
    names = {f"u{i}.wav": mat[i] for i in range(50)}
    named = [(int(lab), f"u{i}.wav", f"u{j}.wav") for lab, (i, j) in zip(labels, rows)]
    np.testing.assert_allclose(cosine_score_trials(names, named), want, atol=1e-6)
    index = {f"u{i}.wav": i for i in range(50)}
    np.testing.assert_allclose(cosine_score_trials((mat, index), [t[1:] for t in named]), want, atol=1e-6)
    assert cosine_score_trials(mat, []).shape == (0,)


def test_cosine_scores_errors():
    mat = np.eye(3)
    with pytest.raises(DataListError, match="trial 1: no embedding for test 'z.wav'"):
        cosine_score_trials({"x.wav": mat[0], "y.wav": mat[1]}, [(1, "x.wav", "y.wav"), (0, "x.wav", "z.wav")])
    with pytest.raises(DataListError, match="trial 0: enroll row 3 out of range for 3 embeddings"):
        cosine_score_trials(mat, np.array([[3, 0]]))
    with pytest.raises(ValueError, match="row 2 is all zeros"):
        cosine_score_trials(np.array([[1.0, 0], [0, 1], [0, 0]]), [(0, 2)])
    with pytest.raises(ValueError, match=r"\(M, 2\)"):
        cosine_score_trials(mat, np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="dict"):
        cosine_score_trials(mat, [(1, "a", "b")])


# ----------------------------------------------------------------------------- generate_trials
def test_generate_all_pairs():
    labels = ["a", "b", "a", "c", "b", "a"]
    trials = generate_trials(labels)
    assert trials == [(int(labels[i] == labels[j]), i, j) for i, j in combinations(range(6), 2)]


def test_generate_balanced_sample():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, 300).tolist()
    trials = generate_trials(labels, num_pairs=2000, seed=3)
    assert len(trials) == 2000 and len(set(trials)) == 2000
    assert sum(t[0] for t in trials) == 1000
    for lab, i, j in trials:
        assert i < j and lab == int(labels[i] == labels[j])
    assert trials == generate_trials(labels, num_pairs=2000, seed=3)  # deterministic
    assert trials != generate_trials(labels, num_pairs=2000, seed=4)
    # non-target pairs are spread over the whole list, not only over the first rows
    firsts = np.array([i for lab, i, _ in trials if lab == 0])
    assert firsts.min() < 30 and firsts.max() > 250


def test_generate_fills_when_one_kind_runs_short():
    labels = [0, 0, 1, 1, 2, 2, 3]  # 3 target pairs, 18 non-target pairs
    trials = generate_trials(labels, num_pairs=10)
    assert len(trials) == 10 and sum(t[0] for t in trials) == 3
    assert len(generate_trials(labels, num_pairs=1000)) == 21  # all pairs there are
    assert generate_trials(torch.tensor(labels), num_pairs=1000) == generate_trials(labels)


def test_generate_errors():
    with pytest.raises(DataListError, match="at least 2"):
        generate_trials([5])
    with pytest.raises(ValueError, match="num_pairs"):
        generate_trials([0, 1, 1], num_pairs=0)
    with pytest.raises(ValueError, match="all_pairs_metrics"):
        generate_trials(np.arange(5000) % 7)


# ----------------------------------------------------------------------------- AS-norm
def naive_as_norm(score, e, t, cohort, k):
    def stats(x):
        sims = sorted((naive_cosine(x, c) for c in cohort), reverse=True)[:k]
        return np.mean(sims), np.std(sims)

    me, se = stats(e)
    mt, st = stats(t)
    return 0.5 * ((score - me) / se + (score - mt) / st)


def test_as_norm_matches_definition():
    rng = np.random.default_rng(1)
    enroll, test, cohort = rng.standard_normal((6, 8)), rng.standard_normal((6, 8)), rng.standard_normal((40, 8))
    enroll[3] = enroll[0]  # repeated rows are computed once, but each trial still gets its own result
    scores = np.array([naive_cosine(a, b) for a, b in zip(enroll, test)])
    got = as_norm(scores, enroll, test, cohort, top_k=7)
    want = [naive_as_norm(s, a, b, cohort, 7) for s, a, b in zip(scores, enroll, test)]
    assert got.shape == (6,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # top_k larger than the cohort uses the whole cohort
    whole = as_norm(scores, enroll, test, cohort, top_k=1000)
    np.testing.assert_allclose(whole, [naive_as_norm(*z, cohort, 40) for z in zip(scores, enroll, test)], rtol=1e-4)


def test_as_norm_improves_speaker_dependent_offsets():
    # "hub" speakers: a shared direction with a speaker-dependent weight makes some speakers score high
    # against everyone; AS-norm removes the per-speaker offset that raw cosine keeps.
    rng = np.random.default_rng(2)
    dim, n_spk, per = 32, 60, 6
    common = rng.standard_normal(dim)
    common /= np.linalg.norm(common)

    def speakers(n):
        centre = rng.standard_normal((n, dim))
        centre /= np.linalg.norm(centre, axis=1, keepdims=True)
        return centre + rng.uniform(0.0, 2.0, (n, 1)) * common

    spk = np.repeat(np.arange(n_spk), per)
    emb = speakers(n_spk)[spk] + 0.15 * rng.standard_normal((n_spk * per, dim))
    cohort = speakers(200) + 0.15 * rng.standard_normal((200, dim))
    trials = generate_trials(spk, num_pairs=6000, seed=0)
    labels = np.array([t[0] for t in trials])
    pairs = np.array([t[1:] for t in trials])
    raw = cosine_score_trials(emb, pairs)
    normed = as_norm(raw, emb[pairs[:, 0]], emb[pairs[:, 1]], cohort, top_k=50)
    raw_eer, norm_eer = compute_eer(raw, labels)[0], compute_eer(normed, labels)[0]
    assert raw_eer > 0.05 and norm_eer < 0.5 * raw_eer, (raw_eer, norm_eer)  # measured: 0.114 -> 0.012


def test_as_norm_errors():
    e = np.ones((3, 4))
    with pytest.raises(ValueError, match="3 scores but 2 enroll"):
        as_norm(np.zeros(3), e[:2], e, e)
    with pytest.raises(ValueError, match="sizes differ"):
        as_norm(np.zeros(3), e, e, np.ones((5, 3)))
    with pytest.raises(ValueError, match="top_k"):
        as_norm(np.zeros(3), e, e, e, top_k=0)
    with pytest.raises(ValueError, match="all zeros"):
        as_norm(np.zeros(3), e, e, np.zeros((3, 4)))


# ----------------------------------------------------------------------------- plots
def test_plots_are_valid_pngs(tmp_path):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 3000)
    scores = rng.standard_normal(3000) + 2 * labels
    det = tmp_path / "sub" / "det.png"
    hist = tmp_path / "hist.png"
    save_det_plot(scores, labels, det)
    save_score_histogram(scores, labels, str(hist), threshold=1.0)
    save_score_histogram(np.zeros(4), [0, 1, 0, 1], tmp_path / "flat.png")  # all-equal scores still plot
    for path in (det, hist, tmp_path / "flat.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(path)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
        assert img[..., :3].std() > 0.01  # something was drawn
    assert os.path.getsize(det) > 5000
    with pytest.raises(ValueError, match="no target"):
        save_det_plot([0.1, 0.2], [0, 0], tmp_path / "bad.png")


def test_det_plot_ticks_axes_and_title(tmp_path, monkeypatch):
    from scipy.special import ndtri

    import mvector.evaluation.scoring as scoring

    ticks = scoring.det_ticks(1e-4, 0.999)
    assert ticks[-1] == 0.999 and all(b - a >= 0.25 for a, b in zip(ndtri(ticks), ndtri(ticks[1:])))
    seen = {}
    real_save = scoring._save

    def spy(fig, path):
        ax = fig.axes[0]
        seen.update(title=ax.get_title(), xlim=ax.get_xlim(), legend=ax.get_legend())
        real_save(fig, path)

    monkeypatch.setattr(scoring, "_save", spy)
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.1, 1, 200), rng.normal(0, 1, 2000)]  # a weak model: curve near the diagonal
    scoring.save_det_plot(scores, np.r_[np.ones(200), np.zeros(2000)], tmp_path / "det.png", title="TDNN on t.txt")
    assert "TDNN on t.txt" in seen["title"] and "200 target" in seen["title"]
    assert seen["xlim"][1] == pytest.approx(ndtri(0.999))
    assert seen["legend"].get_bbox_to_anchor().y0 < seen["legend"].axes.bbox.y0  # below the axes, off the curve


def test_trials_with_one_class_name_the_file(tmp_path):
    from mvector.demo import tiny_checkpoint
    from mvector.embedding.backends import open_backend
    from mvector.evaluation.evaluator import EvalSettings, Evaluator

    for name in ("a.wav", "b.wav"):
        save_wav(tmp_path / name, np.random.default_rng(1).standard_normal(16000).astype("float32") * 0.1, 16000)
    (tmp_path / "trials.txt").write_text("1 a.wav b.wav\n")
    ev = Evaluator(open_backend(tiny_checkpoint(tmp_path / "m")), EvalSettings(), progress=False)
    with pytest.raises(DataListError, match=r"trials\.txt.*only one class"):
        ev.evaluate(trials_list=tmp_path / "trials.txt")
