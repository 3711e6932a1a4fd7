"""Multi-recording enrolment with quality checks: catch a bad enrolment before it spoils every later decision.

A speaker's model is made once and compared against for years, so a bad enrolment recording costs more than a
bad test recording. The checks here look at the *raw* recordings (before level normalisation) and at their
embeddings, and report each problem with a reason:

========== ======================================================================================================
check      what it flags
========== ======================================================================================================
speech     too little speech after an energy VAD (``min_speech`` seconds)
clipping   a share of samples stuck at the recording's peak (flat tops, ``max_clipped``), whatever the scale
level      active speech very quiet (below ``min_level_db`` dBFS)
snr        speech not far enough above the noise floor (``min_snr_db``)
bandwidth  a sample rate below the model's, or audio *upsampled* from a lower rate: almost no energy above the
           original band edge (4 kHz for 8 kHz telephone audio), which the model was trained to see
agreement  recordings of one speaker that do not agree: a recording whose mean score against the others is
           below ``min_agreement`` (e.g. the verification threshold), likely another person or a broken file
========== ======================================================================================================

Each check's action is ``"warn"`` (reported, enrolled anyway), ``"refuse"`` (nothing is enrolled:
:class:`EnrolmentRefused`) or ``"off"``. The speaker's model is the length-normalised mean of the normalised
recording embeddings (:func:`combine_embeddings`), the rule the speaker database uses; a plain mean of raw
embeddings lets one loud-normed recording dominate (measured in ``benchmarks/RESULTS.md``).

>>> import numpy as np
>>> from mvector.data.synthetic import make_voices, synthesize_utterance
>>> voice = make_voices(1, seed=0)[0]
>>> takes = [synthesize_utterance(voice, 3.0, rng=np.random.default_rng(i)) for i in range(2)]
>>> clipped = np.clip(takes[1] * 20, -0.5, 0.5)
>>> report = check_enrolment([(takes[0], 16000), (clipped, 16000)], model_sample_rate=16000)
>>> [(i.check, i.recording) for i in report.issues]
[('clipping', 1)]
>>> report.ok, report.refused
(True, [])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from mvector.errors import AudioError, ConfigError

__all__ = [
    "CHECKS",
    "ACTIONS",
    "QualityConfig",
    "QualityIssue",
    "EnrolmentReport",
    "EnrolmentRefused",
    "analyse_recording",
    "agreement_scores",
    "check_enrolment",
    "combine_embeddings",
    "ENROLMENT_RULES",
    "enrol",
]

#: The checks, in the order they are reported.
CHECKS = ("speech", "clipping", "level", "snr", "bandwidth", "agreement")
#: What a check may do when it fails.
ACTIONS = ("warn", "refuse", "off")
#: Ways to combine a speaker's recording embeddings into one model.
ENROLMENT_RULES = ("normalised_mean", "mean")
_BAND_EDGES = (8000,)  # default candidate original rates of upsampled audio: narrowband telephone speech


class EnrolmentRefused(AudioError):
    """An enrolment refused by the quality policy; ``.report`` holds every issue found."""

    def __init__(self, message: str, report: EnrolmentReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class QualityConfig:
    """Limits of the enrolment checks and the action of each (``"warn"``, ``"refuse"`` or ``"off"``).

    ``upsampled_from`` lists the original sample rates whose upsampled audio the bandwidth check looks for
    (default 8 kHz telephone audio; add 11025, 12000 ... to be stricter). ``policy`` is one action for every
    check, or a mapping ``{check: action}`` (checks not named: ``"warn"``).
    ``min_agreement`` is a score (same scale as the model's scores, e.g. its EER threshold); ``None`` turns the
    agreement check off.

    >>> QualityConfig(policy={"speech": "refuse"}).action("speech"), QualityConfig().action("snr")
    ('refuse', 'warn')
    """

    min_speech: float = 1.0
    max_clipped: float = 0.002
    min_level_db: float = -45.0
    min_snr_db: float = 8.0
    max_band_energy_db: float = -45.0
    upsampled_from: tuple[int, ...] = _BAND_EDGES
    min_agreement: float | None = None
    policy: str | Mapping[str, str] = "warn"

    def __post_init__(self) -> None:
        for key in ("min_speech", "max_clipped", "min_level_db", "min_snr_db", "max_band_energy_db"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"QualityConfig.{key} must be a finite number, got {value!r}")
        if self.min_agreement is not None and (
            isinstance(self.min_agreement, bool) or not isinstance(self.min_agreement, (int, float))
        ):
            raise ConfigError(f"QualityConfig.min_agreement must be a number or None, got {self.min_agreement!r}")
        if isinstance(self.policy, str):
            if self.policy not in ACTIONS:
                raise ConfigError(f"policy must be one of {', '.join(ACTIONS)} or a mapping, got {self.policy!r}")
        elif isinstance(self.policy, Mapping):
            for check, action in self.policy.items():
                if check not in CHECKS:
                    raise ConfigError(f"policy: unknown check {check!r}; checks: {', '.join(CHECKS)}")
                if action not in ACTIONS:
                    raise ConfigError(f"policy[{check!r}]: action must be one of {', '.join(ACTIONS)}, got {action!r}")
        else:
            raise ConfigError(f"policy must be a string or a mapping, got {type(self.policy).__name__}")

    def action(self, check: str) -> str:
        """The action for ``check``."""
        if isinstance(self.policy, str):
            return self.policy
        return str(self.policy.get(check, "warn"))


@dataclass(frozen=True)
class QualityIssue:
    """One problem found: the ``check``, the ``recording`` index (``None``: the set), a readable ``message``, the
    measured ``value`` against the ``limit``, and the ``action`` the policy gives it."""

    check: str
    recording: int | None
    message: str
    value: float
    limit: float
    action: str


@dataclass
class EnrolmentReport:
    """The outcome of :func:`check_enrolment`: every issue, and per recording its measurements.

    >>> EnrolmentReport(issues=[], measurements=[]).ok
    True
    """

    issues: list[QualityIssue] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    agreement: list[float] | None = None

    @property
    def refused(self) -> list[QualityIssue]:
        """The issues whose action is ``"refuse"``."""
        return [i for i in self.issues if i.action == "refuse"]

    @property
    def warnings(self) -> list[QualityIssue]:
        """The issues whose action is ``"warn"``."""
        return [i for i in self.issues if i.action == "warn"]

    @property
    def ok(self) -> bool:
        """True when nothing is refused (warnings allowed)."""
        return not self.refused

    def failed(self, check: str) -> bool:
        """Whether ``check`` found a problem (whatever its action)."""
        return any(i.check == check for i in self.issues)

    def raise_if_refused(self, name: str = "speaker") -> None:
        """Raise :class:`EnrolmentRefused` listing every refused issue (nothing to do when :attr:`ok`)."""
        if self.refused:
            reasons = "; ".join(i.message for i in self.refused)
            raise EnrolmentRefused(f"enrolment of {name!r} refused: {reasons}", self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "issues": [i.__dict__ for i in self.issues],
            "measurements": self.measurements,
            "agreement": self.agreement,
        }


# ------------------------------------------------------------------------------------------------ measuring
def _frames(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    count = 1 + (len(x) - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(count)[:, None]
    return x[idx]


def _clipped_share(x: np.ndarray, peak: float) -> float:
    """Share of samples in runs of 3 or more consecutive samples at the peak magnitude (within 0.01 %): flat
    tops. A smooth waveform touches its peak for one or two samples; a clipped one stays there."""
    if peak <= 0:
        return 0.0
    at_peak = np.abs(x) >= peak * (1.0 - 1e-4)
    if at_peak.sum() < 3:
        return 0.0
    edges = np.diff(np.concatenate(([0], at_peak.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    runs = ends - starts
    return float(runs[runs >= 3].sum()) / x.size


def analyse_recording(
    samples: Any,
    sample_rate: int,
    model_sample_rate: int = 16000,
    candidate_rates: Sequence[int] = _BAND_EDGES,
    max_band_energy_db: float = -45.0,
) -> dict[str, Any]:
    """Measurements of one raw recording (mono or ``[T, C]``, any rate): the inputs of the checks.

    Returns ``duration``, ``speech_seconds`` (energy VAD: 25 ms frames within 35 dB of the loudest and 10 dB
    above the noise floor), ``clipped`` (share of samples in flat tops: runs of 3+ samples at the peak
    magnitude), ``level_db`` (RMS of the speech frames, dBFS), ``snr_db`` (speech frames against the
    quietest 10 % of frames; 100 for digital silence), ``sample_rate``, ``band_energy_db`` (energy above the
    band edge of the lowest of ``candidate_rates``, relative to the total, in dB) and ``band_edge_hz`` /
    ``apparent_rate`` (the lowest of ``candidate_rates`` the audio looks upsampled from: under ``max_band_energy_db``
    above its band edge; else ``None``).

    >>> sr = 16000
    >>> x = 0.1 * np.sin(2 * np.pi * 300 * np.arange(sr) / sr)
    >>> m = analyse_recording(x, sr)
    >>> round(m["duration"], 2), round(m["speech_seconds"], 1), round(m["level_db"], 1), m["apparent_rate"]
    (1.0, 1.0, -23.0, 8000)
    """
    from mvector.audio import resample, to_mono

    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = to_mono(x)
    if x.ndim != 1 or x.size == 0:
        raise AudioError(f"a recording must be a non-empty [T] or [T, C] array, got shape {list(np.shape(samples))}")
    if not np.isfinite(x).all():
        raise AudioError("a recording contains NaN or infinite samples")
    sr = int(sample_rate)
    peak = float(np.abs(x).max())
    clipped = _clipped_share(x, peak)
    frame, hop = max(1, int(0.025 * sr)), max(1, int(0.010 * sr))
    energy = (_frames(x.astype(np.float64), frame, hop) ** 2).mean(axis=1)
    energy_db = 10.0 * np.log10(np.maximum(energy, 1e-14))
    loudest = float(energy_db.max())
    floor = float(np.percentile(energy_db, 10))
    if loudest <= -130:  # digital silence
        speech = np.zeros(len(energy), bool)
    elif loudest - floor < 10.0:  # no quieter part to tell speech from: an energy VAD keeps it all
        speech = energy_db > loudest - 35.0
    else:
        speech = energy_db > max(loudest - 35.0, floor + 10.0)
    speech_seconds = float(speech.sum()) * hop / sr
    level_db = float(10.0 * np.log10(max(float(energy[speech].mean()), 1e-14))) if speech.any() else -140.0
    noise = energy_db <= np.percentile(energy_db, 10)
    noise_db = float(10.0 * np.log10(max(float(energy[noise].mean()), 1e-14)))
    snr_db = 100.0 if noise_db <= -130 else min(100.0, level_db - noise_db)
    # Bandwidth: at the model's rate, the share of energy above each candidate original band edge.
    y = resample(x, sr, model_sample_rate) if sr != model_sample_rate else x
    nfft = 512
    spec = np.zeros(nfft // 2 + 1)
    if len(y) >= nfft:
        win = np.hanning(nfft)
        for start in range(0, len(y) - nfft + 1, nfft // 2):
            spec += np.abs(np.fft.rfft(y[start : start + nfft] * win)) ** 2
    freqs = np.fft.rfftfreq(nfft, 1.0 / model_sample_rate)
    total = float(spec.sum())
    band_db, apparent, edge_hz = 0.0, None, None
    nyquist = model_sample_rate / 2
    for rate in sorted(int(r) for r in candidate_rates):
        edge = rate / 2
        if edge >= nyquist * 0.95 or total <= 0:
            continue
        above = float(spec[(freqs > edge * 1.05) & (freqs < nyquist * 0.97)].sum())
        ratio_db = 10.0 * math.log10(max(above / total, 1e-14))
        if edge_hz is None:
            band_db, edge_hz = ratio_db, edge
        if ratio_db < float(max_band_energy_db) and apparent is None:
            apparent, band_db, edge_hz = rate, ratio_db, edge
    return {
        "duration": len(x) / sr,
        "speech_seconds": speech_seconds,
        "clipped": clipped,
        "level_db": level_db,
        "snr_db": float(snr_db),
        "sample_rate": sr,
        "band_energy_db": float(band_db),
        "band_edge_hz": edge_hz,
        "apparent_rate": apparent,
    }


def agreement_scores(embeddings: Any) -> np.ndarray:
    """For each recording, its mean cosine score against the speaker's other recordings (``[n]``, n >= 2).

    >>> agreement_scores(np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])).round(3).tolist()
    [0.498, 0.547, 0.05]
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 2:
        raise ConfigError(f"agreement needs at least 2 embeddings [n, D], got shape {list(e.shape)}")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ConfigError("agreement: an embedding is all zeros")
    u = e / norms
    sim = u @ u.T
    return (sim.sum(axis=1) - np.diag(sim)) / (len(u) - 1)


