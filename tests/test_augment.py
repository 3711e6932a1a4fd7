"""Waveform augmentation (mvector.audio.augment, mvector.audio.gpu_augment): each effect does what its config says
(speeds as speakers with their label groups, the equalizer's bell and band limits, coloured noise at its SNR);
config validation; folder warnings; the trainer's classifier sized for speed groups."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mvector.audio import save_wav
from mvector.audio.augment import (
    AUGMENTATION_DEFAULTS,
    DEFAULT_CONFIG_PATH,
    WaveAugmenter,
    build_augmenter,
    load_augmentation_config,
    spec_augment_kwargs,
    speed_label_groups,
)
from mvector.audio.gpu_augment import GpuAugmenter
from mvector.config import load_config
from mvector.data.dataset import TrainDataset
from mvector.data.lists import Utterance
from mvector.data.synthetic import generate_corpus
from mvector.errors import ConfigError
from mvector.training.trainer import MVectorTrainer

SR = 16000


def _clip(folder, name: str, seconds: float, sample_rate: int = 16000) -> str:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    path = folder / name
    save_wav(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate)
    return str(path)


def tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speech_like(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = sum(tone(f, seconds, 0.1) for f in (180.0, 360.0, 720.0, 1500.0))
    return (x + 0.01 * rng.standard_normal(x.shape[0])).astype(np.float32)


def peak_frequency(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.argmax(spec) * SR / x.shape[0])


def only(name: str, **keys) -> dict:
    return {name: {"prob": 1.0, **keys}}


def test_bundled_config_documents_and_holds_every_key() -> None:
    conf = load_augmentation_config(None)
    assert set(conf) == set(AUGMENTATION_DEFAULTS)
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    assert set(raw) == set(AUGMENTATION_DEFAULTS)
    for name, keys in AUGMENTATION_DEFAULTS.items():
        assert set(raw[name]) == set(keys), name
        # shift is off; the equalizer and the generated noise trained worse at a 5-epoch budget (docs/accuracy.md);
        # pitch (issue 23) is meant with speaker_per_pitch, which this general-purpose file leaves off
        assert 0 < conf[name]["prob"] < 1 or name in ("shift", "equalizer", "colored_noise", "pitch")
    text = DEFAULT_CONFIG_PATH.read_text()
    for keys in AUGMENTATION_DEFAULTS.values():
        for key in keys:  # every key is documented by a comment on its line or the section line
            lines = [line for line in text.splitlines() if line.strip().startswith(f"{key}:")]
            assert lines, key
    assert conf["noise"]["noise_dir"] == "dataset/noise" and conf["reverb"]["rir_dir"] == "dataset/rir"
    # the loaded dict loads again unchanged (the trainer passes it on to build_augmenter)
    assert load_augmentation_config(conf) == conf


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'speedz'.*did you mean 'speed'"):
        load_augmentation_config({"speedz": {"prob": 1.0}})
    with pytest.raises(ConfigError, match=r"unknown key 'min_snr' in augmentation config \[noise\]"):
        load_augmentation_config({"noise": {"min_snr": 3}})
    with pytest.raises(ConfigError, match=r"volume.prob .* must be in \[0, 1\]"):
        load_augmentation_config({"volume": {"prob": 1.5}})
    with pytest.raises(ConfigError, match="min_gain_db .* is larger than"):
        load_augmentation_config({"volume": {"min_gain_db": 3.0, "max_gain_db": -3.0}})
    with pytest.raises(ConfigError, match="speeds"):
        load_augmentation_config({"speed": {"speeds": []}})
    with pytest.raises(ConfigError, match="speeds"):
        load_augmentation_config({"speed": {"speeds": [0.1]}})
    with pytest.raises(ConfigError, match="freq_masks .* integer"):
        load_augmentation_config({"spec_aug": {"freq_masks": 1.5}})
    with pytest.raises(ConfigError, match="must be a number"):
        load_augmentation_config({"shift": {"max_shift_ms": "lots"}})
    bad = tmp_path / "aug.yml"
    bad.write_text("volume: [1, 2\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_augmentation_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_augmentation_config(tmp_path / "missing.yml")


def test_yaml_file_sections_left_out_are_off(tmp_path: Path) -> None:
    path = tmp_path / "aug.yml"
    path.write_text("volume:\n  prob: 1.0\nnoise: null\n")
    conf = load_augmentation_config(path)
    assert conf["volume"]["prob"] == 1.0 and conf["volume"]["max_gain_db"] == 6.0
    assert all(conf[name]["prob"] == 0.0 for name in ("speed", "noise", "reverb", "shift", "spec_aug"))
    assert build_augmenter(path).enabled == ["volume"]
    assert spec_augment_kwargs(path) is None


def test_prob_zero_is_identity_and_builds_nothing(tmp_path: Path) -> None:
    conf = {name: {"prob": 0.0} for name in AUGMENTATION_DEFAULTS}
    assert build_augmenter(conf) is None
    augmenter = WaveAugmenter(conf)
    x = speech_like()
    y = augmenter(x, SR, np.random.default_rng(0))
    assert np.array_equal(x, y) and y is not x


def test_volume_gain_in_db() -> None:
    x = speech_like()
    fixed = build_augmenter(only("volume", min_gain_db=-4.5, max_gain_db=-4.5))
    y = fixed(x, SR, np.random.default_rng(1))
    assert 20 * np.log10(np.linalg.norm(y) / np.linalg.norm(x)) == pytest.approx(-4.5, abs=1e-4)
    ranged = build_augmenter(only("volume", min_gain_db=-3.0, max_gain_db=6.0))
    gains = [
        20 * np.log10(np.linalg.norm(ranged(x, SR, np.random.default_rng(s))) / np.linalg.norm(x)) for s in range(30)
    ]
    assert min(gains) >= -3.0 - 1e-4 and max(gains) <= 6.0 + 1e-4
    assert max(gains) - min(gains) > 3.0  # actually drawn, not fixed


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_length_and_pitch_by_the_factor(factor: float) -> None:
    x = tone(1000.0, 1.0)
    augmenter = build_augmenter(only("speed", speeds=[factor]))
    assert augmenter.max_speed == factor
    y = augmenter(x, SR, np.random.default_rng(0))
    assert y.dtype == np.float32
    assert abs(y.shape[0] - x.shape[0] / factor) <= 1
    assert peak_frequency(y) == pytest.approx(1000.0 * factor, rel=0.01)


def test_speed_one_only_is_not_enabled() -> None:
    assert build_augmenter(only("speed", speeds=[1.0])) is None


def test_shift_moves_the_signal_and_keeps_length() -> None:
    x = np.arange(1, 1601, dtype=np.float32)
    augmenter = build_augmenter(only("shift", max_shift_ms=5.0))  # up to 80 samples
    seen = set()
    for seed in range(20):
        y = augmenter(x, SR, np.random.default_rng(seed))
        assert y.shape == x.shape
        nz = np.flatnonzero(y)
        if y[0] == 0:  # shifted right by k: zeros then x[0:]
            k = int(nz[0])
            assert np.array_equal(y[k:], x[: x.shape[0] - k]) and not y[:k].any()
        else:  # shifted left by k: x[k:] then zeros
            k = -int(y[0] - 1)
            assert np.array_equal(y[: x.shape[0] + k], x[-k:]) and not y[x.shape[0] + k :].any()
        assert abs(k) <= 80
        seen.add(k)
    assert len(seen) > 5 and any(k > 0 for k in seen) and any(k < 0 for k in seen)


def write_noise(folder: Path, name: str, seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path = folder / name
    save_wav(path, (0.2 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR)
    return path


def test_noise_at_the_drawn_snr(tmp_path: Path) -> None:
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    write_noise(noise_dir, "long.wav", 2.0, 0)
    x = speech_like(1.0)
    augmenter = build_augmenter(only("noise", noise_dir=str(noise_dir), min_snr_db=7.0, max_snr_db=7.0))
    y = augmenter(x, SR, np.random.default_rng(0))
    added = y - x
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))
    assert snr == pytest.approx(7.0, abs=0.01)
    ranged = build_augmenter(only("noise", noise_dir=str(noise_dir), min_snr_db=0.0, max_snr_db=20.0))
    snrs = []
    for seed in range(20):
        y = ranged(x, SR, np.random.default_rng(seed))
        snrs.append(10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y - x).astype(np.float64) ** 2)))
    assert min(snrs) >= -0.01 and max(snrs) <= 20.01 and max(snrs) - min(snrs) > 5


def test_short_noise_is_looped(tmp_path: Path) -> None:
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    write_noise(noise_dir, "short.flac", 0.1, 1)  # 1600 samples, FLAC read via the same loader
    x = speech_like(0.5)
    augmenter = build_augmenter(only("noise", noise_dir=str(noise_dir), min_snr_db=10.0, max_snr_db=10.0))
    added = augmenter(x, SR, np.random.default_rng(0)) - x
    assert added.shape == x.shape
    np.testing.assert_allclose(added[1600:3200], added[:1600], atol=1e-6)


def test_reverb_keeps_alignment_and_direct_level(tmp_path: Path) -> None:
    rir_dir = tmp_path / "rir"
    rir_dir.mkdir()
    rir = np.zeros(800, dtype=np.float32)
    rir[120] = 0.5  # direct path: delayed and attenuated in the file
    rir[520] = 0.25  # one echo 400 samples later at half the direct amplitude
    save_wav(rir_dir / "room.wav", rir, SR)
    x = speech_like(0.5)
    augmenter = build_augmenter(only("reverb", rir_dir=str(rir_dir)))
    y = augmenter(x, SR, np.random.default_rng(0))
    expected = x.copy()
    expected[400:] += 0.5 * x[:-400]
    assert y.shape == x.shape
    np.testing.assert_allclose(y, expected, atol=2e-4)  # 16-bit storage of the response


def test_missing_or_empty_folder_warns_once_and_disables(tmp_path: Path) -> None:
    missing = tmp_path / "no_noise_here"
    with pytest.warns(UserWarning) as record:
        augmenter = build_augmenter({**only("noise", noise_dir=str(missing)), **only("volume")})
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and str(missing) in messages[0] and "does not exist" in messages[0]
    assert augmenter.enabled == ["volume"]
    empty = tmp_path / "empty_rir"
    empty.mkdir()
    (empty / "readme.txt").write_text("no audio")
    with pytest.warns(UserWarning, match="empty_rir.*holds no audio files") as record:
        assert build_augmenter(only("reverb", rir_dir=str(empty))) is None
    assert len(record) == 1
    # a turned-off section does not look at its folder at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_augmenter({"noise": {"prob": 0.0, "noise_dir": str(missing)}})


def test_unreadable_noise_file_is_skipped_with_one_warning(tmp_path: Path) -> None:
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    (noise_dir / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav")
    augmenter = build_augmenter(only("noise", noise_dir=str(noise_dir)))
    x = speech_like(0.2)
    with pytest.warns(UserWarning, match="broken.wav"):
        y = augmenter(x, SR, np.random.default_rng(0))
    assert np.array_equal(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second read, no second warning
        assert np.array_equal(augmenter(x, SR, np.random.default_rng(1)), x)


def test_same_generator_same_result_and_bounded_cache(tmp_path: Path) -> None:
    noise_dir, rir_dir = tmp_path / "noise", tmp_path / "rir"
    noise_dir.mkdir()
    rir_dir.mkdir()
    for i in range(3):
        write_noise(noise_dir, f"n{i}.wav", 0.3, i)
    rir = np.zeros(200, dtype=np.float32)
    rir[10], rir[90] = 0.8, 0.3
    save_wav(rir_dir / "r.wav", rir, SR)
    conf = {
        "speed": {"prob": 0.7},
        "volume": {"prob": 0.7},
        "noise": {"prob": 0.7, "noise_dir": str(noise_dir)},
        "reverb": {"prob": 0.7, "rir_dir": str(rir_dir)},
        "shift": {"prob": 0.7, "max_shift_ms": 10.0},
    }
    a = WaveAugmenter(conf, max_cached_files=1)
    b = WaveAugmenter(conf)
    assert a.enabled == ["speed", "reverb", "noise", "volume", "shift"]
    x = speech_like(0.5)
    outputs = []
    for seed in range(8):
        ya = a(x, SR, np.random.default_rng(seed))
        yb = b(x, SR, np.random.default_rng(seed))
        np.testing.assert_array_equal(ya, yb)  # cache state never changes a result
        outputs.append(ya)
    assert len(a._cache._items) <= 1
    assert len({o.tobytes() for o in outputs}) > 4  # different generators, different results
    assert np.array_equal(x, speech_like(0.5))  # input untouched


def test_spec_augment_kwargs() -> None:
    kwargs = spec_augment_kwargs(load_augmentation_config(None))
    assert kwargs == {"prob": 0.5, "freq_masks": 1, "freq_mask_width": 8, "time_masks": 1, "time_mask_width": 10}
    assert spec_augment_kwargs({"spec_aug": {"prob": 1.0, "freq_masks": 0, "time_masks": 0}}) is None
    assert spec_augment_kwargs(None) is None


def test_speeds_as_speakers_shift_the_label_by_the_speed_group(tmp_path):
    path = _clip(tmp_path, "a.wav", 1.5)
    conf = {"speed": {"prob": 1.0, "speeds": [0.9, 1.1], "speaker_per_speed": True}}
    assert speed_label_groups(conf) == 3
    aug = WaveAugmenter(conf)
    assert aug.label_speeds == [0.9, 1.1]
    ds = TrainDataset([Utterance(path, 2)], max_duration=1.0, augmenter=aug, speed_label_stride=10)
    labels = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        labels.add(ds[0][1])
    assert labels == {12, 22}  # 2 + 1·10 at speed 0.9, 2 + 2·10 at speed 1.1
    plain = TrainDataset([Utterance(path, 2)], max_duration=1.0, augmenter=WaveAugmenter({"speed": conf["speed"]}))
    assert plain[0][1] == 2  # no stride: labels are kept
    kept = WaveAugmenter({"speed": {"prob": 1.0, "speeds": [0.9, 1.1]}})
    assert kept.label_speeds == [] and speed_label_groups({"speed": {"prob": 1.0, "speeds": [0.9, 1.1]}}) == 1
    with pytest.raises(ConfigError, match="speaker_per_speed"):
        WaveAugmenter({"speed": {"prob": 1.0, "speaker_per_speed": "yes"}})


def test_device_augmenter_reports_the_speed_group_of_each_clip():
    aug = GpuAugmenter({"speed": {"prob": 1.0, "speeds": [0.8, 1.0, 1.25], "speaker_per_speed": True}})
    waves = torch.randn(64, 8000)
    lengths = torch.full((64,), 8000)
    out, new_lengths, groups = aug(waves, lengths, torch.Generator().manual_seed(0), 12000, with_groups=True)
    assert set(groups.tolist()) == {0, 1, 2}
    expected = {0: 8000, 1: 10000, 2: 6400}  # 0.8 slows down (longer), 1.25 speeds up (shorter)
    for group, length in zip(groups.tolist(), new_lengths.tolist()):
        assert length == expected[group]
    assert len(aug(waves, lengths)) == 2


@pytest.mark.parametrize("gpu_augment", [False, True])
def test_trainer_sizes_the_classifier_for_speeds_as_speakers_and_trains(tmp_path, gpu_augment):
    train = generate_corpus(tmp_path / "train", num_speakers=3, utterances_per_speaker=3, max_duration=1.5)
    conf = load_config("tdnn", validate=False)
    conf["model_conf"] = {"channels": 16, "stats_channels": 32, "embd_dim": 8}
    conf["augment_conf"] = {"speed": {"prob": 1.0, "speeds": [0.9, 1.1], "speaker_per_speed": True}}
    overrides = {
        "dataset_conf.train_list": str(train),
        "dataset_conf.batch_size": 3,
        "dataset_conf.max_duration": 1.0,
        "dataset_conf.short_clips": "repeat",
        "feature_conf.num_mel_bins": 24,
        "train_conf.gpu_augment": gpu_augment,
    }
    trainer = MVectorTrainer(load_config(conf, overrides), use_gpu=False)
    trainer.setup_data()
    trainer.setup_model()
    trainer.setup_optimizer()
    assert trainer.num_speakers == 3 and trainer.num_classes == 9
    assert trainer.head.weight.shape[0] == 9
    seen: list[int] = []
    original = trainer.train_module.forward

    def spy(feats, lengths, labels):
        seen.extend(labels.tolist())
        return original(feats, lengths, labels)

    trainer.train_module.forward = spy
    record = trainer.train_epoch(1)
    assert np.isfinite(record["train_loss"])
    assert seen and all(3 <= label < 9 for label in seen)  # every clip was sped up: labels of groups 1 and 2


def _band_power_db(x: np.ndarray, sample_rate: int, low: float, high: float) -> np.ndarray:
    spec = np.abs(np.fft.rfft(x, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(x.shape[-1], 1.0 / sample_rate)
    band = (freqs >= low) & (freqs < high)
    return 10 * np.log10(spec[..., band].mean(-1))


def test_equalizer_gain_is_a_bell_in_octaves_with_butterworth_band_limits():
    from mvector.audio.augment import equalizer_gain_db

    f = np.array([500.0, 1000.0, 2000.0, 4000.0])
    bell = equalizer_gain_db(f, np.array([1000.0]), np.array([2.0]), np.array([-6.0]), np.inf, 0.0)
    np.testing.assert_allclose(bell, [-3.0, -6.0, -3.0, -6.0 / 16], atol=1e-9)  # half height one octave away
    limits = equalizer_gain_db(f, np.zeros(0), np.ones(0), np.zeros(0), 2000.0, 1000.0)
    np.testing.assert_allclose(limits[1:3], [-3.0103 - 10 * np.log10(1 + 1 / 16)] * 2, atol=1e-3)


@pytest.mark.parametrize("device_side", [False, True])
def test_band_limits_only_attenuate_and_cut_one_end_of_the_band(device_side):
    conf = {"equalizer": {"prob": 1.0, "max_bands": 0, "band_limit_prob": 1.0}}
    rng = np.random.default_rng(0)
    white = rng.standard_normal((24, 16000)).astype(np.float32)
    if device_side:
        out, _ = GpuAugmenter(conf)(torch.from_numpy(white), torch.full((24,), 16000), torch.Generator().manual_seed(1))
        out = out.numpy()
    else:
        aug = WaveAugmenter(conf)
        out = np.stack([aug(w, 16000, np.random.default_rng(i)) for i, w in enumerate(white)])
    low = _band_power_db(out, 16000, 20, 80) - _band_power_db(white, 16000, 20, 80)
    high = _band_power_db(out, 16000, 7200, 8000) - _band_power_db(white, 16000, 7200, 8000)
    mid = _band_power_db(out, 16000, 900, 1100) - _band_power_db(white, 16000, 900, 1100)
    assert np.all(np.abs(mid) < 0.6)  # the speech band passes
    assert np.all((low < -3.0) | (high < -3.0))  # a low-pass, a high-pass or both cut every clip
    assert (low < -3.0).any() and (high < -3.0).any() and ((low < -3.0) & (high < -3.0)).any()


@pytest.mark.parametrize("device_side", [False, True])
def test_colored_noise_is_added_at_the_drawn_snr_with_its_spectral_tilt(device_side):
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    speech_like = (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)[None].repeat(8, 0)
    for exponent, tilt_sign in ((0.0, 0), (2.0, 1)):
        conf = {
            "colored_noise": {
                "prob": 1.0, "min_snr_db": 10.0, "max_snr_db": 10.0, "min_exponent": exponent, "max_exponent": exponent
            }
        }
        if device_side:
            lengths = torch.full((8,), 16000)
            out, _ = GpuAugmenter(conf)(torch.from_numpy(speech_like), lengths, torch.Generator().manual_seed(2))
            out = out.numpy()
        else:
            aug = WaveAugmenter(conf)
            out = np.stack([aug(x, 16000, np.random.default_rng(int(rng.integers(1 << 30)))) for x in speech_like])
        noise = out - speech_like
        snr = 10 * np.log10(np.mean(speech_like**2, -1) / np.mean(noise**2, -1))
        np.testing.assert_allclose(snr, 10.0, atol=0.05)
        tilt = _band_power_db(noise, 16000, 100, 400) - _band_power_db(noise, 16000, 4000, 8000)
        if tilt_sign:
            assert np.all(tilt > 25.0)  # brown noise: 6 dB per octave down
        else:
            assert np.all(np.abs(tilt) < 1.5)  # white


def test_equalizer_and_colored_noise_validate_their_keys():
    with pytest.raises(ConfigError, match="band_limit_prob"):
        WaveAugmenter({"equalizer": {"prob": 1.0, "band_limit_prob": 2.0}})
    with pytest.raises(ConfigError, match="min_exponent"):
        WaveAugmenter({"colored_noise": {"prob": 1.0, "min_exponent": 2.0, "max_exponent": 1.0}})
    with pytest.raises(ConfigError, match="max_bands"):
        WaveAugmenter({"equalizer": {"prob": 1.0, "max_bands": -1}})
    off = {"equalizer": {"prob": 1.0, "max_bands": 0, "band_limit_prob": 0.0}}
    assert WaveAugmenter(off).enabled == [] and GpuAugmenter(off).enabled == []


def test_resuming_with_another_speed_grouping_is_refused_by_name(tmp_path):
    import contextlib
    import io

    from mvector.errors import CheckpointError

    train = generate_corpus(tmp_path / "train", 3, 2, min_duration=1.0, max_duration=1.2)
    conf = load_config("tdnn", validate=False)
    conf["model_conf"] = {"channels": 16, "stats_channels": 32, "embd_dim": 8}
    conf["augment_conf"] = {"speed": {"prob": 1.0, "speeds": [0.9, 1.1], "speaker_per_speed": True}}
    overrides = {
        "dataset_conf.train_list": str(train),
        "dataset_conf.test_list": str(train),
        "dataset_conf.batch_size": 3,
        "dataset_conf.max_duration": 1.0,
        "feature_conf.num_mel_bins": 24,
        "train_conf.max_epoch": 1,
        "train_conf.log_backend": "none",
    }
    with contextlib.redirect_stdout(io.StringIO()):
        result = MVectorTrainer(load_config(conf, overrides), use_gpu=False).train(save_model_path=tmp_path / "m")
    conf["augment_conf"] = {"speed": {"prob": 1.0, "speeds": [0.9, 1.1]}}  # labels kept: 3 classes, not 9
    again = MVectorTrainer(load_config(conf, {**overrides, "train_conf.max_epoch": 2}), use_gpu=False)
    with pytest.raises(CheckpointError, match=r"9 classes, this run 3 .*speaker_per_speed"):
        again.train(save_model_path=tmp_path / "m2", resume_model=Path(result["model_dir"]) / "last_model")
