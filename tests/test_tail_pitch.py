"""Issue 23's pitch augmentation: the same voice at another pitch (formants kept), optionally a speaker of its own."""

from __future__ import annotations

import numpy as np
import pytest
from tail_helpers import tiny_trainer

from mvector.audio.augment import (
    WaveAugmenter,
    load_augmentation_config,
    pitch_label_factors,
    speed_label_factors,
    speed_label_groups,
)
from mvector.audio.pitch import _envelope, _frames, shift_pitch
from mvector.errors import ConfigError

SR = 16000


def _voice(f0: float, seconds: float = 2.0) -> np.ndarray:
    """A harmonic source at ``f0`` through two resonances (700 and 1800 Hz): a crude vowel."""
    from scipy.signal import lfilter

    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, int(7000 / f0)))

    def resonance(freq: float, bandwidth: float) -> list[float]:
        r = np.exp(-np.pi * bandwidth / SR)
        return [1.0, -2 * r * np.cos(2 * np.pi * freq / SR), r * r]

    y = lfilter([1.0], np.convolve(resonance(700, 100), resonance(1800, 150)), x)
    return (y / np.abs(y).max()).astype(np.float32)


def _f0(x: np.ndarray) -> float:
    z = x[len(x) // 4 : 3 * len(x) // 4].astype(np.float64)
    ac = np.correlate(z, z, "full")[len(z) - 1 :]
    lo, hi = SR // 400, SR // 60
    return SR / (lo + int(np.argmax(ac[lo:hi])))


def _mean_envelope(x: np.ndarray) -> np.ndarray:
    spectra, _ = _frames(x, 512, 128)
    return np.log(_envelope(spectra, 30)[4:-4].mean(axis=0))


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_shift_pitch_moves_f0_and_keeps_the_envelope(factor):
    from mvector.audio import resample

    x = _voice(140.0)
    y = shift_pitch(x, SR, factor)
    assert y.dtype == np.float32 and y.shape[0] == round(x.shape[0] / factor)
    assert _f0(y) == pytest.approx(140.0 * factor, rel=0.04)
    # the spectral envelope (formants) stays where it was; speed perturbation moves it
    speed = resample(x, int(round(SR * factor)), SR)
    freqs = np.fft.rfftfreq(512, 1 / SR)
    band = (freqs > 300) & (freqs < 4000)
    ref = _mean_envelope(x)[band]

    def shape_distance(z: np.ndarray) -> float:  # the envelope's shape, its overall level removed
        diff = _mean_envelope(z)[band] - ref
        return float(np.abs(diff - diff.mean()).mean())

    assert shape_distance(y) < 0.4 * shape_distance(speed)
    assert shape_distance(y) < 2.0 * shape_distance(_voice(140.0 * factor)) + 0.05  # near the true voice's
    # the level stays
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-3)


def test_shift_pitch_edge_cases():
    x = _voice(120.0, 0.5)
    assert shift_pitch(x, SR, 1.0) is x
    short = x[:100]
    assert np.array_equal(shift_pitch(short, SR, 1.25), short)  # shorter than one frame: unchanged
    with pytest.raises(ValueError, match="pitch factor"):
        shift_pitch(x, SR, 0.3)
    assert np.isfinite(shift_pitch(np.zeros(4000, dtype=np.float32), SR, 0.8)).all()


def test_pitch_groups_follow_the_speed_groups():
    conf = {
        "speed": {"prob": 0.5, "speeds": [0.9, 1.0, 1.1], "speaker_per_speed": True},
        "pitch": {"prob": 0.5, "factors": [1.25, 0.8], "speaker_per_pitch": True},
    }
    assert speed_label_factors(conf) == [0.9, 1.1] and pitch_label_factors(conf) == [0.8, 1.25]
    assert speed_label_groups(conf) == 5
    aug = WaveAugmenter(conf)
    assert aug.enabled == ["speed", "pitch"] and aug.max_speed == 1.25
    x = np.random.default_rng(0).standard_normal(48000).astype(np.float32)
    seen = {}
    for i in range(120):
        y, group = aug.augment(x, SR, np.random.default_rng(i))
        seen.setdefault(group, set()).add(y.shape[0])
    # group -> the one length its change gives (0: no voice change; 1, 2: speeds 0.9, 1.1; 3, 4: pitch 0.8, 1.25)
    assert seen == {0: {48000}, 1: {53333}, 2: {43636}, 3: {60000}, 4: {38400}}


def test_pitch_without_labels_and_off_by_default():
    conf = load_augmentation_config({"pitch": {"prob": 1.0, "factors": [0.8]}})
    assert conf["pitch"]["speaker_per_pitch"] is False and pitch_label_factors(conf) == []
    assert speed_label_groups(conf) == 1
    aug = WaveAugmenter(conf)
    y, group = aug.augment(_voice(150.0, 1.0), SR, np.random.default_rng(0))
    assert group == 0 and y.shape[0] == 20000
    assert load_augmentation_config(None)["pitch"]["prob"] == 0.0  # the bundled file leaves it off


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"factors": [0.3]}, "must lie in"),
        ({"factors": []}, "non-empty list of pitch factors"),
        ({"speaker_per_pitch": "yes"}, "must be true or false"),
        ({"prob": 1.5}, "must be in"),
        ({"factor": [0.8]}, "did you mean 'factors'"),
    ],
)
def test_bad_pitch_sections(section, message):
    with pytest.raises(ConfigError, match=message):
        load_augmentation_config({"pitch": section})


def test_trainer_counts_pitch_classes_and_keeps_pitch_on_the_cpu(tmp_path):
    augment = {
        "speed": {"prob": 0.5, "speeds": [0.9, 1.0, 1.1], "speaker_per_speed": True},
        "pitch": {"prob": 0.5, "factors": [0.8, 1.25], "speaker_per_pitch": True},
    }
    trainer = tiny_trainer(tmp_path, conf_changes={"augment_conf": augment}, **{"train_conf.gpu_augment": "true"})
    with pytest.warns(UserWarning, match="pitch augmentation runs on the CPU only"):
        trainer.setup_data()
    assert trainer.gpu_aug is None and trainer.num_classes == 15
    labels = set()
    for epoch in (1, 2):
        trainer.dataset.set_epoch(epoch)
        labels |= {trainer.dataset[i][1] for i in range(len(trainer.dataset))}
    assert max(labels) < 15 and any(label >= 9 for label in labels)  # pitch-shifted clips got their own labels
    trainer.setup_model()
    trainer.setup_optimizer()
    record = trainer.train_epoch(1)
    assert np.isfinite(record["train_loss"])
