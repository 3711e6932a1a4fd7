"""Tests of mvector.audio.gpu_augment (batched augmentation; run on the CPU here, on CUDA in test_cuda.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvector.audio import save_wav
from mvector.audio.gpu_augment import GpuAugmenter, SpeedResampler, build_gpu_augmenter
from mvector.errors import AudioError, ConfigError

SR = 16000
OFF = {"speed": {"prob": 0.0}, "reverb": {"prob": 0.0}, "noise": {"prob": 0.0}, "volume": {"prob": 0.0}}


def _conf(**sections: dict) -> dict:
    conf = {k: dict(v) for k, v in OFF.items()}
    conf.update(sections)
    return conf


def _tone(n: int, freq: float = 440.0, amp: float = 0.5) -> torch.Tensor:
    return (amp * torch.sin(2 * np.pi * freq * torch.arange(n, dtype=torch.float64) / SR)).float()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("factor", [0.8, 0.9, 0.95, 1.05, 1.1, 1.25])
def test_speed_resampler_matches_ideal_interpolation(factor: float) -> None:
    rs = SpeedResampler(factor)
    x = _tone(4000)[None]
    y, n = rs(x, torch.tensor([4000]))
    assert int(n) == int(4000 / factor)
    j = np.arange(int(n))
    ideal = 0.5 * np.sin(2 * np.pi * 440.0 * j * factor / SR)
    err = np.abs(y[0, : int(n)].numpy() - ideal)[40:-40]  # edges see the clip's end (zeros) through the kernel
    assert err.max() < 1e-3
    assert torch.all(y[0, int(n) :] == 0)


def test_speed_up_removes_content_above_the_new_nyquist() -> None:
    # 7.5 kHz played 1.25x faster would be 9.4 kHz, above 8 kHz: it must be filtered out, not aliased.
    y, n = SpeedResampler(1.25)(_tone(8000, 7500.0)[None], torch.tensor([8000]))
    assert y[0, 100 : int(n) - 100].abs().max().item() < 0.02


def test_augmenter_speed_lengths_padding_and_crop() -> None:
    aug = GpuAugmenter(_conf(speed={"prob": 1.0, "speeds": [0.8]}))
    assert aug.enabled == ["speed"] and aug.max_speed == 0.8
    x = torch.zeros(2, 6000)
    x[0] = _tone(6000)
    x[1, :3000] = _tone(3000)
    x[1, 3000:] = 0.9  # batch padding: must not leak
    y, n = aug(x, torch.tensor([6000, 3000]), _gen())
    assert y.shape == (2, 6000) and n.tolist() == [6000, 3750]  # the slowed 7,500 samples are cropped to 6,000
    assert torch.all(y[1, 3750:] == 0)
    alone, n1 = aug(torch.cat([_tone(3000), torch.zeros(3000)])[None], torch.tensor([3000]), _gen())
    assert int(n1) == 3750 and (alone[0] - y[1]).abs().max().item() < 1e-6
    longer, n2 = aug(x, torch.tensor([6000, 3000]), _gen(), out_samples=8000)
    assert longer.shape == (2, 8000) and n2.tolist() == [7500, 3750]


def test_speed_draws_each_factor_and_respects_prob() -> None:
    aug = GpuAugmenter(_conf(speed={"prob": 0.5, "speeds": [0.9, 1.0, 1.1]}))
    x = torch.ones(3000, 1000) * 0.1
    _, n = aug(x, torch.full((3000,), 1000), _gen(3), out_samples=1200)
    counts = {v: int((n == v).sum()) for v in (909, 1000, 1111)}
    assert sum(counts.values()) == 3000
    # P(unchanged) = 0.5 + 0.5/3; P(each other factor) = 1/6.
    assert 1850 < counts[1000] < 2150 and 400 < counts[909] < 600 and 400 < counts[1111] < 600


def test_reverb_matches_direct_convolution_with_the_direct_path_at_zero() -> None:
    rng = np.random.default_rng(0)
    rir = np.zeros(300, dtype=np.float32)
    rir[5], rir[20], rir[150], rir[299] = 0.3, 2.0, -0.7, 0.1  # pre-echo tap, direct path (peak), echoes
    aug = GpuAugmenter(_conf(reverb={"prob": 1.0}), rirs=[rir])
    x = torch.from_numpy(rng.standard_normal(2000).astype(np.float32))
    batch = torch.zeros(2, 2500)
    batch[0, :2000] = x
    batch[0, 2000:] = 5.0  # padding garbage
    batch[1] = torch.from_numpy(rng.standard_normal(2500).astype(np.float32))
    y, n = aug(batch, torch.tensor([2000, 2500]), _gen())
    full = np.convolve(x.numpy().astype(np.float64), rir / 2.0)[20 : 20 + 2000]
    assert n.tolist() == [2000, 2500]
    assert np.abs(y[0, :2000].numpy() - full).max() < 1e-4
    assert torch.all(y[0, 2000:] == 0)
    delta = GpuAugmenter(_conf(reverb={"prob": 1.0}), rirs=[np.array([0.0, 0.0, 0.5], dtype=np.float32)])
    same, _ = delta(batch, torch.tensor([2000, 2500]), _gen())
    assert (same[1] - batch[1]).abs().max().item() < 1e-5


def test_noise_reaches_the_drawn_snr_over_valid_samples_and_loops_short_noise() -> None:
    noise = np.random.default_rng(1).standard_normal(700).astype(np.float32)  # shorter than the clips: looped
    aug = GpuAugmenter(_conf(noise={"prob": 1.0, "min_snr_db": 3.0, "max_snr_db": 3.0}), noise=[noise])
    x = torch.zeros(3, 4000)
    x[0] = _tone(4000)
    x[1, :2500] = _tone(2500, 300.0, 0.05)
    x[1, 2500:] = 1.0  # padding garbage
    lengths = torch.tensor([4000, 2500, 4000])  # row 2 is silent: no noise can reach an SNR, none is added
    y, _ = aug(x, lengths, _gen())
    for row, n in ((0, 4000), (1, 2500)):
        added = (y[row, :n] - x[row, :n]).double()
        snr = 10 * torch.log10(x[row, :n].double().pow(2).sum() / added.pow(2).sum())
        assert abs(snr.item() - 3.0) < 1e-3
        # The noise repeats with the noise clip's period.
        assert torch.allclose(added[:500], added[700:1200] * 1.0, atol=1e-5)
    assert torch.all(y[1, 2500:] == 0) and torch.all(y[2] == 0)


def test_volume_gain_range_and_shift() -> None:
    aug = GpuAugmenter(_conf(volume={"prob": 1.0, "min_gain_db": -6.0, "max_gain_db": 6.0}))
    x = torch.full((500, 100), 0.1)
    y, _ = aug(x, torch.full((500,), 100), _gen())
    gain_db = 20 * torch.log10(y[:, 0] / 0.1)
    assert gain_db.min() >= -6.0 - 1e-4 and gain_db.max() <= 6.0 + 1e-4 and gain_db.std() > 2.0
    assert torch.allclose(y, y[:, :1].expand_as(y))
    shift = GpuAugmenter(_conf(shift={"prob": 1.0, "max_shift_ms": 1.0}))  # up to 16 samples either way
    ramp = torch.arange(1.0, 101.0)[None].repeat(200, 1)
    out, _ = shift(ramp, torch.full((200,), 80), _gen())
    moved = set()
    for row in out:
        nz = torch.nonzero(row).flatten()
        first = int(nz[0])
        s = first if row[first] == 1.0 else -int(row[first] - 1)
        moved.add(s)
        expected = torch.zeros(100)
        src = torch.arange(100) - s
        ok = (src >= 0) & (src < 80) & (torch.arange(100) < 80)
        expected[ok] = ramp[0][src[ok]]
        assert torch.equal(row, expected)
    assert min(moved) <= -10 and max(moved) >= 10


def test_deterministic_under_a_generator_and_input_untouched() -> None:
    rir = np.r_[1.0, np.zeros(50), 0.3].astype(np.float32)
    conf = {
        "speed": {"prob": 0.6},
        "reverb": {"prob": 0.5},
        "noise": {"prob": 0.5},
        "volume": {"prob": 0.5},
        "shift": {"prob": 0.5},
    }
    aug = GpuAugmenter(conf, noise=[np.random.default_rng(2).standard_normal(3000)], rirs=[rir])
    assert aug.enabled == ["speed", "reverb", "noise", "volume", "shift"]
    x = torch.randn(6, 3000) * 0.1
    before = x.clone()
    lengths = torch.tensor([3000, 2900, 2000, 1500, 3000, 800])
    a, na = aug(x, lengths, _gen(7))
    b, nb = aug(x, lengths, _gen(7))
    c, _ = aug(x, lengths, _gen(8))
    assert torch.equal(a, b) and torch.equal(na, nb) and not torch.equal(a, c)
    assert torch.equal(x, before)
    assert torch.isfinite(a).all() and all(torch.all(a[i, int(n) :] == 0) for i, n in enumerate(na))


def test_from_config_loads_folders_and_turns_missing_ones_off(tmp_path) -> None:
    (tmp_path / "noise").mkdir()
    (tmp_path / "rir").mkdir()
    save_wav(tmp_path / "noise" / "a.wav", np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1, SR)
    save_wav(tmp_path / "noise" / "b.wav", np.random.default_rng(1).standard_normal(4000).astype(np.float32) * 0.1, SR)
    save_wav(tmp_path / "rir" / "r.wav", np.r_[0.0, 0.8, np.zeros(100), 0.2].astype(np.float32), SR)
    (tmp_path / "noise" / "broken.wav").write_bytes(b"not audio")
    conf = {
        "noise": {"prob": 1.0, "noise_dir": str(tmp_path / "noise")},
        "reverb": {"prob": 1.0, "rir_dir": str(tmp_path / "rir")},
    }
    with pytest.warns(UserWarning, match="broken.wav"):
        aug = GpuAugmenter.from_config(conf, SR)
    assert aug.noise_bank.shape[0] == 2 and aug.rir_bank.shape[0] == 1
    assert aug.noise_lengths.tolist() == [8000, 4000] and aug.rir_peaks.tolist() == [1]
    assert "noise" in aug.enabled and "reverb" in aug.enabled
    with pytest.warns(UserWarning, match="holds no audio"):
        off = GpuAugmenter.from_config({"noise": {"prob": 1.0, "noise_dir": str(tmp_path / "missing")}}, SR)
    assert "noise" not in off.enabled
    none_on = {k: {"prob": 0.0} for k in ("speed", "reverb", "noise", "volume", "shift")}
    assert build_gpu_augmenter(none_on) is None


def test_bad_input_and_config_errors() -> None:
    aug = GpuAugmenter(_conf(volume={"prob": 1.0}))
    with pytest.raises(AudioError, match=r"\[batch, samples\]"):
        aug(torch.zeros(100), torch.tensor([100]))
    with pytest.raises(AudioError, match="float"):
        aug(torch.zeros(1, 100, dtype=torch.int16), torch.tensor([100]))
    with pytest.raises(AudioError, match="lengths"):
        aug(torch.zeros(2, 100), torch.tensor([100]))
    with pytest.raises(ConfigError):
        GpuAugmenter(_conf(speed={"prob": 1.0, "speeds": [0.0]}))
    with pytest.raises(ConfigError):
        SpeedResampler(float("nan"))
    with pytest.raises(AudioError, match="NaN"):
        GpuAugmenter(_conf(noise={"prob": 1.0}), noise=[np.array([0.1, np.nan])])


def test_module_moves_banks_and_half_input_comes_back_float32() -> None:
    aug = GpuAugmenter(_conf(noise={"prob": 1.0}), noise=[np.ones(100, dtype=np.float32)]).to(torch.float64)
    y, _ = aug(torch.randn(2, 300).half(), torch.tensor([300, 200]), _gen())
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert {name for name, _ in aug.named_buffers()} >= {"noise_bank", "rir_bank", "speed_table"}
    assert aug.state_dict() == {}