def combine_embeddings(embeddings: Any, rule: str = "normalised_mean") -> np.ndarray:
    """One speaker model from ``[n, D]`` recording embeddings (unit length, float32).

    ``"normalised_mean"``: each embedding is length-normalised before averaging (every recording counts the
    same); ``"mean"``: the plain average of the raw embeddings (the original mvector rule), then normalised.

    >>> combine_embeddings([[10.0, 0.0], [0.0, 1.0]]).astype(float).round(3).tolist()
    [0.707, 0.707]
    >>> combine_embeddings([[10.0, 0.0], [0.0, 1.0]], rule="mean").astype(float).round(3).tolist()
    [0.995, 0.1]
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim == 1:
        e = e[None]
    if e.ndim != 2 or e.shape[0] == 0:
        raise ConfigError(f"combine_embeddings: expected [n, D] embeddings, got shape {list(e.shape)}")
    if rule not in ENROLMENT_RULES:
        raise ConfigError(f"unknown enrolment rule {rule!r}; choose one of {', '.join(ENROLMENT_RULES)}")
    if rule == "normalised_mean":
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    mean = e.mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ checking
def check_enrolment(
    recordings: Sequence[tuple[Any, int]],
    model_sample_rate: int = 16000,
    embeddings: Any = None,
    config: QualityConfig | None = None,
) -> EnrolmentReport:
    """Run the enrolment checks on ``recordings`` (a list of raw ``(samples, sample_rate)``) and, with
    ``embeddings`` (one per recording) and ``config.min_agreement``, the agreement check.

    Returns an :class:`EnrolmentReport`; call :meth:`EnrolmentReport.raise_if_refused` to apply a refusal.

    >>> from mvector.data.synthetic import make_voices, synthesize_utterance
    >>> wave = synthesize_utterance(make_voices(1, seed=0)[0], 3.0, sample_rate=8000, rng=np.random.default_rng(0))
    >>> report = check_enrolment([(wave, 8000)], model_sample_rate=16000, config=QualityConfig(policy="refuse"))
    >>> [i.check for i in report.issues], report.ok
    (['bandwidth'], False)
    """
    config = config or QualityConfig()
    if not recordings:
        raise ConfigError("check_enrolment: no recordings given")
    report = EnrolmentReport()

    def add(check: str, rec: int | None, message: str, value: float, limit: float) -> None:
        action = config.action(check)
        if action != "off":
            report.issues.append(QualityIssue(check, rec, message, float(value), float(limit), action))

    for i, item in enumerate(recordings):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ConfigError(f"recording {i}: expected (samples, sample_rate), got {type(item).__name__}")
        m = analyse_recording(item[0], item[1], model_sample_rate, config.upsampled_from, config.max_band_energy_db)
        report.measurements.append(m)
        if m["speech_seconds"] < config.min_speech:
            add(
                "speech", i,
                f"recording {i}: only {m['speech_seconds']:.2f} s of speech after VAD (at least "
                f"{config.min_speech:g} s wanted)", m["speech_seconds"], config.min_speech,
            )  # fmt: skip
        if m["clipped"] > config.max_clipped:
            add(
                "clipping", i,
                f"recording {i}: clipped ({100 * m['clipped']:.2f} % of samples at the peak, at most "
                f"{100 * config.max_clipped:g} % expected)", m["clipped"], config.max_clipped,
            )  # fmt: skip
        if m["level_db"] < config.min_level_db:
            add(
                "level", i,
                f"recording {i}: very low level ({m['level_db']:.1f} dBFS speech, at least "
                f"{config.min_level_db:g} dBFS wanted)", m["level_db"], config.min_level_db,
            )  # fmt: skip
        if m["snr_db"] < config.min_snr_db:
            add(
                "snr", i,
                f"recording {i}: noisy (speech {m['snr_db']:.1f} dB above the noise floor, at least "
                f"{config.min_snr_db:g} dB wanted)", m["snr_db"], config.min_snr_db,
            )  # fmt: skip
        if m["sample_rate"] < model_sample_rate:
            add(
                "bandwidth", i,
                f"recording {i}: recorded at {m['sample_rate']} Hz, below the model's {model_sample_rate} Hz "
                "(it lacks the upper band the model was trained on)", m["sample_rate"], model_sample_rate,
            )  # fmt: skip
        elif m["apparent_rate"] is not None and m["band_energy_db"] < config.max_band_energy_db:
            add(
                "bandwidth", i,
                f"recording {i}: looks upsampled from {m['apparent_rate']} Hz (energy above "
                f"{m['band_edge_hz']:g} Hz is {m['band_energy_db']:.0f} dB of the total)",
                m["band_energy_db"], config.max_band_energy_db,
            )  # fmt: skip
    if embeddings is not None and config.min_agreement is not None and config.action("agreement") != "off":
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(recordings):
            raise ConfigError(
                f"check_enrolment: give one embedding per recording ({len(recordings)}), got shape {list(emb.shape)}"
            )
        if len(emb) >= 2:
            agree = agreement_scores(emb)
            report.agreement = agree.tolist()
            limit = float(config.min_agreement)
            for i in np.flatnonzero(agree < limit).tolist():
                add(
                    "agreement", i,
                    f"recording {i}: disagrees with the speaker's other recordings (mean score {agree[i]:.3f}, "
                    f"below {limit:g}): another speaker, or a damaged recording?", agree[i], limit,
                )  # fmt: skip
    order = {c: k for k, c in enumerate(CHECKS)}
    report.issues.sort(key=lambda issue: (order[issue.check], -1 if issue.recording is None else issue.recording))
    return report




def _raw_audio(audio: Any, sample_rate: int | None) -> tuple[np.ndarray, int]:
    """Decode one input of the predictor's kinds without any processing: ``(mono samples, rate)``."""
    from mvector.audio import read_audio, to_mono

    if isinstance(audio, tuple):
        if len(audio) != 2:
            raise AudioError(f"audio tuples must be (samples, sample_rate), got a tuple of {len(audio)}")
        audio, sample_rate = audio
    if hasattr(audio, "read") and not isinstance(audio, (bytes, bytearray)):
        audio = audio.read()  # read a file object once; the bytes serve the checks and the embedding
    samples, rate = read_audio(np.asarray(audio) if isinstance(audio, list) else audio, source_sample_rate=sample_rate)
    return to_mono(samples), int(rate)


