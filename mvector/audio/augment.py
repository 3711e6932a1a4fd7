"""Waveform augmentation for training: speed, pitch, reverb, noise, volume, shift (+ SpecAugment settings).

The configuration (``mvector/configs/augmentation.yml`` documents every key) is loaded with
:func:`load_augmentation_config`; :func:`build_augmenter` turns it into a :class:`WaveAugmenter`, called by the
training dataset on each crop with the clip's own random generator, so results do not depend on the number of
data-loading workers. SpecAugment runs on the features; :func:`spec_augment_kwargs` gives its arguments.

>>> import numpy as np
>>> aug = build_augmenter({"volume": {"prob": 1.0, "min_gain_db": 6.0, "max_gain_db": 6.0}})
>>> x = np.full(160, 0.1, dtype=np.float32)
>>> y = aug(x, 16000, np.random.default_rng(0))
>>> round(float(20 * np.log10(y[0] / x[0])), 3)
6.0
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

from mvector.audio.io import AUDIO_EXTENSIONS
from mvector.errors import AudioError, ConfigError, check_keys
from mvector.utils.yaml_io import read_yaml_file

__all__ = [
    "AUGMENTATION_DEFAULTS",
    "AUDIO_EXTENSIONS",
    "DEFAULT_CONFIG_PATH",
    "load_augmentation_config",
    "WaveAugmenter",
    "build_augmenter",
    "spec_augment_kwargs",
    "speed_label_factors",
    "pitch_label_factors",
    "speed_label_groups",
]

#: The bundled configuration file.
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "augmentation.yml"

#: File name endings searched for in noise and impulse-response folders.

#: Every section and key with its default; a key left out of a section takes this value.
AUGMENTATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "speed": {"prob": 0.5, "speeds": [0.9, 1.0, 1.1], "speaker_per_speed": False},
    "pitch": {"prob": 0.0, "factors": [0.8, 1.25], "speaker_per_pitch": False},
    "volume": {"prob": 0.3, "min_gain_db": -6.0, "max_gain_db": 6.0},
    "noise": {"prob": 0.3, "noise_dir": "dataset/noise", "min_snr_db": 5.0, "max_snr_db": 20.0},
    "reverb": {"prob": 0.2, "rir_dir": "dataset/rir"},
    "equalizer": {"prob": 0.0, "max_bands": 2, "max_gain_db": 8.0, "band_limit_prob": 0.3},
    "colored_noise": {"prob": 0.0, "min_snr_db": 10.0, "max_snr_db": 30.0, "min_exponent": 0.0, "max_exponent": 2.0},
    "shift": {"prob": 0.0, "max_shift_ms": 100.0},
    "spec_aug": {"prob": 0.5, "freq_masks": 1, "freq_mask_width": 8, "time_masks": 1, "time_mask_width": 10},
}

_INT_KEYS = {"freq_masks", "freq_mask_width", "time_masks", "time_mask_width", "max_bands"}
_STR_KEYS = {"noise_dir", "rir_dir"}

#: The waveform augmentations, in the order they run (SpecAugment runs later, on the features).
WAVE_AUGMENTATIONS = ("speed", "pitch", "reverb", "equalizer", "noise", "colored_noise", "volume", "shift")

#: Equalizer draws: peak centres log-uniform in this range (Hz), widths in octaves, band-limit cut-offs (Hz).
EQ_CENTRE_HZ = (150.0, 5000.0)
EQ_OCTAVES = (0.5, 2.0)
EQ_LOWPASS_HZ = (3000.0, 7000.0)
EQ_HIGHPASS_HZ = (100.0, 400.0)


def equalizer_gain_db(freqs: Any, centres: Any, octaves: Any, gains_db: Any, lowpass: Any, highpass: Any, xp: Any = np):
    """The equalizer's gain in dB at ``freqs``: peaks plus optional 2nd-order low/high-pass roll-offs.

    Each peak is a bell in log frequency (``gains_db`` at ``centres``, ``octaves`` wide at half height); the
    band limits follow a Butterworth magnitude, ``-10·log10(1 + (f/lowpass)^4)`` and ``-10·log10(1 +
    (highpass/f)^4)`` (``inf`` / 0 turn them off). Works on numpy arrays or torch tensors (``xp`` is the
    module), with peak parameters shaped ``[..., bands]`` and ``freqs`` ``[bins]``; the result is ``[..., bins]``.

    >>> f = np.array([100.0, 1000.0, 8000.0])
    >>> np.round(equalizer_gain_db(f, np.array([1000.0]), np.array([1.0]), np.array([6.0]), np.inf, 0.0), 2).tolist()
    [0.0, 6.0, 0.0]
    >>> float(np.round(equalizer_gain_db(f, np.zeros(0), np.ones(0), np.zeros(0), 1000.0, 0.0)[1], 2))
    -3.01
    """
    f = xp.clip(freqs, 1.0, None)
    distance = xp.log2(f / centres[..., :, None]) / (octaves[..., :, None] / 2.0)
    peaks = (gains_db[..., :, None] * 2.0 ** (-(distance**2))).sum(-2)
    limits = -10.0 * xp.log10(1.0 + (f / lowpass) ** 4) - 10.0 * xp.log10(1.0 + (highpass / f) ** 4)
    return peaks + limits


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    return float(value)


def speed_label_factors(conf: Mapping[str, Any]) -> list[float]:
    """The speed factors that count as speakers of their own, in label order (empty: labels are kept).

    With ``speed.speaker_per_speed`` on and speed perturbation enabled, a clip played at the ``k``-th factor
    of this list (1-based) is trained as speaker ``label + k × num_speakers`` (speed moves pitch and formants
    together, so the field's recipes treat a sped-up voice as another voice); factor 1.0 keeps the label. The
    classifier then has ``(1 + len(factors)) × num_speakers`` classes (:func:`speed_label_groups`).

    >>> speed_label_factors({"speed": {"prob": 0.6, "speeds": [1.1, 1.0, 0.9], "speaker_per_speed": True}})
    [0.9, 1.1]
    >>> speed_label_factors({"speed": {"prob": 0.6, "speeds": [0.9, 1.0, 1.1]}})
    []
    """
    speed = (conf or {}).get("speed") or {}
    if not speed.get("speaker_per_speed") or not speed.get("prob", AUGMENTATION_DEFAULTS["speed"]["prob"]) > 0:
        return []
    return sorted({float(f) for f in speed.get("speeds", AUGMENTATION_DEFAULTS["speed"]["speeds"])} - {1.0})


def pitch_label_factors(conf: Mapping[str, Any]) -> list[float]:
    """The pitch factors that count as speakers of their own (``pitch.speaker_per_pitch``), in label order.

    A clip shifted by the ``k``-th factor of this list (1-based) is trained as speaker
    ``label + (len(speed_label_factors) + k) × num_speakers``: the label groups of the speeds come first.

    >>> pitch_label_factors({"pitch": {"prob": 0.5, "factors": [1.25, 0.8], "speaker_per_pitch": True}})
    [0.8, 1.25]
    >>> pitch_label_factors({"pitch": {"prob": 0.0, "factors": [0.8], "speaker_per_pitch": True}})
    []
    """
    pitch = (conf or {}).get("pitch") or {}
    if not pitch.get("speaker_per_pitch") or not pitch.get("prob", AUGMENTATION_DEFAULTS["pitch"]["prob"]) > 0:
        return []
    return sorted({float(f) for f in pitch.get("factors", AUGMENTATION_DEFAULTS["pitch"]["factors"])} - {1.0})


def speed_label_groups(conf: Mapping[str, Any] | None) -> int:
    """How many label groups the classifier holds: 1, plus one per speed and per pitch factor with labels of
    their own.

    >>> speed_label_groups({"speed": {"prob": 0.6, "speeds": [0.9, 1.0, 1.1], "speaker_per_speed": True}})
    3
    >>> speed_label_groups({"speed": {"prob": 0.6, "speeds": [0.9, 1.0, 1.1], "speaker_per_speed": True},
    ...                     "pitch": {"prob": 0.5, "factors": [0.8, 1.25], "speaker_per_pitch": True}})
    5
    >>> speed_label_groups(None)
    1
    """
    return 1 + len(speed_label_factors(conf or {})) + len(pitch_label_factors(conf or {}))


def equalizer_changes_anything(section: Mapping[str, Any]) -> bool:
    """Whether an ``equalizer`` section can alter a clip: it has peaks with a gain, or band limits.

    >>> equalizer_changes_anything({"max_bands": 0, "max_gain_db": 8.0, "band_limit_prob": 0.0})
    False
    """
    peaks = section["max_bands"] > 0 and section["max_gain_db"] > 0.0
    return peaks or section["band_limit_prob"] > 0.0


def draw_equalizer(conf: Mapping[str, Any], rng: np.random.Generator) -> tuple[tuple[np.ndarray, ...], float, float]:
    """Random equalizer settings for one clip from an ``equalizer`` section: ``(centres, octaves, gains_db)``
    of 0 to ``max_bands`` peaks, and the low-pass / high-pass cut-offs (``inf`` / 0: none).

    With probability ``band_limit_prob`` the clip is band-limited: a low-pass, a high-pass or both (a
    telephone-like band), cut-offs drawn in :data:`EQ_LOWPASS_HZ` and :data:`EQ_HIGHPASS_HZ`.

    >>> (centres, octaves, gains), low, high = draw_equalizer(
    ...     {"max_bands": 2, "max_gain_db": 8.0, "band_limit_prob": 1.0}, np.random.default_rng(0))
    >>> len(centres) <= 2 and bool(np.all(np.abs(gains) <= 8.0)), low > 3000.0 or high >= 100.0
    (True, True)
    """
    count = int(rng.integers(0, int(conf["max_bands"]) + 1))
    centres = np.exp(rng.uniform(math.log(EQ_CENTRE_HZ[0]), math.log(EQ_CENTRE_HZ[1]), count))
    octaves = rng.uniform(EQ_OCTAVES[0], EQ_OCTAVES[1], count)
    gains = rng.uniform(-conf["max_gain_db"], conf["max_gain_db"], count)
    lowpass, highpass = math.inf, 0.0
    if rng.random() < conf["band_limit_prob"]:
        kind = int(rng.integers(3))  # 0 low-pass, 1 high-pass, 2 both
        if kind != 1:
            lowpass = float(rng.uniform(*EQ_LOWPASS_HZ))
        if kind != 0:
            highpass = float(rng.uniform(*EQ_HIGHPASS_HZ))
    return (centres, octaves, gains), lowpass, highpass


def _check_section(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    where = f"augmentation config [{name}]"
    if not isinstance(given, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {given!r}")
    check_keys(given, AUGMENTATION_DEFAULTS[name], where)
    section = copy.deepcopy(AUGMENTATION_DEFAULTS[name])
    section.update(given)
    for key, value in section.items():
        at = f"{name}.{key} in the augmentation config"
        if key in _STR_KEYS:
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise ConfigError(f"{at} must be a folder path, got {value!r}")
            section[key] = str(value)
        elif key in _INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{at} must be an integer >= 0, got {value!r}")
        elif key in ("speaker_per_speed", "speaker_per_pitch"):
            if not isinstance(value, bool):
                raise ConfigError(f"{at} must be true or false, got {value!r}")
        elif key in ("speeds", "factors"):
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{at} must be a non-empty list of {name} factors, got {value!r}")
            speeds = [_number(v, at) for v in value]
            if any(not 0.5 <= s <= 2.0 for s in speeds):
                raise ConfigError(f"{at} must lie in [0.5, 2.0], got {value!r}")
            section[key] = speeds
        else:
            section[key] = _number(value, at)
    if not 0.0 <= section["prob"] <= 1.0:
        raise ConfigError(f"{name}.prob in the augmentation config must be in [0, 1], got {section['prob']}")
    for low, high in (("min_gain_db", "max_gain_db"), ("min_snr_db", "max_snr_db"), ("min_exponent", "max_exponent")):
        if low in section and section[low] > section[high]:
            raise ConfigError(
                f"{name}.{low} ({section[low]}) is larger than {name}.{high} ({section[high]}) "
                "in the augmentation config"
            )
    if name == "equalizer" and not 0.0 <= section["band_limit_prob"] <= 1.0:
        raise ConfigError(
            f"equalizer.band_limit_prob in the augmentation config must be in [0, 1], got {section['band_limit_prob']}"
        )
    for key in ("max_gain_db", "max_shift_ms"):
        if name in ("equalizer", "shift") and key in section and section[key] < 0:
            raise ConfigError(f"{name}.{key} in the augmentation config must be >= 0, got {section[key]}")
    return section


def load_augmentation_config(source: Union[str, os.PathLike, Mapping[str, Any], None] = None) -> dict[str, Any]:
    """Load and validate an augmentation config: a YAML path, a dict, or None for the bundled default file.

    Returns every section with every key filled in. A section left out (or set to null) is turned off
    (``prob`` 0); a key left out takes its default; an unknown key is a :class:`ConfigError` naming the
    nearest valid one.

    >>> conf = load_augmentation_config({"noise": {"prob": 0.5, "noise_dir": "my_noise"}})
    >>> conf["noise"]["max_snr_db"], conf["speed"]["prob"]
    (20.0, 0.0)
    >>> load_augmentation_config(None)["reverb"]["rir_dir"]
    'dataset/rir'
    >>> load_augmentation_config({"volume": {"max_gain": 3}})
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: unknown key 'max_gain' in augmentation config [volume]; did you mean 'max_gain_db'? ...
    """
    where = "the augmentation config"
    if source is None:
        source = DEFAULT_CONFIG_PATH
    if isinstance(source, Mapping):
        raw: Any = dict(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: augmentation config file not found")
        where = str(path)
        raw = read_yaml_file(path, "augmentation config")
        if raw is None:
            raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of augmentation sections, got {type(raw).__name__}")
    check_keys(raw, AUGMENTATION_DEFAULTS, where)
    conf: dict[str, Any] = {}
    for name in AUGMENTATION_DEFAULTS:
        given = raw.get(name)
        if given is None:
            given = {"prob": 0.0}
        conf[name] = _check_section(name, given)
    return conf


def _add_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``x + noise`` with the noise scaled to ``snr_db`` (powers over the whole clip); ``x`` if either is silent."""
    signal_power = float(np.mean(np.square(x, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if signal_power <= 0.0 or noise_power <= 0.0:
        return x
    scale = math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (x + noise * np.float32(scale)).astype(np.float32, copy=False)


def find_audio_files(folder: str) -> list[str]:
    """Sorted audio files under ``folder`` (recursively, by extension); ``[]`` when it is not a folder.

    >>> find_audio_files("/no/such/folder")
    []
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        return []
    return sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def _fft_convolve(signal: np.ndarray, kernel: np.ndarray, length: int, offset: int) -> np.ndarray:
    """``np.convolve(signal, kernel)[offset : offset + length]`` computed with real FFTs."""
    full = signal.shape[0] + kernel.shape[0] - 1
    size = 1 << max(0, (full - 1).bit_length())
    spec = np.fft.rfft(signal, size) * np.fft.rfft(kernel, size)
    out = np.fft.irfft(spec, size)[offset : offset + length]
    return out.astype(np.float32, copy=False)


class _FileCache:
    """Per-process bounded cache of decoded noise / impulse-response files (least recently used goes first)."""

    def __init__(self, max_files: int, max_samples: int):
        self.max_files = max_files
        self.max_samples = max_samples
        self._items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._samples = 0
        self.failed: set[str] = set()

    def get(self, path: str, sample_rate: int) -> np.ndarray | None:
        key = (path, sample_rate)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        if path in self.failed:
            return None
        from mvector.audio import load_audio

        try:
            samples = load_audio(path, sample_rate)
        except AudioError as err:
            self.failed.add(path)
            warnings.warn(f"augmentation: skipping unreadable file {path}: {err}", stacklevel=3)
            return None
        self._items[key] = samples
        self._samples += samples.shape[0]
        while self._items and (len(self._items) > self.max_files or self._samples > self.max_samples):
            _, dropped = self._items.popitem(last=False)
            self._samples -= dropped.shape[0]
        return samples


class WaveAugmenter:
    """Applies the enabled waveform augmentations to a 1-D float32 clip.

    Order: speed → pitch → reverb → equalizer → noise → colored_noise → volume → shift (:data:`WAVE_AUGMENTATIONS`),
    each with its own probability; every random draw comes from the ``rng`` given to :meth:`__call__`. A configured
    noise or impulse-response folder that is missing or holds no audio issues one warning naming it, and that
    augmentation is turned off. Noise and response files are decoded at the clip's sample rate on first use and kept
    in a bounded per-process cache (``max_cached_files`` files, ``max_cached_seconds`` of audio at 16 kHz). An
    unreadable one is skipped with a warning (that clip just gets no noise / reverb).

    ``max_speed`` is the largest speed or pitch factor: a clip shrinks by up to that factor, so the dataset crops
    that much extra before augmenting. A clip gets at most one voice change: ``pitch`` is skipped for a clip
    whose speed was changed (so each label group is one change of one voice).

    >>> import numpy as np
    >>> aug = WaveAugmenter({"shift": {"prob": 1.0, "max_shift_ms": 1.0}})
    >>> aug.enabled, aug(np.ones(100, dtype=np.float32), 16000, np.random.default_rng(0)).shape
    (['shift'], (100,))
    """

    def __init__(
        self,
        conf: Union[Mapping[str, Any], str, os.PathLike, None] = None,
        max_cached_files: int = 64,
        max_cached_seconds: float = 600.0,
    ):
        self.conf = load_augmentation_config(conf)
        c = self.conf
        self.noise_files: list[str] = []
        self.rir_files: list[str] = []
        if c["noise"]["prob"] > 0:
            self.noise_files = self._folder_files(c["noise"]["noise_dir"], "noise")
        if c["reverb"]["prob"] > 0:
            self.rir_files = self._folder_files(c["reverb"]["rir_dir"], "reverb")
        self.speeds = list(c["speed"]["speeds"])
        self.pitch_factors = list(c["pitch"]["factors"])
        self.enabled: list[str] = []
        for name in WAVE_AUGMENTATIONS:
            if c[name]["prob"] <= 0:
                continue
            if name == "noise" and not self.noise_files or name == "reverb" and not self.rir_files:
                continue
            if name == "speed" and all(s == 1.0 for s in self.speeds):
                continue
            if name == "pitch" and all(f == 1.0 for f in self.pitch_factors):
                continue
            if name == "volume" and c[name]["min_gain_db"] == c[name]["max_gain_db"] == 0.0:
                continue
            if name == "shift" and c[name]["max_shift_ms"] == 0.0:
                continue
            if name == "equalizer" and not equalizer_changes_anything(c[name]):
                continue
            self.enabled.append(name)
        factors = (self.speeds if "speed" in self.enabled else []) + (
            self.pitch_factors if "pitch" in self.enabled else []
        )
        self.max_speed = max(factors) if factors else 1.0
        #: Speeds trained as speakers of their own (``speed.speaker_per_speed``), in label-group order.
        self.label_speeds = speed_label_factors(c) if "speed" in self.enabled else []
        #: Pitch factors trained as speakers of their own (``pitch.speaker_per_pitch``); their groups follow the
        #: speeds'.
        self.label_pitches = pitch_label_factors(c) if "pitch" in self.enabled else []
        self._cache = _FileCache(max_cached_files, int(max_cached_seconds * 16000))

    @staticmethod
    def _folder_files(folder: str, name: str) -> list[str]:
        files = find_audio_files(folder)
        if not files:
            state = "holds no audio files" if Path(folder).expanduser().is_dir() else "does not exist"
            warnings.warn(
                f"augmentation: {name} folder {folder!r} {state} ({', '.join(AUDIO_EXTENSIONS)}); "
                f"{name} augmentation is off",
                stacklevel=3,
            )
        return files

    def __repr__(self) -> str:
        files = f"noise_files={len(self.noise_files)}, rir_files={len(self.rir_files)}"
        return f"WaveAugmenter(enabled={self.enabled}, {files})"

    def __call__(self, samples: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        """Augment one clip; returns a new float32 array (the input is not modified)."""
        return self.augment(samples, sample_rate, rng)[0]

    def augment(self, samples: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Augment one clip; returns the new float32 array and its speed label group.

        The group is 0 unless ``speed.speaker_per_speed`` is on and the clip was played at a factor other than
        1.0; then it is that factor's 1-based place in :attr:`label_speeds` (the dataset adds
        ``group × num_speakers`` to the label). A pitch shift with ``pitch.speaker_per_pitch`` gives
        ``len(label_speeds) + `` its factor's 1-based place in :attr:`label_pitches`.

        >>> aug = WaveAugmenter({"speed": {"prob": 1.0, "speeds": [1.1], "speaker_per_speed": True}})
        >>> wave, group = aug.augment(np.ones(1100, dtype=np.float32), 16000, np.random.default_rng(0))
        >>> wave.shape, group
        ((1000,), 1)
        """
        out = np.asarray(samples, dtype=np.float32)
        group = 0
        voice_changed = False
        for name in self.enabled:
            if rng.random() >= self.conf[name]["prob"]:
                continue
            if name == "speed":
                out, factor = self._speed(out, int(sample_rate), rng)
                voice_changed = factor != 1.0
                if factor in self.label_speeds:
                    group = 1 + self.label_speeds.index(factor)
                continue
            if name == "pitch":
                if voice_changed:  # one voice change per clip
                    continue
                factor = float(self.pitch_factors[int(rng.integers(len(self.pitch_factors)))])
                if factor != 1.0 and out.shape[0] >= 2:
                    from mvector.audio.pitch import shift_pitch

                    out = shift_pitch(out, int(sample_rate), factor)
                if factor in self.label_pitches:
                    group = 1 + len(self.label_speeds) + self.label_pitches.index(factor)
                continue
            out = getattr(self, f"_{name}")(out, int(sample_rate), rng)
        return (out if out is not samples else out.copy()), group

    # ---------------------------------------------------------------- single augmentations
    def _speed(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        factor = float(self.speeds[int(rng.integers(len(self.speeds)))])
        if factor == 1.0 or x.shape[0] < 2:
            return x, factor
        from mvector.audio import resample

        # Read the clip as if it had been recorded at factor × the rate: played back at the true rate it is
        # factor × faster, with len / factor samples.
        return resample(x, int(round(sample_rate * factor)), sample_rate), factor

    def _volume(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        c = self.conf["volume"]
        gain_db = rng.uniform(c["min_gain_db"], c["max_gain_db"])
        return x * np.float32(10.0 ** (gain_db / 20.0))

    def _noise(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        c = self.conf["noise"]
        path = self.noise_files[int(rng.integers(len(self.noise_files)))]
        snr_db = rng.uniform(c["min_snr_db"], c["max_snr_db"])
        offset_draw = rng.random()
        noise = self._cache.get(path, sample_rate)
        if noise is None:
            return x
        n = x.shape[0]
        if noise.shape[0] < n:
            noise = np.tile(noise, -(-n // noise.shape[0]))[:n]
        else:
            start = int(offset_draw * (noise.shape[0] - n + 1))
            noise = noise[start : start + n]
        return _add_at_snr(x, noise, snr_db)

    def _equalizer(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        bands, lowpass, highpass = draw_equalizer(self.conf["equalizer"], rng)
        if x.shape[0] < 2:
            return x
        freqs = np.fft.rfftfreq(x.shape[0], 1.0 / sample_rate)
        gain = equalizer_gain_db(freqs, bands[0], bands[1], bands[2], lowpass, highpass)
        spectrum = np.fft.rfft(x) * 10.0 ** (gain / 20.0)
        return np.fft.irfft(spectrum, x.shape[0]).astype(np.float32)

    def _colored_noise(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        c = self.conf["colored_noise"]
        snr_db = rng.uniform(c["min_snr_db"], c["max_snr_db"])
        exponent = rng.uniform(c["min_exponent"], c["max_exponent"])
        n = x.shape[0]
        if n < 2:
            return x
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        freqs[0] = freqs[1]
        noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * freqs ** (-exponent / 2.0), n)
        return _add_at_snr(x, noise.astype(np.float32), snr_db)

    def _reverb(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        path = self.rir_files[int(rng.integers(len(self.rir_files)))]
        rir = self._cache.get(path, sample_rate)
        if rir is None or x.shape[0] == 0:
            return x
        peak = int(np.argmax(np.abs(rir)))
        direct = float(rir[peak])
        if direct == 0.0:
            return x
        # Start the output at the direct path (no added delay) and give the direct path unit gain.
        return _fft_convolve(x, rir / np.float32(direct), x.shape[0], peak)

    def _shift(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        max_shift = int(round(self.conf["shift"]["max_shift_ms"] * sample_rate / 1000.0))
        shift = int(rng.integers(-max_shift, max_shift + 1))
        n = x.shape[0]
        if shift == 0 or n == 0:
            return x
        out = np.zeros_like(x)
        if abs(shift) < n:
            if shift > 0:
                out[shift:] = x[: n - shift]
            else:
                out[: n + shift] = x[-shift:]
        return out


def build_augmenter(conf: Union[Mapping[str, Any], str, os.PathLike, None]) -> WaveAugmenter | None:
    """A :class:`WaveAugmenter` for ``conf`` (dict or YAML path), or None when no waveform augmentation is on.

    ``None`` means no augmentation (it does not load the bundled defaults; pass
    :data:`DEFAULT_CONFIG_PATH` for those).

    >>> build_augmenter(None) is None, build_augmenter({"spec_aug": {"prob": 1.0}}) is None
    (True, True)
    >>> build_augmenter({"speed": {"prob": 1.0}}).enabled
    ['speed']
    """
    if conf is None:
        return None
    augmenter = WaveAugmenter(conf)
    return augmenter if augmenter.enabled else None


def spec_augment_kwargs(conf: Union[Mapping[str, Any], str, os.PathLike, None]) -> dict[str, Any] | None:
    """Keyword arguments for ``mvector.features.SpecAugment``, or None when SpecAugment is off.

    >>> spec_augment_kwargs({"spec_aug": {"prob": 0.6, "freq_masks": 2}})
    {'prob': 0.6, 'freq_masks': 2, 'freq_mask_width': 8, 'time_masks': 1, 'time_mask_width': 10}
    >>> spec_augment_kwargs({"speed": {"prob": 1.0}}) is None
    True
    """
    if conf is None:
        return None
    section = load_augmentation_config(conf)["spec_aug"]
    if section["prob"] <= 0 or (section["freq_masks"] == 0 and section["time_masks"] == 0):
        return None
    return {
        "prob": float(section["prob"]),
        "freq_masks": int(section["freq_masks"]),
        "freq_mask_width": int(section["freq_mask_width"]),
        "time_masks": int(section["time_masks"]),
        "time_mask_width": int(section["time_mask_width"]),
    }
