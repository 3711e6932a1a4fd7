"""Tests of mvector.audio: decoding every source type and format, mono, resampling, dB normalisation, VAD,
cropping, WAV writing, and every AudioError path."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mvector.audio import (
    audio_duration,
    crop,
    load_audio,
    normalize_db,
    read_audio,
    resample,
    save_wav,
    to_mono,
    vad_trim,
)
from mvector.errors import AudioError, ConfigError


def tone(freq: float, seconds: float, sample_rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * sample_rate / len(samples))


def rms_db(samples: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(samples.astype(np.float64) ** 2))))


@pytest.fixture
def wav_path(tmp_path: Path) -> Path:
    path = tmp_path / "tone.wav"
    soundfile.write(path, tone(440, 0.5, 16000), 16000, subtype="PCM_16")
    return path


# --- formats and source types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, subtype, tolerance",
    [("WAV", "PCM_16", 1e-4), ("WAV", "FLOAT", 1e-7), ("FLAC", "PCM_16", 1e-4), ("OGG", "VORBIS", None)],
)
def test_formats_decode(tmp_path: Path, fmt: str, subtype: str, tolerance: float | None) -> None:
    x = tone(440, 0.5, 16000)
    path = tmp_path / f"a.{fmt.lower()}"
    soundfile.write(path, x, 16000, format=fmt, subtype=subtype)
    y, sr = read_audio(path)
    assert sr == 16000 and y.dtype == np.float32 and y.ndim == 1
    assert len(y) == len(x)
    if tolerance is not None:
        np.testing.assert_allclose(y, x, atol=tolerance)
    assert abs(peak_frequency(y, sr) - 440) < 5
    assert audio_duration(path) == pytest.approx(0.5)


def test_mp3_decode(tmp_path: Path) -> None:
    x = tone(440, 0.5, 16000)
    path = tmp_path / "a.mp3"
    try:
        soundfile.write(path, x, 16000, format="MP3")
    except (soundfile.LibsndfileError, TypeError, ValueError) as err:  # pragma: no cover - old libsndfile
        pytest.skip(f"this libsndfile cannot write MP3: {err}")
    y, sr = read_audio(path)
    assert sr == 16000
    assert abs(len(y) - len(x)) < 0.1 * len(x)
    assert abs(peak_frequency(y, sr) - 440) < 5
    y2 = load_audio(path.read_bytes(), 16000)  # decoded from memory too
    np.testing.assert_array_equal(y2, y)


def test_every_source_type_gives_same_samples(wav_path: Path) -> None:
    ref, sr = read_audio(str(wav_path))
    data = wav_path.read_bytes()

    class Pipe:  # a non-seekable stream, like a socket or an HTTP body
        def __init__(self, payload: bytes) -> None:
            self._buf = io.BytesIO(payload)

        def read(self, size: int = -1) -> bytes:
            return self._buf.read(size)

        def seekable(self) -> bool:
            return False

    int16 = soundfile.read(wav_path, dtype="int16")[0]
    sources = [wav_path, data, bytearray(data), memoryview(data), io.BytesIO(data), Pipe(data)]
    with open(wav_path, "rb") as handle:
        sources.append(handle)
        for source in sources:
            y, rate = read_audio(source)
            assert rate == sr
            np.testing.assert_array_equal(y, ref)
    y, rate = read_audio(int16, source_sample_rate=sr)
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(load_audio(int16, 16000, source_sample_rate=16000), ref)


def test_integer_and_float_arrays_are_scaled() -> None:
    cases = [
        (np.array([16384, -32768], dtype=np.int16), [0.5, -1.0]),
        (np.array([2**30, -(2**31)], dtype=np.int32), [0.5, -1.0]),
        (np.array([192, 0], dtype=np.uint8), [0.5, -1.0]),
        (np.array([0.25, -0.5], dtype=np.float64), [0.25, -0.5]),
    ]
    for array, expected in cases:
        y, sr = read_audio(array, source_sample_rate=8000)
        assert y.dtype == np.float32 and sr == 8000
        np.testing.assert_allclose(y, expected)
    f32 = np.zeros(10, dtype=np.float32)
    assert read_audio(f32, source_sample_rate=8000)[0] is f32  # no needless copy


def test_channel_layout_rule() -> None:
    left, right = np.full(100, 0.2, np.float32), np.full(100, 0.6, np.float32)
    t_c = np.stack([left, right], axis=1)  # [T, C]
    c_t = np.stack([left, right], axis=0)  # [C, T] -> transposed
    for array in (t_c, c_t):
        y, _ = read_audio(array, source_sample_rate=16000)
        assert y.shape == (100, 2)
        np.testing.assert_allclose(to_mono(y), 0.4)
    many = np.zeros((100, 12), np.float32)  # 12 channels: more than 8 leading entries, kept as [T, C]
    assert read_audio(many, source_sample_rate=16000)[0].shape == (100, 12)


def test_stereo_file_to_mono(tmp_path: Path) -> None:
    stereo = np.stack([tone(300, 0.25, 16000, 0.4), np.zeros(4000, np.float32)], axis=1)
    path = tmp_path / "stereo.flac"
    soundfile.write(path, stereo, 16000)
    assert read_audio(path)[0].shape == (4000, 2)
    mono = load_audio(path)
    assert mono.shape == (4000,)
    np.testing.assert_allclose(mono, stereo[:, 0] / 2, atol=1e-4)
    np.testing.assert_array_equal(to_mono(mono), mono)


# --- resampling -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orig_sr", [8000, 44100, 48000])
def test_resample_to_16k_keeps_length_and_pitch(tmp_path: Path, orig_sr: int) -> None:
    x = tone(1000, 1.0, orig_sr)
    path = tmp_path / f"t{orig_sr}.wav"
    soundfile.write(path, x, orig_sr, subtype="PCM_16")
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and len(y) == 16000
    assert abs(peak_frequency(y, 16000) - 1000) <= 2
    assert abs(rms_db(y[2000:-2000]) - rms_db(x)) < 0.2
    assert resample(x, orig_sr, orig_sr) is x


def test_resample_stereo_and_bad_rate() -> None:
    x = np.zeros((4410, 2), np.float32)
    assert resample(x, 44100, 16000).shape == (1600, 2)
    with pytest.raises(ConfigError, match="target_sr"):
        resample(x, 44100, 0)


# --- dB normalisation -------------------------------------------------------------------------------------------


def test_normalize_db_reaches_target() -> None:
    x = tone(200, 1.0, 16000, amp=0.02)
    for target in (-30.0, -20.0, -10.0):
        assert rms_db(normalize_db(x, target)) == pytest.approx(target, abs=0.01)
    loud = tone(200, 1.0, 16000, amp=0.9)
    assert rms_db(normalize_db(loud, -26.0)) == pytest.approx(-26.0, abs=0.01)  # attenuation is not capped


def test_normalize_db_gain_cap_and_silence() -> None:
    quiet = tone(200, 1.0, 16000, amp=1e-4)  # about -83 dBFS
    out = normalize_db(quiet, -20.0, max_gain_db=30.0)
    assert rms_db(out) - rms_db(quiet) == pytest.approx(30.0, abs=0.01)
    silence = np.zeros(1000, np.float32)
    np.testing.assert_array_equal(normalize_db(silence), silence)
    dither = np.full(1000, 1e-9, np.float32)
    np.testing.assert_array_equal(normalize_db(dither), dither)
    assert normalize_db(quiet).dtype == np.float32


def test_load_audio_normalize_flag(wav_path: Path) -> None:
    y = load_audio(wav_path, normalize=True, target_db=-25.0)
    assert rms_db(y) == pytest.approx(-25.0, abs=0.01)


# --- VAD --------------------------------------------------------------------------------------------------------


def test_vad_trims_leading_and_trailing_silence() -> None:
    sr = 16000
    speech = tone(300, 0.5, sr)
    noise = np.random.default_rng(0).normal(0, 1e-4, sr).astype(np.float32)  # -80 dB: counts as silence
    x = np.concatenate([noise, speech, np.zeros(sr // 4, np.float32), speech, noise])
    y = vad_trim(x, sr, top_db=30)
    # the inner quarter-second pause is kept; about a second of silence on each side is dropped
    assert 1.25 <= len(y) / sr <= 1.25 + 0.06
    start = (y.__array_interface__["data"][0] - x.__array_interface__["data"][0]) // x.itemsize
    end = start + len(y)
    frame = 400  # 25 ms: the kept span may reach up to one frame into the silence on each side
    assert sr - frame <= start <= sr and 2.25 * sr <= end <= 2.25 * sr + frame
    assert np.shares_memory(y, x)
    z = load_audio(x, sr, source_sample_rate=sr, vad=True)
    assert len(z) == len(y)


def test_vad_never_empty_and_leaves_silence_alone() -> None:
    sr = 16000
    click = np.zeros(sr, np.float32)
    click[5000] = 0.5
    y = vad_trim(click, sr)
    assert 0 < len(y) < len(click) and 0.5 in y
    silence = np.zeros(sr, np.float32)
    assert len(vad_trim(silence, sr)) == sr
    short = np.ones(10, np.float32)
    assert len(vad_trim(short, sr)) == 10
    with pytest.raises(ConfigError):
        vad_trim(click, sr, top_db=0)


# --- crop -------------------------------------------------------------------------------------------------------


def test_crop_modes() -> None:
    x = np.arange(100, dtype=np.float32)
    np.testing.assert_array_equal(crop(x, 10, "leading"), x[:10])
    a = crop(x, 10, "random", rng=np.random.default_rng(5))
    b = crop(x, 10, "random", rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert len(a) == 10 and np.all(np.diff(a) == 1)
    starts = {int(crop(x, 10, rng=np.random.default_rng(s))[0]) for s in range(50)}
    assert len(starts) > 20 and min(starts) >= 0 and max(starts) <= 90
    assert crop(x, 200) is x
    with pytest.raises(ConfigError, match="did you mean 'random'"):
        crop(x, 10, "randon")
    with pytest.raises(ConfigError):
        crop(x, 0)


def test_load_audio_max_duration(wav_path: Path) -> None:
    full = load_audio(wav_path)
    lead = load_audio(wav_path, max_duration=0.25, crop_mode="leading")
    np.testing.assert_array_equal(lead, full[:4000])
    rand = load_audio(wav_path, max_duration=0.25, rng=np.random.default_rng(1))
    assert len(rand) == 4000
    assert len(load_audio(wav_path, max_duration=10.0)) == len(full)


# --- errors -----------------------------------------------------------------------------------------------------


def test_error_corrupt_bytes_and_file(tmp_path: Path) -> None:
    junk = b"RIFF\x00\x00not really a wave file" * 4
    with pytest.raises(AudioError, match="^<bytes>: cannot decode audio"):
        load_audio(junk)
    path = tmp_path / "broken.wav"
    path.write_bytes(junk)
    with pytest.raises(AudioError, match="broken.wav: cannot decode audio"):
        load_audio(path)
    with pytest.raises(AudioError, match="broken.wav: cannot read audio header"):
        audio_duration(path)
    with pytest.raises(AudioError, match="^<file object>: cannot decode"):
        load_audio(io.BytesIO(junk))


def test_error_empty(tmp_path: Path) -> None:
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioError, match="zero.wav: empty file"):
        load_audio(zero_bytes)
    no_samples = tmp_path / "nosamples.wav"
    soundfile.write(no_samples, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="nosamples.wav: empty audio"):
        load_audio(no_samples)
    with pytest.raises(AudioError, match="^<bytes>: empty"):
        load_audio(b"")
    with pytest.raises(AudioError, match="^<array>: empty"):
        load_audio(np.zeros(0, np.float32), source_sample_rate=16000)


def test_error_non_finite(tmp_path: Path) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros(1000, np.float32)
        x[500] = bad
        with pytest.raises(AudioError, match="^<array>: audio contains NaN or infinite"):
            load_audio(x, source_sample_rate=16000)
    path = tmp_path / "nan.wav"
    x = np.zeros(1000, np.float32)
    x[3] = np.nan
    soundfile.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: audio contains NaN"):
        load_audio(path)
    huge = np.full(10, 3e38, np.float32)  # finite, but its sum overflows: not mistaken for NaN
    assert read_audio(huge, source_sample_rate=8000)[0] is huge


def test_error_too_short(wav_path: Path) -> None:
    with pytest.raises(AudioError, match=r"tone.wav: too short: 0.500 s, need at least 1.000 s"):
        load_audio(wav_path, min_duration=1.0)
    assert len(load_audio(wav_path, min_duration=0.5)) == 8000
    with pytest.raises(AudioError, match="too short"):  # checked after the crop
        load_audio(wav_path, max_duration=0.2, min_duration=0.3)


def test_error_missing_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav: file not found"):
        load_audio(missing)
    with pytest.raises(AudioError, match="nope.wav: file not found"):
        audio_duration(missing)
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)


def test_error_array_without_rate_and_bad_types() -> None:
    with pytest.raises(AudioError, match="^<array>: a sample array needs source_sample_rate"):
        load_audio(np.zeros(100, np.float32))
    with pytest.raises(AudioError, match="unsupported audio source type int"):
        load_audio(5)  # type: ignore[arg-type]
    with pytest.raises(AudioError, match="unsupported audio source type list"):
        load_audio([0.0, 0.1])  # type: ignore[arg-type]
    with pytest.raises(AudioError, match="unsupported sample type complex"):
        load_audio(np.zeros(10, np.complex64), source_sample_rate=8000)
    with pytest.raises(AudioError, match="shape"):
        load_audio(np.zeros((2, 2, 10), np.float32), source_sample_rate=8000)


def test_wrong_declared_rate_for_file(wav_path: Path) -> None:
    with pytest.raises(AudioError, match="header says 16000 Hz"):
        read_audio(wav_path, source_sample_rate=8000)
    assert read_audio(wav_path, source_sample_rate=16000)[1] == 16000


def test_load_audio_never_aliases_input_array() -> None:
    x = tone(200, 0.1, 16000)
    y = load_audio(x, 16000, source_sample_rate=16000)
    np.testing.assert_array_equal(x, y)
    assert not np.shares_memory(x, y)


# --- save_wav ---------------------------------------------------------------------------------------------------


def test_save_wav_roundtrip_and_atomic(tmp_path: Path, wav_path: Path) -> None:
    x, sr = read_audio(wav_path)
    out = tmp_path / "deep" / "er" / "copy.wav"
    save_wav(out, x, sr)
    assert out.read_bytes() == (tmp_path / "deep" / "er" / "copy.wav").read_bytes()
    info = soundfile.info(out)
    assert (info.samplerate, info.subtype, info.format) == (16000, "PCM_16", "WAV")
    np.testing.assert_array_equal(read_audio(out)[0], x)  # 16-bit audio is written back bit-exactly
    assert os.listdir(out.parent) == ["copy.wav"]  # no temporary left behind
    save_wav(out, np.array([2.0, -2.0, 0.0], np.float32), sr)  # overwrite, clipped
    np.testing.assert_allclose(read_audio(out)[0], [32767 / 32768, -1.0, 0.0])
    stereo = np.zeros((10, 2), np.float32)
    save_wav(tmp_path / "st.wav", stereo, 8000)
    assert soundfile.info(tmp_path / "st.wav").channels == 2
    save_wav(tmp_path / "i16.wav", np.array([100, -100], np.int16), 8000)
    assert soundfile.read(tmp_path / "i16.wav", dtype="int16")[0].tolist() == [100, -100]


def test_save_wav_refuses_bad_data(tmp_path: Path) -> None:
    path = tmp_path / "bad.wav"
    with pytest.raises(AudioError, match="bad.wav: refusing to write NaN"):
        save_wav(path, np.array([0.0, np.nan], np.float32), 16000)
    with pytest.raises(AudioError, match="shape"):
        save_wav(path, np.zeros((1, 2, 3), np.float32), 16000)
    with pytest.raises(ConfigError):
        save_wav(path, np.zeros(3, np.float32), -1)
    assert not path.exists() and os.listdir(tmp_path) == []


def wav_with_rate(path: Path, rate: int, seconds_of_samples: int = 2000) -> Path:
    """A valid PCM WAV whose header claims ``rate`` Hz."""
    samples = (np.sin(np.arange(seconds_of_samples) * 0.3) * 8000).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16
    ) + b"data" + struct.pack("<I", len(samples))
    path.write_bytes(header + samples)
    return path


def test_absurd_sample_rate_is_refused_and_skipped(tmp_path):
    from mvector.audio import audio_duration
    from mvector.data.dataset import TrainDataset, Unreadable
    from mvector.data.lists import Utterance

    bad = wav_with_rate(tmp_path / "one_hz.wav", 1)
    with pytest.raises(AudioError, match=r"one_hz\.wav: sample rate 1 Hz is outside"):
        load_audio(bad, 16000, max_duration=3.0)
    with pytest.raises(AudioError, match="one_hz.wav"):
        audio_duration(bad)
    ds = TrainDataset([Utterance(str(bad), 0)], min_duration=0.0)
    assert isinstance(ds[0], Unreadable) and "sample rate" in ds[0].reason


def test_crop_happens_before_resampling(tmp_path, monkeypatch):
    import mvector.audio.io as audio_io

    path = tmp_path / "long.wav"
    save_wav(path, np.sin(np.arange(44100 * 20) * 0.01).astype("float32") * 0.5, 44100)
    seen = []
    real = audio_io.resample
    monkeypatch.setattr(audio_io, "resample", lambda x, a, b: seen.append(len(x)) or real(x, a, b))
    wave = load_audio(path, 16000, max_duration=1.5, rng=np.random.default_rng(0))
    assert wave.shape == (24000,) and seen and seen[0] < 44100 * 2  # 1.5 s resampled, not 20 s
