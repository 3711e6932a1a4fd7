"""Tests of mvector.data.synthetic: determinism, durations, list format, and speakers that differ measurably
without being trivially separable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mvector.audio import audio_duration, read_audio
from mvector.data.synthetic import Voice, generate_corpus, make_voices, synthesize_utterance
from mvector.errors import ConfigError


def test_make_voices_deterministic_and_seeded() -> None:
    a, b, c = make_voices(6, seed=0), make_voices(6, seed=0), make_voices(6, seed=1)
    assert a == b
    assert all(x != y for x, y in zip(a, c))
    assert [v.name for v in a] == [f"spk{i:03d}" for i in range(6)]
    assert len({v.f0_mean for v in a}) == 6
    f0 = np.array([v.f0_mean for v in make_voices(40)])
    assert f0.min() < 130 and f0.max() > 180  # both low and high voices
    with pytest.raises(dataclasses.FrozenInstanceError):
        a[0].f0_mean = 100.0  # type: ignore[misc]
    with pytest.raises(ConfigError):
        make_voices(0)


@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_synthesize_utterance_shape_and_determinism(sample_rate: int) -> None:
    voice = make_voices(1, seed=2)[0]
    x = synthesize_utterance(voice, 1.3, sample_rate, rng=np.random.default_rng(7))
    y = synthesize_utterance(voice, 1.3, sample_rate, rng=np.random.default_rng(7))
    z = synthesize_utterance(voice, 1.3, sample_rate, rng=np.random.default_rng(8))
    assert x.dtype == np.float32 and x.shape == (round(1.3 * sample_rate),)
    np.testing.assert_array_equal(x, y)
    assert not np.array_equal(x, z)
    assert np.isfinite(x).all() and 0.1 < np.abs(x).max() <= 1.0
    assert np.std(x) > 0.01  # not silence
    with pytest.raises(ConfigError):
        synthesize_utterance(voice, 0.0)
    with pytest.raises(ConfigError):
        synthesize_utterance("spk000", 1.0)  # type: ignore[arg-type]


def test_speech_like_pitch_follows_voice() -> None:
    # The dominant low-frequency peak (the fundamental) of a low voice is below that of a high voice.
    voices = sorted(make_voices(20, seed=0), key=lambda v: v.f0_mean)
    low, high = voices[0], voices[-1]

    def fundamental(voice: Voice) -> float:
        x = np.concatenate([synthesize_utterance(voice, 1.0, 16000, rng=np.random.default_rng(k)) for k in range(3)])
        spectrum = np.abs(np.fft.rfft(x))
        freqs = np.fft.rfftfreq(len(x), 1 / 16000)
        band = (freqs > 60) & (freqs < 400)
        return float(freqs[band][np.argmax(spectrum[band])])

    assert fundamental(low) < fundamental(high)
    assert high.f0_mean / low.f0_mean > 1.5


def test_generate_corpus_layout_list_and_durations(tmp_path: Path) -> None:
    lst = generate_corpus(
        tmp_path / "c", num_speakers=3, utterances_per_speaker=2, sample_rate=8000, min_duration=0.5, max_duration=0.9
    )
    assert lst == tmp_path / "c" / "list.txt"
    lines = lst.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    for i, line in enumerate(lines):
        rel, label = line.split("\t")
        spk = i // 2
        assert rel == f"spk{spk:03d}/spk{spk:03d}_{i % 2:03d}.wav" and label == str(spk)
        path = tmp_path / "c" / rel
        assert 0.5 <= audio_duration(path) <= 0.9
        samples, sr = read_audio(path)
        assert sr == 8000 and samples.ndim == 1 and np.abs(samples).max() > 0.1
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["list.txt", "spk000", "spk001", "spk002"]


def test_generate_corpus_byte_identical_and_seeded(tmp_path: Path) -> None:
    kwargs = dict(num_speakers=2, utterances_per_speaker=2, sample_rate=8000, min_duration=0.4, max_duration=0.6)
    a = generate_corpus(tmp_path / "a", **kwargs, list_name="train.txt")
    b = generate_corpus(tmp_path / "b", **kwargs, list_name="train.txt")
    c = generate_corpus(tmp_path / "c", **kwargs, seed=1, list_name="train.txt")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5 and Path("train.txt") in files
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert a.read_text() == b.read_text() == c.read_text()  # same names and labels...
    for rel in files:
        if rel.suffix == ".wav":  # ...but other voices and content
            assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()
    with pytest.raises(ConfigError):
        generate_corpus(tmp_path / "d", **kwargs, list_name="../x.txt")
    with pytest.raises(ConfigError):
        generate_corpus(tmp_path / "d", num_speakers=2, min_duration=2.0, max_duration=1.0)


def _log_spectrum_embedding(x: np.ndarray, n_fft: int = 512, hop: int = 160) -> np.ndarray:
    """A crude speaker embedding: the mean log power spectrum of the louder frames, level-normalised."""
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energy = power.sum(axis=1)
    mean_log = np.log(power[energy > energy.max() * 1e-3] + 1e-10).mean(axis=0)
    return mean_log - mean_log.mean()


def _eer(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(-scores)
    sorted_labels = labels[order]
    tpr = np.cumsum(sorted_labels) / sorted_labels.sum()
    fpr = np.cumsum(1 - sorted_labels) / (1 - sorted_labels).sum()
    i = int(np.argmin(np.abs((1 - tpr) - fpr)))
    return float(((1 - tpr[i]) + fpr[i]) / 2)


def test_speakers_differ_but_are_not_trivially_separable() -> None:
    voices = make_voices(8, seed=0)
    embeddings, labels = [], []
    for s, voice in enumerate(voices):
        for k in range(5):
            x = synthesize_utterance(voice, 2.0, 16000, rng=np.random.default_rng([s, k]))
            embeddings.append(_log_spectrum_embedding(x))
            labels.append(s)
    emb = np.array(embeddings)
    emb -= emb.mean(axis=0)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lab = np.array(labels)
    scores = emb @ emb.T
    upper = np.triu_indices(len(lab), 1)
    same = (lab[:, None] == lab[None, :])[upper]
    trial_scores = scores[upper]
    same_mean, diff_mean = trial_scores[same].mean(), trial_scores[~same].mean()
    eer = _eer(trial_scores, same.astype(float))
    assert same_mean > diff_mean + 0.1, (same_mean, diff_mean)  # speakers differ measurably...
    assert 0.03 < eer < 0.45, eer  # ...but a crude baseline cannot separate them
