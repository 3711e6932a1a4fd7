"""Generate ``tests/data/feature_refs.npz``: librosa and kaldi-native-fbank references for the featurizers.

Run once by hand (needs ``pip install "mvector[parity]"``, i.e. librosa and kaldi-native-fbank, which are not
test dependencies)::

    python tests/make_feature_refs.py

The npz holds the input signals (float32, 16 kHz), the parameters used (a JSON string under ``params``) and
one reference array per (signal, method), named ``<signal>__<case>``, shaped ``[frames, dim]``. References are
computed in float64 from the float32 signals. Natural logs are floored at 1e-10 (Spectrogram and
MelSpectrogram), MFCC uses ``power_to_db(top_db=None)``, Fbank uses dither 0 on int16-scaled samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import kaldi_native_fbank as knf
import librosa
import numpy as np

SAMPLE_RATE = 16000
OUT = Path(__file__).with_name("data") / "feature_refs.npz"

#: Parameters of each reference case; the tests build featurizers from exactly these.
PARAMS = {
    "spectrogram": {"method": "Spectrogram", "conf": {"n_fft": 512, "win_length": 400, "hop_length": 160}},
    "melspectrogram": {
        "method": "MelSpectrogram",
        "conf": {"n_fft": 512, "win_length": 400, "hop_length": 160, "f_min": 20.0, "f_max": 7600.0, "n_mels": 80},
    },
    "mfcc": {
        "method": "MFCC",
        "conf": {"n_fft": 512, "win_length": 400, "hop_length": 160, "f_min": 20.0, "n_mels": 64, "n_mfcc": 40},
    },
    "fbank": {"method": "Fbank", "conf": {"num_mel_bins": 80, "frame_length": 25, "frame_shift": 10, "dither": 0.0}},
    "fbank_nosnip": {
        "method": "Fbank",
        "conf": {"num_mel_bins": 40, "frame_length": 25, "frame_shift": 10, "dither": 0.0, "snip_edges": False},
    },
}


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Harmonics of a vibrato fundamental with a formant-like envelope, syllable modulation and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120.0 + 15.0 * np.sin(2 * np.pi * 5.0 * t) + 20.0 * t
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    wave = np.zeros_like(t)
    for k in range(1, 30):
        gain = np.exp(-(((k * 130.0) - 700.0) ** 2) / 2e5) + 0.5 * np.exp(-(((k * 130.0) - 1800.0) ** 2) / 4e5)
        wave += (gain + 0.02) / k**0.5 * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t) ** 2
    wave = wave * envelope
    wave = 0.3 * wave / np.abs(wave).max() + 0.01 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def chirp(seconds: float, seed: int) -> np.ndarray:
    """A linear chirp 100 Hz → 7 kHz plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.5 * np.sin(2 * np.pi * (100.0 * t + 0.5 * (6900.0 / seconds) * t**2))
    return (wave + 0.03 * rng.standard_normal(t.size)).astype(np.float32)


def librosa_power(y: np.ndarray, conf: dict) -> np.ndarray:
    spec = librosa.stft(
        y.astype(np.float64),
        n_fft=conf["n_fft"],
        hop_length=conf["hop_length"],
        win_length=conf["win_length"],
        window="hann",
        center=True,
        pad_mode="reflect",
    )
    return np.abs(spec) ** 2


def librosa_mel(y: np.ndarray, conf: dict) -> np.ndarray:
    return librosa.feature.melspectrogram(
        S=librosa_power(y, conf),
        sr=SAMPLE_RATE,
        n_mels=conf["n_mels"],
        fmin=conf["f_min"],
        fmax=conf.get("f_max"),
        htk=True,
        norm=None,
    )


def reference(case: str, y: np.ndarray) -> np.ndarray:
    conf = PARAMS[case]["conf"]
    method = PARAMS[case]["method"]
    if method == "Spectrogram":
        out = np.log(np.maximum(librosa_power(y, conf), 1e-10))
    elif method == "MelSpectrogram":
        out = np.log(np.maximum(librosa_mel(y, conf), 1e-10))
    elif method == "MFCC":
        db = librosa.power_to_db(librosa_mel(y, conf), ref=1.0, amin=1e-10, top_db=None)
        out = librosa.feature.mfcc(S=db, n_mfcc=conf["n_mfcc"], dct_type=2, norm="ortho")
    else:
        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = SAMPLE_RATE
        opts.frame_opts.frame_length_ms = conf["frame_length"]
        opts.frame_opts.frame_shift_ms = conf["frame_shift"]
        opts.frame_opts.dither = 0.0
        opts.frame_opts.snip_edges = conf.get("snip_edges", True)
        opts.mel_opts.num_bins = conf["num_mel_bins"]
        fbank = knf.OnlineFbank(opts)
        fbank.accept_waveform(SAMPLE_RATE, (y.astype(np.float64) * 32768.0).tolist())
        fbank.input_finished()
        return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)]).astype(np.float32)
    return out.T.astype(np.float32)


def main() -> None:
    signals = {"speech": speech_like(1.0, seed=1), "chirp": chirp(0.83, seed=2)}
    arrays: dict[str, np.ndarray] = {f"signal__{name}": y for name, y in signals.items()}
    for name, y in signals.items():
        for case in PARAMS:
            arrays[f"{name}__{case}"] = reference(case, y)
    meta = {"sample_rate": SAMPLE_RATE, "cases": PARAMS, "signals": list(signals)}
    meta["versions"] = {"librosa": librosa.__version__, "kaldi_native_fbank": getattr(knf, "__version__", "?")}
    arrays["params"] = np.array(json.dumps(meta, sort_keys=True))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB): {', '.join(sorted(arrays))}")


if __name__ == "__main__":
    main()