def enrol(
    predictor: Any,
    name: str,
    audios: Sequence[Any],
    config: QualityConfig | None = None,
    min_agreement: float | str | None = "threshold",
    sample_rate: int | None = None,
    mode: str = "any",
    record: Any = None,
) -> EnrolmentReport:
    """Check and enrol ``name`` from several recordings with an :class:`~mvector.inference.predictor.MVectorPredictor`.

    Each recording (path, bytes, file object or ``(samples, rate)``) is decoded raw for the checks, embedded the
    way the predictor embeds everything, and checked; ``min_agreement="threshold"`` uses the predictor's
    verification threshold as the agreement limit (a number sets it, ``None`` skips the check). A refused
    enrolment raises :class:`EnrolmentRefused` and writes nothing; warnings are issued with
    :func:`warnings.warn`; otherwise every recording is added to the database in one transaction (the speaker's
    model is the normalised mean of all its recordings). ``mode`` (``"any"``, ``"create"``, ``"append"``) and
    ``record`` (an idempotency record) are passed to :meth:`~mvector.inference.speaker_db.SpeakerDatabase.add`,
    which checks the name's existence in the write's transaction. Returns the report.
    """
    import warnings

    from mvector.inference.speaker_names import validate_name

    name = validate_name(name)
    items = list(audios) if isinstance(audios, (list, tuple)) and not _is_pair(audios) else [audios]
    if not items:
        raise AudioError(f"speaker {name!r}: no recordings given")
    raw = [_raw_audio(a, sample_rate) for a in items]
    config = config or QualityConfig()
    if min_agreement == "threshold":
        config = replace(config, min_agreement=float(predictor.threshold))
    elif min_agreement is not None:
        config = replace(config, min_agreement=float(min_agreement))
    emb = predictor.embed_batch([(x, sr) for x, sr in raw])
    report = check_enrolment(raw, int(predictor.sample_rate), embeddings=emb, config=config)
    report.raise_if_refused(name)
    for issue in report.warnings:
        warnings.warn(f"enrolment of {name!r}: {issue.message}", stacklevel=2)
    waves = [predictor.load((x, sr)) for x, sr in raw] if getattr(predictor, "keep_audio", False) else None
    predictor.db.add(name, emb, audio=waves, sample_rate=int(predictor.sample_rate), mode=mode, record=record)
    return report


def _is_pair(value: Any) -> bool:
    """``(samples, rate)`` rather than a list of recordings."""
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], (int, np.integer))
