"""Tests of mvector.features: parity with librosa / kaldi-native-fbank references, batching, errors, SpecAugment."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mvector.errors import AudioError, ConfigError
from mvector.features import (
    FEATURIZERS,
    FbankFeaturizer,
    SpecAugment,
    build_featurizer,
    masked_cmvn,
)

REFS = Path(__file__).with_name("data") / "feature_refs.npz"
#: Entries more than 80 dB (natural log: 18.4) below their frame's maximum are float32 round-off, not signal.
DYNAMIC_RANGE = math.log(1e8)

METHODS = [
    ("Spectrogram", {}),
    ("MelSpectrogram", {"n_mels": 40}),
    ("MFCC", {"n_mels": 40, "n_mfcc": 20}),
    ("Fbank", {"num_mel_bins": 40}),
    ("Fbank", {"num_mel_bins": 24, "snip_edges": False, "window_type": "hamming"}),
]
METHOD_IDS = ["spec", "mel", "mfcc", "fbank", "fbank-nosnip"]


def _signal(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    wave = 0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.1 * np.sin(2 * np.pi * 1234.0 * t) + 0.05 * rng.standard_normal(n)
    return torch.from_numpy(wave.astype(np.float32))


def _refs() -> tuple[dict, np.lib.npyio.NpzFile]:
    data = np.load(REFS, allow_pickle=False)
    return json.loads(str(data["params"])), data


_META, _DATA = _refs()
PARITY = [(sig, case) for sig in _META["signals"] for case in _META["cases"]]


@pytest.mark.parametrize("signal,case", PARITY, ids=[f"{s}-{c}" for s, c in PARITY])
def test_parity_with_reference(signal: str, case: str) -> None:
    spec = _META["cases"][case]
    wave = torch.from_numpy(_DATA[f"signal__{signal}"])[None]
    fz = build_featurizer(spec["method"], spec["conf"], normalize=False).eval()
    feats, frames = fz(wave, torch.tensor([wave.shape[1]]))
    ref = _DATA[f"{signal}__{case}"].astype(np.float64)
    ours = feats[0].double().numpy()
    assert ours.shape == ref.shape
    assert frames.tolist() == [ref.shape[0]]
    if spec["method"] == "MFCC":
        keep = np.ones_like(ref, dtype=bool)
    else:  # log energies: drop entries far below their frame's peak (round-off of a float32 FFT)
        keep = ref >= ref.max(axis=1, keepdims=True) - DYNAMIC_RANGE
    assert keep.mean() > 0.95
    diff = (ours - ours.mean(0)) - (ref - ref.mean(0))
    assert np.abs(diff[keep]).max() < 1e-3
    # Without removing the means the agreement holds too (no hidden constant offset, e.g. int16 scaling).
    assert np.abs(ours - ref)[keep].max() < 2e-3


def test_reference_file_is_small_and_self_describing() -> None:
    assert REFS.stat().st_size < 1_000_000
    assert _META["sample_rate"] == 16000
    assert set(_META["cases"]) >= {"spectrogram", "melspectrogram", "mfcc", "fbank"}


@pytest.mark.parametrize(
    "method,conf,dim",
    [
        ("Spectrogram", {}, 257),
        ("Spectrogram", {"n_fft": 1024, "win_length": 1024}, 513),
        ("MelSpectrogram", {}, 80),
        ("melspectrogram", {"n_mels": 64}, 64),
        ("MFCC", {}, 40),
        ("mfcc", {"n_mfcc": 13, "n_mels": 40}, 13),
        ("Fbank", {}, 80),
        ("FBANK", {"num_mel_bins": 40}, 40),
        ("Fbank", {"n_mels": 64}, 64),
    ],
)
def test_feature_dim_and_shapes(method: str, conf: dict, dim: int) -> None:
    fz = build_featurizer(method, conf).eval()
    assert fz.feature_dim == dim
    lengths = torch.tensor([16000, 12345, 4000])
    waves = torch.randn(3, 16000) * 0.1
    feats, frames = fz(waves, lengths)
    assert feats.dtype == torch.float32 and feats.shape[0] == 3 and feats.shape[2] == dim
    if fz.method == "Fbank":
        expected = [1 + (n - 400) // 160 for n in lengths.tolist()]
    else:
        hop = fz.config["hop_length"]
        expected = [1 + n // hop for n in lengths.tolist()]
    assert frames.tolist() == expected
    assert feats.shape[1] == expected[0]
    assert frames.dtype == torch.int64


def test_frame_lengths_without_snip_edges() -> None:
    fz = build_featurizer("Fbank", {"snip_edges": False}).eval()
    lengths = torch.tensor([16000, 16079, 16080, 100])
    assert fz.frame_lengths(lengths).tolist() == [100, 100, 101, 1]
    feats, frames = fz(torch.randn(4, 16080) * 0.1, lengths)
    assert feats.shape[1] == 101 and frames.tolist() == [100, 100, 101, 1]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("method,conf", METHODS, ids=METHOD_IDS)
def test_padding_invariance(method: str, conf: dict, normalize: bool) -> None:
    fz = build_featurizer(method, conf, normalize=normalize).eval()
    short, long_ = _signal(7001, 1), _signal(12000, 2)
    alone, n_alone = fz(short[None], torch.tensor([7001]))
    batch = torch.zeros(2, 13000)  # extra padding beyond the longest clip too
    batch[0, :12000] = long_
    batch[1, :7001] = short
    feats, frames = fz(batch, torch.tensor([12000, 7001]))
    n = int(n_alone[0])
    assert int(frames[1]) == n
    assert (feats[1, :n] - alone[0]).abs().max().item() < 1e-5
    assert torch.all(feats[1, n:] == 0)
    assert torch.all(feats[0, int(frames[0]) :] == 0)
    # The batch padding must not leak into the last frames: garbage after the clip changes nothing.
    batch[1, 7001:] = 0.9
    feats2, _ = fz(batch, torch.tensor([12000, 7001]))
    assert (feats2[1, :n] - alone[0]).abs().max().item() < 1e-5


def test_cmvn_statistics_over_valid_frames() -> None:
    conf = {"num_mel_bins": 40}
    waves = torch.stack([_signal(16000, 3), _signal(16000, 4)])
    waves[1, 9000:] = 0.0
    lengths = torch.tensor([16000, 9000])
    feats, frames = build_featurizer("Fbank", conf).eval()(waves, lengths)
    raw, _ = build_featurizer("Fbank", conf, normalize=False).eval()(waves, lengths)
    n = int(frames[1])
    valid = feats[1, :n].double()
    assert valid.mean(0).abs().max().item() < 1e-4
    assert valid.std(0, unbiased=False).max().item() <= 1.0 + 1e-4
    # Statistics come from the valid frames only (the zero padding after 9000 samples is ignored).
    r = raw[1, :n].double()
    expected = (r - r.mean(0)) / torch.sqrt(r.var(0, unbiased=False) + 1e-5)
    assert (valid - expected).abs().max().item() < 1e-4
    assert torch.all(feats[1, n:] == 0)
    # masked_cmvn on its own: constant features give 0, not NaN.
    const = masked_cmvn(torch.full((1, 5, 3), 7.0), torch.tensor([3]))
    assert torch.all(const == 0)


def test_fmax_above_nyquist_is_clamped_with_one_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fz = build_featurizer("MelSpectrogram", {"f_max": 12000.0})
    assert len(caught) == 1 and "Nyquist" in str(caught[0].message)
    assert fz.config["f_max"] == 8000.0
    plain = build_featurizer("MelSpectrogram", {})
    assert torch.equal(fz.mel_fb, plain.mel_fb)
    assert bool((fz.mel_fb.max(0).values > 0).all())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kaldi = build_featurizer("Fbank", {"high_freq": 9000})
    assert len(caught) == 1 and kaldi.config["high_freq"] == 8000.0


def test_kaldi_negative_high_freq_is_offset_from_nyquist() -> None:
    assert build_featurizer("Fbank", {"high_freq": -400}).config["high_freq"] == 7600.0


@pytest.mark.parametrize(
    "method,conf",
    [("MelSpectrogram", {"n_mels": 256}), ("MFCC", {"n_mels": 200}), ("Fbank", {"num_mel_bins": 200})],
)
def test_all_zero_filters_are_rejected(method: str, conf: dict) -> None:
    with pytest.raises(ConfigError, match="all zero"):
        build_featurizer(method, conf)


def test_unknown_key_and_method_errors() -> None:
    with pytest.raises(ConfigError, match="'n_mel'.*did you mean 'n_mels'"):
        build_featurizer("MelSpectrogram", {"n_mel": 64})
    with pytest.raises(ConfigError, match="did you mean 'num_mel_bins'"):
        build_featurizer("Fbank", {"num_mel_bin": 64})
    with pytest.raises(ConfigError, match="Valid: Fbank, MFCC, MelSpectrogram, Spectrogram"):
        build_featurizer("Wavelet")
    with pytest.raises(ConfigError, match="window_type"):
        build_featurizer("Fbank", {"window_type": "kaiser"})
    with pytest.raises(ConfigError, match="conflicts"):
        build_featurizer("Fbank", {"n_mels": 64, "num_mel_bins": 80})
    with pytest.raises(ConfigError, match="n_fft"):
        build_featurizer("Spectrogram", {"n_fft": "big"})
    with pytest.raises(ConfigError, match="win_length"):
        build_featurizer("Spectrogram", {"n_fft": 256, "win_length": 400})
    with pytest.raises(ConfigError, match="n_mfcc"):
        build_featurizer("MFCC", {"n_mels": 20, "n_mfcc": 40})
    with pytest.raises(ConfigError, match="f_min"):
        build_featurizer("MelSpectrogram", {"f_min": 9000.0})


def test_shared_stft_keys_and_aliases_are_accepted() -> None:
    original = {"sample_rate": 16000, "n_fft": 512, "hop_length": 160, "win_length": 400, "f_min": 50.0}
    original.update({"f_max": 8000.0, "n_mels": 64, "n_mfcc": 20})
    assert build_featurizer("Spectrogram", original).feature_dim == 257
    assert build_featurizer("MelSpectrogram", original).feature_dim == 64
    assert build_featurizer("MFCC", original).feature_dim == 20
    fz = build_featurizer("Fbank", {"sample_frequency": 8000, "n_mels": 40})
    assert fz.sample_rate == 8000 and fz.feature_dim == 40 and fz.config["high_freq"] == 4000.0
    assert set(FEATURIZERS) == {"Spectrogram", "MelSpectrogram", "MFCC", "Fbank"}


def test_bad_input_gives_audio_errors() -> None:
    fz = build_featurizer("Fbank")
    with pytest.raises(AudioError, match="shorter than one analysis window"):
        fz(torch.zeros(2, 1000), torch.tensor([1000, 399]))
    with pytest.raises(AudioError, match="shorter than one analysis window"):
        fz(torch.zeros(1, 300), torch.tensor([300]))
    with pytest.raises(AudioError, match="exceed"):
        fz(torch.zeros(1, 1000), torch.tensor([2000]))
    with pytest.raises(AudioError, match=r"\[batch, samples\]"):
        fz(torch.zeros(1000), torch.tensor([1000]))
    with pytest.raises(AudioError, match="lengths of shape"):
        fz(torch.zeros(2, 1000), torch.tensor([1000]))
    # Center-padded methods handle clips shorter than n_fft / 2 (reflection repeats).
    feats, frames = build_featurizer("Spectrogram")(torch.randn(1, 100), torch.tensor([100]))
    assert frames.tolist() == [1] and torch.isfinite(feats).all()


def test_dither_only_in_training() -> None:
    torch.manual_seed(0)
    fz = build_featurizer("Fbank", {"num_mel_bins": 40}, normalize=False)
    wave = _signal(8000, 5)[None]
    lengths = torch.tensor([8000])
    fz.train()
    a, _ = fz(wave, lengths)
    b, _ = fz(wave, lengths)
    assert (a - b).abs().max().item() > 1e-4
    fz.eval()
    c, _ = fz(wave, lengths)
    d, _ = fz(wave, lengths)
    assert torch.equal(c, d)
    assert (a - c).abs().mean().item() < 0.05  # dither of 1 int16 step is small against the signal
    no_dither = build_featurizer("Fbank", {"num_mel_bins": 40, "dither": 0.0}, normalize=False).train()
    assert torch.equal(no_dither(wave, lengths)[0], c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_computed_in_float32(dtype: torch.dtype) -> None:
    fz = build_featurizer("MelSpectrogram", {"n_mels": 40}).eval()
    wave = _signal(8000, 6)[None].to(dtype)
    feats, _ = fz(wave, torch.tensor([8000]))
    ref, _ = fz(wave.float(), torch.tensor([8000]))
    assert feats.dtype == torch.float32
    assert torch.equal(feats, ref)
    fz_half = build_featurizer("Fbank", {"num_mel_bins": 40}).eval().half()  # buffers in float16 still work
    out, _ = fz_half(wave, torch.tensor([8000]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_buffers_are_not_in_state_dict_and_move_with_module() -> None:
    fz = build_featurizer("MFCC")
    assert fz.state_dict() == {}
    names = {name for name, _ in fz.named_buffers()}
    assert {"window", "mel_fb", "dct"} <= names
    assert isinstance(build_featurizer("Fbank"), FbankFeaturizer)


@pytest.mark.parametrize("method,conf", METHODS, ids=METHOD_IDS)
def test_trace_matches_eager_on_other_shapes(method: str, conf: dict) -> None:
    fz = build_featurizer(method, conf).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(fz, (torch.randn(2, 6000) * 0.1, torch.tensor([6000, 4000])))
    waves = torch.stack([_signal(9000, 7), _signal(9000, 8), _signal(9000, 9)])
    lengths = torch.tensor([9000, 5000, 2500])
    fast, fast_frames = fz(waves, lengths)
    fz.use_fast_path = False  # the functional path that tracing records
    ref, ref_frames = fz(waves, lengths)
    out, out_frames = traced(waves, lengths)
    assert torch.equal(out_frames, ref_frames) and torch.equal(fast_frames, ref_frames)
    assert (out - ref).abs().max().item() < 1e-5
    assert (out - fast).abs().max().item() < 5e-4  # float32 round-off of a different operation order


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("method,conf", METHODS, ids=METHOD_IDS)
def test_fast_path_matches_functional_path_and_float64(method: str, conf: dict, normalize: bool) -> None:
    fz = build_featurizer(method, conf, normalize=normalize).eval()
    waves = torch.stack([_signal(9000, 13), _signal(9000, 14), _signal(9000, 15)])
    waves[2, 2500:] = 0.7  # batch padding that must not leak into the features
    lengths = torch.tensor([9000, 5000, 2500])
    fast, frames = fz(waves, lengths)
    fz.use_fast_path = False
    ref, ref_frames = fz(waves, lengths)
    assert torch.equal(frames, ref_frames)
    # Exact float64 features from the functional code, normalised the same way.
    exact = fz.double().compute(waves.double(), lengths)
    valid = (torch.arange(exact.shape[1])[None, :] < frames[:, None]).unsqueeze(-1)
    exact = masked_cmvn(exact, frames, variance=True) if normalize else torch.where(valid, exact, 0.0)
    err_fast = (fast.double() - exact).abs().max().item()
    err_ref = (ref.double() - exact).abs().max().item()
    assert err_fast <= 2.0 * err_ref + 1e-5, (err_fast, err_ref)
    assert torch.all(fast[~valid.expand_as(fast)] == 0)


def test_fast_path_groups_clips_on_cpu_without_changing_results() -> None:
    fz = build_featurizer("Fbank", {"num_mel_bins": 40}).eval()
    waves = torch.randn(7, 8000) * 0.1
    lengths = torch.tensor([8000, 7000, 6000, 5000, 4000, 3000, 2000])
    whole, frames = fz(waves, lengths)
    fz.cpu_chunk_samples = 16000  # two clips per group, the last group has one
    grouped, frames2 = fz(waves, lengths)
    assert torch.equal(frames, frames2)
    assert (whole - grouped).abs().max().item() < 1e-5
    one, _ = fz(waves[3:4], lengths[3:4])
    assert (one[0, : frames[3]] - grouped[3, : frames[3]]).abs().max().item() < 1e-5


def test_lengths_on_the_device_need_no_host_synchronisation(monkeypatch: pytest.MonkeyPatch) -> None:
    # Values of lengths held on the CPU are checked on the host; the checks never call .item()/.tolist() on
    # tensors of the waveform's device otherwise (simulated here by failing on any bool() of a CPU tensor
    # that is not the lengths).
    fz = build_featurizer("MelSpectrogram", {"n_mels": 40}).eval()
    waves = torch.randn(2, 4000) * 0.1
    calls = []
    original = torch.Tensor.__bool__

    def spy(self):
        calls.append(tuple(self.shape))
        return original(self)

    monkeypatch.setattr(torch.Tensor, "__bool__", spy)
    fz(waves, torch.tensor([4000, 3000]))
    assert calls == [()]  # exactly one host check: of the (CPU) lengths


@pytest.mark.parametrize("method,conf", [METHODS[1], METHODS[3]], ids=["mel", "fbank"])
def test_onnx_export_with_dynamic_axes(method: str, conf: dict, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    fz = build_featurizer(method, conf).eval()
    path = tmp_path / "fz.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fz,
            (torch.randn(2, 6000) * 0.1, torch.tensor([6000, 4000])),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["waves", "lengths"],
            output_names=["feats", "frames"],
            dynamic_axes={
                "waves": {0: "b", 1: "t"},
                "lengths": {0: "b"},
                "feats": {0: "b", 1: "f"},
                "frames": {0: "b"},
            },
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    waves = torch.stack([_signal(9000, 10), _signal(9000, 11), _signal(9000, 12)])
    lengths = torch.tensor([9000, 5000, 2500])
    feats, frames = session.run(None, {"waves": waves.numpy(), "lengths": lengths.numpy()})
    ref, ref_frames = fz(waves, lengths)
    assert np.array_equal(frames, ref_frames.numpy())
    assert np.abs(feats - ref.numpy()).max() < 1e-3


def test_specaugment_masks_only_valid_frames() -> None:
    torch.manual_seed(1)
    aug = SpecAugment(prob=1.0, freq_masks=2, freq_mask_width=6, time_masks=2, time_mask_width=8).train()
    x = torch.randn(64, 40, 30) + 5.0  # no exact zeros
    lengths = torch.randint(5, 41, (64,))
    y = aug(x, lengths)
    zero = y == 0
    valid = torch.arange(40)[None, :] < lengths[:, None]
    assert not zero[~valid].any()  # padded frames untouched
    assert torch.equal(y[~zero], x[~zero])  # everything else unchanged
    assert zero.any()


def test_specaugment_mask_sizes() -> None:
    torch.manual_seed(2)
    lengths = torch.randint(20, 41, (200,))
    valid = torch.arange(40)[None, :] < lengths[:, None]
    ones = torch.ones(200, 40, 30)
    # Frequency masks only: whole bins over the valid frames, at most 2 x 6 bins per utterance.
    zero = SpecAugment(freq_masks=2, freq_mask_width=6, time_masks=0).train()(ones, lengths) == 0
    bins = zero.any(1)
    assert torch.equal(zero, bins[:, None, :] & valid[:, :, None])
    assert bins.sum(1).max().item() <= 12 and bins.any()
    # Time masks only: whole frames inside the valid frames, at most 2 x 8 frames.
    zero = SpecAugment(freq_masks=0, time_masks=2, time_mask_width=8).train()(ones, lengths) == 0
    rows = zero.any(2)
    assert torch.equal(zero, rows[:, :, None].expand_as(zero))
    assert rows.sum(1).max().item() <= 16 and rows.any()
    assert not (rows & ~valid).any()
    # Widths are uniform in [0, max]: over many utterances both 0 and the maximum occur, evenly.
    one = SpecAugment(prob=1.0, freq_masks=1, freq_mask_width=3, time_masks=0).train()
    widths = (one(torch.ones(2000, 10, 20), torch.full((2000,), 10)) == 0).all(1).sum(1)
    counts = torch.bincount(widths, minlength=4)
    assert counts.numel() == 4 and counts.min().item() > 400
    # prob = 0.5: about half the utterances are touched.
    half = SpecAugment(prob=0.5, freq_masks=1, freq_mask_width=5, time_masks=1, time_mask_width=5).train()
    touched = (half(torch.ones(2000, 20, 10), torch.full((2000,), 20)) == 0).flatten(1).any(1).float().mean()
    # Expected 0.5 * (1 - 1/36): a zero-width draw on both masks also leaves an utterance untouched.
    assert 0.43 < touched.item() < 0.54


def test_specaugment_identity_in_eval_and_with_prob_zero() -> None:
    x = torch.randn(4, 20, 10)
    lengths = torch.tensor([20, 15, 10, 5])
    assert torch.equal(SpecAugment().eval()(x, lengths), x)
    assert torch.equal(SpecAugment(prob=0.0).train()(x, lengths), x)
    with pytest.raises(ConfigError):
        SpecAugment(prob=1.5)
    with pytest.raises(ConfigError):
        SpecAugment(time_mask_width=-1)


def test_keys_a_method_does_not_use_warn_instead_of_being_silently_ignored():
    with pytest.warns(UserWarning, match="n_mfcc has no effect with MelSpectrogram"):
        build_featurizer("MelSpectrogram", {"n_mfcc": 13})
    with pytest.warns(UserWarning, match="n_mels, n_mfcc has no effect with Spectrogram"):
        build_featurizer("Spectrogram", {"n_mels": 40, "n_mfcc": 13})
    with pytest.warns(UserWarning, match="energy_floor"):
        build_featurizer("Fbank", {"energy_floor": 1.0})
