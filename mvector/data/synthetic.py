"""Synthetic multi-speaker speech-like audio, so tests, the demo and benchmarks need no downloaded corpus.

Each :class:`Voice` is a source-filter "speaker": a glottal pulse train (own pitch range, open quotient,
spectral tilt, jitter, shimmer, breathiness) through a cascade of formant resonators (own vocal-tract length,
per-formant and per-vowel offsets, bandwidths), speaking at its own rate. An utterance is a random sequence
of syllables (vowels, nasals, fricatives, plosives, pauses) with a pitch contour, and then goes through a
random "channel" (gain, tilt and peaking EQ, band limits, background noise at a random SNR), so speakers
differ measurably but are not trivially separable.

Everything is driven by explicit seeds: the same arguments give the same samples and byte-identical files.

>>> voices = make_voices(2, seed=0)
>>> wav = synthesize_utterance(voices[0], 0.5, rng=np.random.default_rng(0))
>>> wav.dtype, wav.shape, bool(np.abs(wav).max() <= 1.0)
(dtype('float32'), (8000,), True)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvector.audio import save_wav
from mvector.errors import ConfigError
from mvector.utils.files import atomic_write_text

__all__ = ["Voice", "VOWELS", "make_voices", "synthesize_utterance", "generate_corpus"]

# Average adult-male F1-F3 (Hz) of ten English vowels, Peterson & Barney (1952).
VOWELS: dict[str, tuple[float, float, float]] = {
    "i": (270.0, 2290.0, 3010.0),
    "I": (390.0, 1990.0, 2550.0),
    "E": (530.0, 1840.0, 2480.0),
    "ae": (660.0, 1720.0, 2410.0),
    "a": (730.0, 1090.0, 2440.0),
    "O": (570.0, 840.0, 2410.0),
    "U": (440.0, 1020.0, 2240.0),
    "u": (300.0, 870.0, 2240.0),
    "V": (640.0, 1190.0, 2390.0),
    "3": (490.0, 1350.0, 1690.0),
}
_VOWEL_TABLE = np.array(list(VOWELS.values()))
_UPPER_FORMANTS = (3300.0, 3750.0)  # nominal F4, F5 of an adult male tract
_NASAL_FORMANTS = (250.0, 1100.0, 2300.0)
# Fricative noise bands: (centre Hz, bandwidth Hz, level relative to vowels) for s, sh, f, ch-like, h-like.
_FRICATIVES = ((5200.0, 2200.0, 0.15), (3000.0, 1400.0, 0.18), (4000.0, 5000.0, 0.05), (2200.0, 900.0, 0.12))
_BURSTS = (1200.0, 2000.0, 3500.0)  # plosive burst centres (p-, t-, k-like)
# Channel variation: tilt coefficient range, peaking-EQ gain range (dB), chance of a low-pass / high-pass, SNR (dB).
_CHANNEL_TILT = 0.15
_CHANNEL_PEAK_DB = 4.0
_CHANNEL_LOWPASS = 0.3
_CHANNEL_HIGHPASS = 0.3
_CHANNEL_SNR_DB = (20.0, 45.0)


@dataclass(frozen=True)
class Voice:
    """The parameters of one synthetic speaker (see :func:`make_voices`).

    >>> v = make_voices(1, seed=3)[0]
    >>> v.name, 60.0 < v.f0_mean < 300.0, len(v.formant_offsets)
    ('spk000', True, 5)
    """

    name: str
    f0_mean: float  # mean pitch, Hz
    f0_spread: float  # standard deviation of pitch movements, semitones
    tract_scale: float  # formant frequency scale; 1.0 is an adult male tract, shorter tracts are > 1
    formant_offsets: tuple[float, ...]  # multiplicative offset of each of F1..F5
    vowel_offsets: tuple[tuple[float, float], ...]  # per-vowel multiplicative offsets of (F1, F2)
    bandwidth_scale: float  # multiplies every formant bandwidth
    tilt: float  # one-pole low-pass coefficient on the source: 0 flat, towards 1 steeper spectral tilt
    open_quotient: float  # fraction of each glottal period the glottis is open
    breathiness: float  # aspiration noise level relative to voicing
    jitter: float  # per-period relative pitch perturbation (standard deviation)
    shimmer: float  # per-period relative amplitude perturbation (standard deviation)
    rate: float  # speaking-rate multiplier (> 1 is faster)
    fricative_scale: float  # shifts fricative noise bands
    fricative_level: float  # loudness of fricatives and bursts relative to vowels
    timbre: tuple[tuple[float, float, float], ...]  # fixed (Hz, dB, Q) peaks/dips colouring the voice


def make_voices(num_speakers: int, seed: int = 0) -> list[Voice]:
    """Draw ``num_speakers`` distinct voices, named ``spk000``, ``spk001``, ...; the same seed gives the same voices.

    About half are lower "male-like" voices (longer tract, lower pitch) and half higher "female-like" ones,
    with every other parameter drawn independently.

    >>> [v.name for v in make_voices(3)]
    ['spk000', 'spk001', 'spk002']
    >>> make_voices(2, seed=0) == make_voices(2, seed=0), make_voices(2, seed=0) == make_voices(2, seed=1)
    (True, False)
    """
    if int(num_speakers) < 1:
        raise ConfigError(f"num_speakers must be >= 1, got {num_speakers!r}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    voices = []
    for index in range(int(num_speakers)):
        high = rng.random() < 0.5
        if high:
            f0_mean = rng.uniform(160.0, 260.0)
            tract = rng.uniform(1.08, 1.25)
        else:
            f0_mean = rng.uniform(85.0, 160.0)
            tract = rng.uniform(0.90, 1.08)
        voices.append(
            Voice(
                name=f"spk{index:03d}",
                f0_mean=round(float(f0_mean), 3),
                f0_spread=round(float(rng.uniform(0.8, 3.0)), 3),
                tract_scale=round(float(tract), 4),
                formant_offsets=tuple(round(float(v), 4) for v in np.exp(rng.normal(0.0, 0.05, 5))),
                vowel_offsets=tuple(
                    (round(float(a), 4), round(float(b), 4)) for a, b in np.exp(rng.normal(0.0, 0.06, (len(VOWELS), 2)))
                ),
                bandwidth_scale=round(float(rng.uniform(0.7, 1.5)), 3),
                tilt=round(float(rng.uniform(0.1, 0.75)), 3),
                open_quotient=round(float(rng.uniform(0.4, 0.75)), 3),
                breathiness=round(float(rng.uniform(0.01, 0.25)), 3),
                jitter=round(float(rng.uniform(0.003, 0.02)), 4),
                shimmer=round(float(rng.uniform(0.02, 0.12)), 3),
                rate=round(float(rng.uniform(0.8, 1.25)), 3),
                fricative_scale=round(float(rng.uniform(0.85, 1.15)), 3),
                fricative_level=round(float(rng.uniform(0.4, 1.4)), 3),
                timbre=(
                    (round(float(rng.uniform(1000.0, 3000.0)), 1), round(float(rng.uniform(-6.0, 6.0)), 2), 1.0),
                    (round(float(rng.uniform(3000.0, 6000.0)), 1), round(float(rng.uniform(-8.0, 8.0)), 2), 1.5),
                ),
            )
        )
    return voices


def _resonator_sos(freqs: np.ndarray, bandwidths: np.ndarray, sample_rate: int) -> np.ndarray:
    """Second-order sections of a cascade of unity-DC-gain two-pole resonators (formants above 0.45 fs pass)."""
    sos = np.zeros((len(freqs), 6))
    sos[:, 3] = 1.0
    usable = freqs < 0.45 * sample_rate
    radius = np.exp(-np.pi * bandwidths / sample_rate)
    b = 2.0 * radius * np.cos(2.0 * np.pi * freqs / sample_rate)
    c = -(radius**2)
    sos[:, 0] = np.where(usable, 1.0 - b - c, 1.0)
    sos[:, 4] = np.where(usable, -b, 0.0)
    sos[:, 5] = np.where(usable, -c, 0.0)
    return sos


def _plan(voice: Voice, total: int, sample_rate: int, rng: np.random.Generator) -> list[tuple[str, int, int, int]]:
    """Segments (kind, start, end, variant) covering ``total`` samples: syllables grouped into phrases."""
    speed = 1.0 / (voice.rate * rng.uniform(0.9, 1.1))
    segments: list[tuple[str, int, int, int]] = []
    pos = 0

    def add(kind: str, seconds: float, variant: int = 0) -> None:
        nonlocal pos
        length = max(1, int(seconds * speed * sample_rate))
        segments.append((kind, pos, pos + length, variant))
        pos += length

    add("pause", rng.uniform(0.02, 0.15))
    while pos < total:
        for _ in range(int(rng.integers(2, 8))):  # syllables in this phrase
            onset = rng.random()
            if onset < 0.3:
                add("fric", rng.uniform(0.06, 0.14), int(rng.integers(len(_FRICATIVES))))
            elif onset < 0.55:
                add("closure", rng.uniform(0.03, 0.07))
                add("burst", rng.uniform(0.008, 0.02), int(rng.integers(len(_BURSTS))))
            elif onset < 0.7:
                add("nasal", rng.uniform(0.04, 0.09))
            add("vowel", rng.uniform(0.07, 0.22), int(rng.integers(len(VOWELS))))
            if rng.random() < 0.25:
                add("nasal", rng.uniform(0.04, 0.08))
            elif rng.random() < 0.15:
                add("fric", rng.uniform(0.05, 0.12), int(rng.integers(len(_FRICATIVES))))
        add("pause", rng.uniform(0.08, 0.35))
    return segments


def _glottal_source(
    voice: Voice, f0: np.ndarray, sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Glottal flow derivative (the excitation) and the flow itself, for the per-sample pitch ``f0``."""
    cycles = np.cumsum(f0 / sample_rate)
    periods = int(cycles[-1]) + 2
    jitter = 1.0 + voice.jitter * rng.standard_normal(periods)
    cycles = np.cumsum(f0 * jitter[cycles.astype(np.int64)] / sample_rate)
    index = cycles.astype(np.int64)
    # The pulse shape (raised-cosine opening, quarter-cosine closing, then closed) is read from a table.
    table_size = 2048
    grid = np.arange(table_size) / table_size
    opening = 0.6 * voice.open_quotient
    shape = np.zeros(table_size)
    rising = grid < opening
    shape[rising] = 0.5 - 0.5 * np.cos(np.pi * grid[rising] / opening)
    closing = ~rising & (grid < voice.open_quotient)
    shape[closing] = np.cos(0.5 * np.pi * (grid[closing] - opening) / (voice.open_quotient - opening))
    flow = shape[((cycles - index) * table_size).astype(np.int64)]
    flow *= 1.0 + voice.shimmer * rng.standard_normal(int(index[-1]) + 1)[index]
    excitation = np.diff(flow, prepend=0.0) * (sample_rate / f0)  # scale so higher pitch is not louder
    return excitation, flow


