"""Training-recipe options from the accuracy work (issue 16): repeated short clips and speeds as speakers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mvector.audio import save_wav
from mvector.audio.augment import WaveAugmenter, speed_label_groups
from mvector.audio.gpu_augment import GpuAugmenter
from mvector.config import load_config
from mvector.data.dataset import TrainDataset
from mvector.data.lists import Utterance
from mvector.data.synthetic import generate_corpus
from mvector.errors import ConfigError
from mvector.training.trainer import MVectorTrainer


def _clip(folder, name: str, seconds: float, sample_rate: int = 16000) -> str:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    path = folder / name
    save_wav(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate)
    return str(path)


def test_short_clips_are_repeated_to_fill_the_crop_or_left_short(tmp_path):
    path = _clip(tmp_path, "short.wav", 0.7)
    padded = TrainDataset([Utterance(path, 0)], max_duration=2.0, normalize=False)
    repeated = TrainDataset([Utterance(path, 0)], max_duration=2.0, normalize=False, short_clips="repeat")
    short, _ = padded[0]
    full, _ = repeated[0]
    assert short.shape == (11200,)
    assert full.shape == (32000,)
    np.testing.assert_array_equal(full[:11200], short)
    np.testing.assert_array_equal(full[11200:22400], short)  # the clip again, from its start
    long_path = _clip(tmp_path, "long.wav", 3.0)
    assert TrainDataset([Utterance(long_path, 0)], max_duration=2.0, short_clips="repeat")[0][0].shape == (32000,)
    with pytest.raises(ConfigError, match="short_clips"):
        TrainDataset([Utterance(path, 0)], short_clips="loop")


def test_config_names_a_bad_short_clips_value():
    with pytest.raises(ConfigError, match="dataset_conf.short_clips"):
        load_config("ecapa_tdnn", {"dataset_conf.short_clips": "tile"})


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