def _fade(length: int, ramp: int) -> np.ndarray:
    env = np.ones(length)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        env[:ramp] = rise
        env[length - ramp :] = rise[::-1]
    return env


def _speech(voice: Voice, total: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import lfilter, sosfilt

    segments = _plan(voice, total, sample_rate, rng)
    length = segments[-1][2]

    # Pitch: utterance base, declination, and smooth random movements every ~0.2 s.
    base = voice.f0_mean * math.exp(rng.normal(0.0, 0.04))
    knots = np.arange(0, length + int(0.2 * sample_rate), int(0.2 * sample_rate))
    semitones = rng.normal(0.0, voice.f0_spread, len(knots)) - np.linspace(0.0, rng.uniform(1.0, 3.0), len(knots))
    f0 = base * 2.0 ** (np.interp(np.arange(length), knots, semitones) / 12.0)
    excitation, flow = _glottal_source(voice, f0, sample_rate, rng)
    excitation = lfilter([1.0 - voice.tilt], [1.0, -voice.tilt], excitation)

    voicing = np.zeros(length)
    ramp = int(0.012 * sample_rate)
    for kind, start, end, _ in segments:
        if kind in ("vowel", "nasal"):
            voicing[start:end] = _fade(end - start, ramp) * (1.0 if kind == "vowel" else 0.35)
    noise = rng.standard_normal(length, dtype=np.float32)
    breath = voice.breathiness * noise * (0.3 + flow)
    excitation = (excitation + breath * float(np.std(excitation) + 1e-9)) * voicing

    # Voiced part: formant cascade, coefficients switched per segment with the filter state carried over.
    scale = voice.tract_scale * np.array(voice.formant_offsets)
    upper = np.array(_UPPER_FORMANTS)
    voiced = np.zeros(length)
    state = np.zeros((5, 2))
    previous_end = -1
    for kind, start, end, variant in segments:
        if kind == "vowel":
            f1, f2 = voice.vowel_offsets[variant]
            freqs = np.concatenate((_VOWEL_TABLE[variant] * (f1, f2, 1.0), upper)) * scale
        elif kind == "nasal":
            freqs = np.concatenate((_NASAL_FORMANTS, upper)) * scale
        else:
            continue  # no voicing here; the faded-out ringing of the last voiced segment is dropped
        if start != previous_end:
            state = np.zeros((5, 2))
        bandwidths = (50.0 + 0.06 * freqs) * voice.bandwidth_scale * (1.6 if kind == "nasal" else 1.0)
        voiced[start:end], state = sosfilt(
            _resonator_sos(freqs, bandwidths, sample_rate), excitation[start:end], zi=state
        )
        previous_end = end

    # Noise part: fricatives and plosive bursts, each its own resonance on a slice of the noise.
    unvoiced = np.zeros(length)
    level = float(np.sqrt(np.mean(voiced**2)) + 1e-9) * voice.fricative_level
    nyquist_cap = 0.45 * sample_rate
    for kind, start, end, variant in segments:
        if kind not in ("fric", "burst"):
            continue
        if kind == "fric":
            centre, width, gain = _FRICATIVES[variant]
            env = _fade(end - start, int(0.02 * sample_rate))
        else:
            centre, width, gain = _BURSTS[variant], 1500.0, 0.5
            env = np.exp(-np.arange(end - start) / (0.004 * sample_rate))
        centre = min(centre * voice.fricative_scale * voice.tract_scale, nyquist_cap)
        radius = math.exp(-math.pi * width / sample_rate)
        a = (1.0, -2.0 * radius * math.cos(2.0 * math.pi * centre / sample_rate), radius * radius)
        band = lfilter((1.0, 0.0, -1.0), a, noise[start:end])  # band-pass: zeros at DC and Nyquist
        band *= gain * level / float(np.sqrt(np.mean(band**2)) + 1e-12)
        unvoiced[start:end] = band * env
    return (voiced + unvoiced)[:total]


def _biquad(kind: str, freq: float, sample_rate: int, q: float = 0.7071, gain_db: float = 0.0) -> np.ndarray:
    """One second-order section from the audio-EQ-cookbook formulas ("low", "high" or "peak")."""
    w0 = 2.0 * math.pi * freq / sample_rate
    cos_w0 = math.cos(w0)
    alpha = math.sin(w0) / (2.0 * q)
    if kind == "low":
        b = [(1.0 - cos_w0) / 2.0, 1.0 - cos_w0, (1.0 - cos_w0) / 2.0]
        a = [1.0 + alpha, -2.0 * cos_w0, 1.0 - alpha]
    elif kind == "high":
        b = [(1.0 + cos_w0) / 2.0, -(1.0 + cos_w0), (1.0 + cos_w0) / 2.0]
        a = [1.0 + alpha, -2.0 * cos_w0, 1.0 - alpha]
    else:
        amp = 10.0 ** (gain_db / 40.0)
        b = [1.0 + alpha * amp, -2.0 * cos_w0, 1.0 - alpha * amp]
        a = [1.0 + alpha / amp, -2.0 * cos_w0, 1.0 - alpha / amp]
    return np.array(b + a) / a[0]


def _channel(speech: np.ndarray, voice: Voice, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The voice's fixed timbre, then a random recording channel: tilt, peaking EQ, optional band limits,
    background noise and gain (all the filters run as one cascade)."""
    from scipy.signal import lfilter, sosfilt

    sections = [
        _biquad("peak", min(hz, 0.45 * sample_rate), sample_rate, q=q, gain_db=db) for hz, db, q in voice.timbre
    ]
    sections.append(np.array([1.0, -rng.uniform(-_CHANNEL_TILT, _CHANNEL_TILT), 0.0, 1.0, 0.0, 0.0]))
    freq = rng.uniform(300.0, min(3500.0, 0.4 * sample_rate))
    sections.append(
        _biquad(
            "peak", freq, sample_rate, q=rng.uniform(0.7, 1.5), gain_db=rng.uniform(-_CHANNEL_PEAK_DB, _CHANNEL_PEAK_DB)
        )
    )
    if rng.random() < _CHANNEL_LOWPASS:  # telephone-like to wide-band upper limit, 4th-order Butterworth
        cutoff = min(rng.uniform(4000.0, 8000.0), 0.45 * sample_rate)
        sections += [_biquad("low", cutoff, sample_rate, q=0.5412), _biquad("low", cutoff, sample_rate, q=1.3066)]
    if rng.random() < _CHANNEL_HIGHPASS:  # rumble / small-microphone lower limit
        sections.append(_biquad("high", rng.uniform(60.0, 150.0), sample_rate))
    out = sosfilt(np.stack(sections), speech)
    signal_rms = float(np.sqrt(np.mean(out**2)) + 1e-12)
    colour = rng.uniform(0.0, 0.95)  # from white to brownish noise
    noise = lfilter([1.0], [1.0, -colour], rng.standard_normal(len(out), dtype=np.float32))
    snr_db = rng.uniform(*_CHANNEL_SNR_DB)
    noise *= signal_rms / (float(np.sqrt(np.mean(noise**2))) + 1e-12) * 10.0 ** (-snr_db / 20.0)
    out += noise
    peak = float(np.abs(out).max())
    if peak > 0.0:
        out *= rng.uniform(0.2, 0.95) / peak
    return out


def synthesize_utterance(
    voice: Voice, duration: float, sample_rate: int = 16000, rng: np.random.Generator | None = None
) -> np.ndarray:
    """One utterance of ``voice``: float32 ``[round(duration * sample_rate)]`` with peak <= 1.

    Content (syllables, pitch contour) and the recording channel are drawn from ``rng`` (a fresh unseeded
    generator when None), so pass a seeded generator for reproducible audio.

    >>> v = make_voices(1)[0]
    >>> a = synthesize_utterance(v, 1.0, 8000, rng=np.random.default_rng(1))
    >>> b = synthesize_utterance(v, 1.0, 8000, rng=np.random.default_rng(1))
    >>> a.shape, bool((a == b).all()), 0.1 < float(np.abs(a).max()) <= 1.0
    ((8000,), True, True)
    """
    if not isinstance(voice, Voice):
        raise ConfigError(f"voice must be a Voice (see make_voices), got {type(voice).__name__}")
    if int(sample_rate) < 4000:
        raise ConfigError(f"sample_rate must be >= 4000 Hz, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    total = int(round(float(duration) * sample_rate))
    if total < 1:
        raise ConfigError(f"duration must be > 0 seconds, got {duration!r}")
    generator = rng if rng is not None else np.random.default_rng()
    speech = _speech(voice, total, sample_rate, generator)
    return _channel(speech, voice, sample_rate, generator).astype(np.float32)


def generate_corpus(
    out_dir: str | os.PathLike[str],
    num_speakers: int = 10,
    utterances_per_speaker: int = 8,
    *,
    sample_rate: int = 16000,
    min_duration: float = 1.5,
    max_duration: float = 4.0,
    seed: int = 0,
    list_name: str = "list.txt",
) -> Path:
    """Write a synthetic corpus and its data list; return the list's path.

    Files are ``out_dir/<speaker>/<speaker>_<k>.wav`` (16-bit PCM, e.g. ``spk003/spk003_007.wav``) with
    durations uniform in ``[min_duration, max_duration]``; ``out_dir/<list_name>`` has one
    ``relative/path.wav<TAB>label`` line per file, labels ``0 .. num_speakers - 1``. The same arguments give
    byte-identical files; another ``seed`` gives other voices (``seed=1`` makes a speaker-disjoint test set).

    >>> import tempfile
    >>> lst = generate_corpus(tempfile.mkdtemp(), num_speakers=2, utterances_per_speaker=1, sample_rate=8000,
    ...                       min_duration=0.5, max_duration=0.5)
    >>> lst.read_text().splitlines()
    ['spk000/spk000_000.wav\\t0', 'spk001/spk001_000.wav\\t1']
    """
    if int(utterances_per_speaker) < 1:
        raise ConfigError(f"utterances_per_speaker must be >= 1, got {utterances_per_speaker!r}")
    if not 0.0 < min_duration <= max_duration:
        raise ConfigError(f"need 0 < min_duration <= max_duration, got {min_duration!r} and {max_duration!r}")
    if not list_name or os.path.basename(list_name) != list_name:
        raise ConfigError(f"list_name must be a plain file name, got {list_name!r}")
    root = Path(out_dir)
    voices = make_voices(num_speakers, seed=seed)
    lines = []
    for label, voice in enumerate(voices):
        for k in range(int(utterances_per_speaker)):
            rng = np.random.default_rng([int(seed), label, k, 0xA0D10])
            duration = float(rng.uniform(min_duration, max_duration))
            samples = synthesize_utterance(voice, duration, sample_rate, rng=rng)
            relative = f"{voice.name}/{voice.name}_{k:03d}.wav"
            save_wav(root / relative, samples, sample_rate)
            lines.append(f"{relative}\t{label}\n")
    list_path = root / list_name
    atomic_write_text(list_path, "".join(lines))
    return list_path
