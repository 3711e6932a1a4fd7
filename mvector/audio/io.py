"""Audio input/output: decode, mono, resample, dB-normalise, VAD trim, crop, and atomic WAV writing.

Everything here works on numpy ``float32`` arrays shaped ``[T]`` (mono) or ``[T, C]`` (``C`` channels) and is
used in the data-loading hot path, so functions avoid copies where they can (a returned array may be a view of
the input). Every problem with the audio itself raises :class:`~mvector.errors.AudioError` whose message starts
with the source: the path, or ``<bytes>``, ``<file object>``, ``<array>``.

>>> import numpy as np
>>> tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
>>> wav = load_audio(tone, 16000, source_sample_rate=8000)
>>> wav.dtype, wav.shape
(dtype('float32'), (16000,))
"""

from __future__ import annotations

import io
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import soundfile
import soxr

from mvector.errors import AudioError, ConfigError, unknown_name_error

__all__ = [
    "AudioSource",
    "read_audio",
    "decode_bounded",
    "DecodePlan",
    "plan_decode",
    "to_mono",
    "resample",
    "normalize_db",
    "vad_trim",
    "crop",
    "audio_duration",
    "load_audio",
    "save_wav",
    "CROP_MODES",
    "AUDIO_EXTENSIONS",
]

#: File extensions mvector looks for when it searches a folder for audio (any format soundfile reads also loads).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

AudioSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any, np.ndarray]
"""What :func:`read_audio` accepts: a path, encoded bytes, a binary file object, or a sample array."""

CROP_MODES = ("random", "leading")

#: Sample rates outside this range are refused as a damaged or hostile header (a WAV claiming 1 Hz would make
#: resampling to 16 kHz allocate 16 000 times the file's samples).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000

# A 2-D array whose first axis is at most this long and shorter than its second axis is read as [C, T].
_MAX_CHANNELS_FIRST = 8
# RMS below this (about -140 dBFS, under the 24-bit noise floor) counts as digital silence.
_SILENCE_RMS = 1e-7

_INT_SCALE = {
    np.dtype(np.int8): 128.0,
    np.dtype(np.int16): 32768.0,
    np.dtype(np.int32): 2147483648.0,
    np.dtype(np.int64): 9223372036854775808.0,
}


def _source_name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, np.ndarray):
        return "<array>"
    if hasattr(source, "read"):
        return "<file object>"
    return f"<{type(source).__name__}>"


def _check_rate(sample_rate: Any, what: str) -> int:
    if isinstance(sample_rate, (bool, np.bool_)) or not isinstance(sample_rate, (int, np.integer)):
        if isinstance(sample_rate, (float, np.floating)) and float(sample_rate).is_integer():
            sample_rate = int(sample_rate)
        else:
            raise ConfigError(f"{what} must be a positive integer, got {sample_rate!r}")
    if sample_rate <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


def _all_finite(samples: np.ndarray) -> bool:
    # One pass without a temporary bool array: any NaN/inf makes the sum non-finite. A non-finite sum may also
    # be an overflow of huge finite values, so only then is every element checked.
    total = samples.sum(dtype=np.float64)
    if np.isfinite(total):
        return True
    return bool(np.isfinite(samples).all())


def _scale_to_float(samples: np.ndarray, name: str) -> np.ndarray:
    dtype = samples.dtype
    if dtype == np.float32:
        out = samples
    elif dtype.kind == "f":
        out = samples.astype(np.float32)
    elif dtype in _INT_SCALE:
        out = samples.astype(np.float32)
        out *= np.float32(1.0 / _INT_SCALE[dtype])
    elif dtype == np.uint8:  # 8-bit PCM is unsigned with its zero at 128
        out = samples.astype(np.float32)
        out -= np.float32(128.0)
        out *= np.float32(1.0 / 128.0)
    else:
        raise AudioError(f"{name}: unsupported sample type {dtype}; give float or int16/int32 samples")
    return out


def _array_to_float(samples: np.ndarray, name: str) -> np.ndarray:
    out = _scale_to_float(samples, name)
    if out.ndim == 2:
        rows, cols = out.shape
        if rows <= _MAX_CHANNELS_FIRST and cols > rows:
            out = out.T  # [C, T] -> [T, C]
    elif out.ndim != 1:
        raise AudioError(f"{name}: expected a 1-D [T] or 2-D [T, C] array, got shape {tuple(out.shape)}")
    return out


def _error_detail(err: BaseException) -> str:
    # libsndfile errors carry a clean reason; their str() repeats the (possibly unhelpful) object name.
    detail = getattr(err, "error_string", None) or str(err)
    return detail.strip().rstrip(".") or type(err).__name__


def _decode(source: Any, name: str) -> tuple[np.ndarray, int]:
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise AudioError(f"{name}: file not found")
        if os.path.isdir(source):
            raise AudioError(f"{name}: is a directory, not an audio file")
        if os.path.getsize(source) == 0:
            raise AudioError(f"{name}: empty file (0 bytes)")
        handle: Any = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(f"{name}: empty input (0 bytes)")
        handle = io.BytesIO(source)
    else:
        handle = source
        seekable = getattr(source, "seekable", None)
        if not (callable(seekable) and seekable()):
            handle = io.BytesIO(source.read())  # sockets, pipes: soundfile needs to seek
    try:
        samples, sample_rate = soundfile.read(handle, dtype="float32", always_2d=False)
    except (RuntimeError, TypeError, ValueError, OSError, EOFError, soundfile.SoundFileError) as err:
        raise AudioError(f"{name}: cannot decode audio ({_error_detail(err)})") from err
    return samples, int(sample_rate)


def read_audio(source: AudioSource, *, source_sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``source`` into float32 samples ``[T]`` or ``[T, C]`` and their sample rate.

    ``source`` is a path (``str`` / ``PathLike``), encoded bytes, a binary file object (anything with
    ``.read``), or an ``np.ndarray`` of samples, which needs ``source_sample_rate``. Files may be WAV, FLAC, OGG
    or MP3 (whatever libsndfile reads). Arrays: int8/16/32/64 are scaled to ``[-1, 1)``, uint8 is 8-bit
    unsigned PCM; 2-D arrays are ``[T, C]``, except that one whose first axis has at most 8 entries and is
    shorter than its second is taken as ``[C, T]`` (the torch/librosa layout) and transposed. A float32 array
    is returned without a copy.

    Raises :class:`AudioError` for an unreadable, empty or non-finite source, an array without a rate, a sample
    rate outside ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE`` (1 kHz .. 768 kHz), or an unsupported type.

    >>> samples, sr = read_audio(np.zeros((2, 400), dtype=np.int16) + 16384, source_sample_rate=8000)
    >>> samples.shape, sr, float(samples[0, 0])
    ((400, 2), 8000, 0.5)
    """
    name = _source_name(source)
    if isinstance(source, np.ndarray) or _is_tensor(source):
        if _is_tensor(source):
            source = source.detach().cpu().numpy()
        if source_sample_rate is None:
            raise AudioError(f"{name}: a sample array needs source_sample_rate (the rate it was recorded at)")
        sample_rate = _check_rate(source_sample_rate, "source_sample_rate")
        samples = _array_to_float(source, name)
    elif isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(source, "read"):
        samples, sample_rate = _decode(source, name)
        if source_sample_rate is not None and _check_rate(source_sample_rate, "source_sample_rate") != sample_rate:
            raise AudioError(
                f"{name}: file header says {sample_rate} Hz but source_sample_rate={source_sample_rate} was given"
            )
    else:
        raise AudioError(
            f"{name}: unsupported audio source type {type(source).__name__}; give a path, bytes, "
            "a binary file object or a numpy array"
        )
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz "
            "(a damaged header?); refusing to decode it"
        )
    if samples.shape[0] == 0 or samples.size == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not _all_finite(samples):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return samples, sample_rate


@dataclass(frozen=True)
class DecodePlan:
    """What a header promises before anything is decoded: rate, channels, frames (``-1``: unknown) and the bytes
    :func:`decode_bounded` will hold at most for it (mono output at the target rate plus one block).

    >>> DecodePlan(48000, 8, 48000 * 59, 16000, 60.0).peak_bytes // 1024   # 59 s at 16 kHz + a 0.25 s block
    4109
    """

    rate: int
    channels: int
    frames: int
    target_rate: int
    max_seconds: float
    block_seconds: float = 0.25

    @property
    def seconds(self) -> float:
        """The duration the header states (``inf`` when it does not state one)."""
        return self.frames / self.rate if self.frames >= 0 else math.inf

    @property
    def output_samples(self) -> int:
        """Mono samples at the target rate that decoding may produce (capped at ``max_seconds``)."""
        return int(math.ceil(min(self.seconds, self.max_seconds) * self.target_rate)) + 16

    @property
    def block_frames(self) -> int:
        """Frames read per block."""
        return max(256, int(self.rate * self.block_seconds))

    @property
    def peak_bytes(self) -> int:
        """float32 output plus one float32 block of every channel (and its mono mix)."""
        return 4 * (self.output_samples + self.block_frames * (self.channels + 1))


def plan_decode(data: bytes, target_rate: int, max_seconds: float, max_channels: int = 8) -> DecodePlan:
    """Read only the header of encoded ``data``: what decoding it to mono ``target_rate`` would cost.

    Raises :class:`AudioError` for an unreadable header, a rate outside 1..768 kHz or more than ``max_channels``.

    >>> buf = io.BytesIO(); soundfile.write(buf, np.zeros((8000, 2), "float32"), 8000, format="WAV")
    >>> plan = plan_decode(buf.getvalue(), 16000, 60.0)
    >>> plan.channels, plan.seconds, plan.output_samples
    (2, 1.0, 16016)
    """
    if len(data) == 0:
        raise AudioError("<bytes>: empty input (0 bytes)")
    try:
        info = soundfile.info(io.BytesIO(data))
    except (RuntimeError, TypeError, ValueError, OSError, EOFError, soundfile.SoundFileError) as err:
        raise AudioError(f"<bytes>: cannot decode audio ({_error_detail(err)})") from err
    rate, channels, frames = int(info.samplerate), int(info.channels), int(info.frames)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"<bytes>: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    if not 1 <= channels <= max_channels:
        raise AudioError(f"<bytes>: {channels} channels, at most {max_channels} are accepted")
    # some formats do not state the length (frames 0 or a sentinel): the decoder then stops at max_seconds
    known = 0 < frames < 2**62
    return DecodePlan(rate, channels, frames if known else -1, _check_rate(target_rate, "target_rate"), max_seconds)


def decode_bounded(data: bytes, plan: DecodePlan) -> tuple[np.ndarray, float]:
    """Decode ``data`` block by block into mono float32 at ``plan.target_rate``, mixing and resampling as it reads.

    At most ``plan.max_seconds`` of audio is decoded; returns ``(samples, source_seconds)`` where
    ``source_seconds`` is what was read, or ``inf`` when the recording goes on past ``max_seconds`` (the caller
    refuses it). Memory held is :attr:`DecodePlan.peak_bytes`, whatever the header claimed and however many
    channels there are: a small compressed file cannot decode into hundreds of MB.

    >>> buf = io.BytesIO(); soundfile.write(buf, np.zeros((24000, 8), "float32"), 48000, format="FLAC")
    >>> out, seconds = decode_bounded(buf.getvalue(), plan_decode(buf.getvalue(), 16000, 60.0))
    >>> out.shape, out.dtype, seconds
    ((8000,), dtype('float32'), 0.5)
    """
    limit = int(math.floor(plan.max_seconds * plan.rate))
    out = np.empty(plan.output_samples, dtype=np.float32)
    filled, read = 0, 0
    stream = None if plan.rate == plan.target_rate else soxr.ResampleStream(plan.rate, plan.target_rate, 1, "float32")

    def put(chunk: np.ndarray) -> None:
        nonlocal filled
        take = min(chunk.shape[0], out.shape[0] - filled)
        out[filled : filled + take] = chunk[:take]
        filled += take

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            block = np.empty((plan.block_frames, plan.channels), dtype=np.float32)
            while read <= limit:
                got = f.read(min(plan.block_frames, limit + 1 - read), dtype="float32", always_2d=True, out=block)
                n = got.shape[0]
                if n == 0:
                    break
                read += n
                if read > limit:  # one frame past the limit: the recording is too long
                    return out[:0], math.inf
                mono = got[:, 0] if plan.channels == 1 else got.mean(axis=1, dtype=np.float32)
                put(mono if stream is None else stream.resample_chunk(mono, last=False))
            if stream is not None:
                put(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    except (RuntimeError, TypeError, ValueError, OSError, EOFError, soundfile.SoundFileError) as err:
        raise AudioError(f"<bytes>: cannot decode audio ({_error_detail(err)})") from err
    if read == 0:
        raise AudioError("<bytes>: empty audio (0 samples)")
    samples = out[:filled]
    if not _all_finite(samples):
        raise AudioError("<bytes>: audio contains NaN or infinite samples")
    return samples, read / plan.rate


def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach") and hasattr(obj, "numpy")


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of ``[T, C]`` samples into ``[T]``; 1-D input is returned as is.

    >>> to_mono(np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float32))
    array([0.5, 0.5], dtype=float32)
    """
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioError(f"<array>: expected [T] or [T, C] samples, got shape {tuple(samples.shape)}")
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``[T]`` or ``[T, C]`` samples from ``orig_sr`` to ``target_sr`` with soxr (``'HQ'`` quality).

    Equal rates return the input unchanged. The output has ``round(T * target_sr / orig_sr)`` samples.

    >>> resample(np.zeros(8000, dtype=np.float32), 8000, 16000).shape
    (16000,)
    """
    orig_sr = _check_rate(orig_sr, "orig_sr")
    target_sr = _check_rate(target_sr, "target_sr")
    if orig_sr == target_sr:
        return samples
    if samples.dtype != np.float32:
        samples = samples.astype(np.float32)
    return soxr.resample(samples, orig_sr, target_sr, quality="HQ")


def normalize_db(samples: np.ndarray, target_db: float = -20.0, max_gain_db: float = 30.0) -> np.ndarray:
    """Scale ``samples`` so their RMS level is ``target_db`` dBFS (a full-scale sine is -3 dBFS).

    The gain is capped at ``max_gain_db`` (quiet recordings are not blown up into noise); attenuation is not
    capped. Digital silence (RMS below about -140 dBFS) is returned unchanged. Peaks may exceed 1.0 afterwards.

    >>> x = np.full(100, 0.01, dtype=np.float32)           # -40 dBFS
    >>> round(float(normalize_db(x, -20.0)[0]), 4)         # +20 dB
    0.1
    >>> round(float(normalize_db(x, 0.0, max_gain_db=10.0)[0]), 4)  # gain capped at +10 dB
    0.0316
    """
    if samples.size == 0:
        return samples
    mean_square = float(np.vdot(samples, samples)) / samples.size
    rms = float(np.sqrt(mean_square)) if mean_square > 0 else 0.0
    if not rms > _SILENCE_RMS:
        return samples
    gain_db = min(float(target_db) - 20.0 * float(np.log10(rms)), float(max_gain_db))
    out = samples * np.float32(10.0 ** (gain_db / 20.0))
    return out if out.dtype == np.float32 else out.astype(np.float32)


def vad_trim(
    samples: np.ndarray,
    sample_rate: int,
    top_db: float = 30.0,
    frame_ms: float = 25.0,
    hop_ms: float = 10.0,
) -> np.ndarray:
    """Drop leading and trailing frames whose energy is more than ``top_db`` below the loudest frame.

    Energy-based (no model): frames of ``frame_ms`` every ``hop_ms``; the kept span runs from the first to the
    last frame within ``top_db`` of the loudest one, so pauses inside the speech stay. Silent input (all zeros)
    and input shorter than one frame come back unchanged; non-silent input never comes back empty. The result
    is a view of the input.

    >>> sr = 16000
    >>> x = np.zeros(3 * sr, dtype=np.float32)
    >>> x[sr : 2 * sr] = np.sin(np.arange(sr) * 0.3)
    >>> len(vad_trim(x, sr)) / sr   # the middle second, plus under a frame each side
    1.035
    """
    sample_rate = _check_rate(sample_rate, "sample_rate")
    if top_db <= 0:
        raise ConfigError(f"vad top_db must be > 0, got {top_db!r}")
    frame = max(1, int(round(sample_rate * frame_ms / 1000.0)))
    hop = max(1, int(round(sample_rate * hop_ms / 1000.0)))
    total = samples.shape[0]
    if total <= frame:
        return samples
    power = samples.astype(np.float64) ** 2
    if power.ndim == 2:
        power = power.mean(axis=1)
    cumulative = np.concatenate(([0.0], np.cumsum(power)))
    starts = np.arange(0, total - frame + 1, hop)
    if starts[-1] + frame < total:  # a last frame flush with the end so the tail is looked at too
        starts = np.append(starts, total - frame)
    energy = cumulative[starts + frame] - cumulative[starts]
    loudest = float(energy.max())
    if not loudest > 0.0:
        return samples
    keep = np.flatnonzero(energy > loudest * 10.0 ** (-float(top_db) / 10.0))
    begin = int(starts[keep[0]])
    end = int(starts[keep[-1]]) + frame
    return samples[begin:end]


def crop(
    samples: np.ndarray, max_samples: int, mode: str = "random", rng: np.random.Generator | None = None
) -> np.ndarray:
    """Cut ``samples`` to at most ``max_samples`` along time; shorter input is returned unchanged.

    ``mode="random"`` takes a window at a uniformly random start (from ``rng``, or a fresh unseeded generator),
    ``mode="leading"`` keeps the beginning. The result is a view of the input.

    >>> crop(np.arange(10, dtype=np.float32), 4, mode="leading")
    array([0., 1., 2., 3.], dtype=float32)
    >>> len(crop(np.arange(10, dtype=np.float32), 4, rng=np.random.default_rng(0)))
    4
    """
    if mode not in CROP_MODES:
        raise unknown_name_error("crop mode", str(mode), CROP_MODES)
    max_samples = int(max_samples)
    if max_samples <= 0:
        raise ConfigError(f"crop length must be > 0 samples, got {max_samples}")
    total = samples.shape[0]
    if total <= max_samples:
        return samples
    if mode == "leading":
        return samples[:max_samples]
    generator = rng if rng is not None else np.random.default_rng()
    start = int(generator.integers(0, total - max_samples + 1))
    return samples[start : start + max_samples]


def audio_duration(path: str | os.PathLike[str]) -> float:
    """Duration of the audio file at ``path`` in seconds, read from its header (no decoding).

    Raises :class:`AudioError` when the file is missing or not readable audio.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> save_wav(path, np.zeros(8000, dtype=np.float32), 16000)
    >>> audio_duration(path)
    0.5
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise AudioError(f"{name}: file not found")
    try:
        info = soundfile.info(name)
    except (RuntimeError, TypeError, ValueError, OSError, soundfile.SoundFileError) as err:
        raise AudioError(f"{name}: cannot read audio header ({_error_detail(err)})") from err
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: header sample rate {info.samplerate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    return info.frames / info.samplerate


def load_audio(
    source: AudioSource,
    sample_rate: int = 16000,
    *,
    source_sample_rate: int | None = None,
    normalize: bool = False,
    target_db: float = -20.0,
    max_gain_db: float = 30.0,
    vad: bool = False,
    max_duration: float | None = None,
    crop_mode: str = "random",
    min_duration: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Read ``source`` and return mono float32 samples ``[T]`` at ``sample_rate``.

    Steps, in order: :func:`read_audio` → :func:`to_mono` → (when the rates differ and without ``vad``, a first
    :func:`crop` to ``max_duration`` at the source rate, so a long file is never resampled whole) →
    :func:`resample` (soxr, only when the rates differ) → :func:`normalize_db` (if ``normalize``) →
    :func:`vad_trim` (if ``vad``) → :func:`crop` to
    ``max_duration`` seconds (if given, with ``crop_mode`` and ``rng``) → a check that at least
    ``min_duration`` seconds remain (:class:`AudioError` otherwise). The result never shares memory with an
    array passed in.

    >>> x = np.ones(48000, dtype=np.int16) * 3277
    >>> y = load_audio(x, 16000, source_sample_rate=48000, normalize=True, max_duration=0.5, crop_mode="leading")
    >>> y.shape, round(float(np.sqrt(np.mean(y[100:-100] ** 2))), 3)   # -20 dBFS is RMS 0.1
    ((8000,), 0.1)
    >>> load_audio(x, 16000, source_sample_rate=48000, min_duration=2.0)
    Traceback (most recent call last):
    ...
    mvector.errors.AudioError: <array>: too short: 1.000 s, need at least 2.000 s (min_duration)
    """
    sample_rate = _check_rate(sample_rate, "sample_rate")
    samples, source_rate = read_audio(source, source_sample_rate=source_sample_rate)
    samples = to_mono(samples)
    if max_duration is not None and max_duration > 0 and not vad and source_rate != sample_rate:
        # Crop at the source rate first (one random draw), with a margin so the resampled clip still fills the
        # crop; the crop below then trims the margin from the end.
        source_len = int(math.ceil(max_duration * source_rate)) + 2 * int(math.ceil(source_rate / sample_rate)) + 1
        samples = crop(samples, source_len, mode=crop_mode, rng=rng)
        crop_mode = "leading"
    samples = resample(samples, source_rate, sample_rate)
    if normalize:
        samples = normalize_db(samples, target_db=target_db, max_gain_db=max_gain_db)
    if vad:
        samples = vad_trim(samples, sample_rate)
    if max_duration is not None:
        if max_duration <= 0:
            raise ConfigError(f"max_duration must be > 0 seconds, got {max_duration!r}")
        samples = crop(samples, int(round(max_duration * sample_rate)), mode=crop_mode, rng=rng)
    if min_duration is not None and samples.shape[0] < min_duration * sample_rate:
        raise AudioError(
            f"{_source_name(source)}: too short: {samples.shape[0] / sample_rate:.3f} s, "
            f"need at least {min_duration:.3f} s (min_duration)"
        )
    if isinstance(source, np.ndarray) and np.may_share_memory(samples, source):
        samples = samples.copy()
    return np.ascontiguousarray(samples, dtype=np.float32)


def save_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> None:
    """Write ``samples`` (``[T]`` or ``[T, C]``, float in [-1, 1]) as a 16-bit PCM WAV file, atomically.

    The file is written beside ``path`` under a temporary name and moved into place with ``os.replace``, so a
    reader never sees half a file. Parent folders are created. Samples are clipped to [-1, 1) and rounded to
    the nearest 16-bit step (``x * 32768``), so 16-bit audio read with :func:`read_audio` is written back
    bit-exactly.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "sub", "b.wav")
    >>> save_wav(path, np.array([0.5, -0.25, 2.0], dtype=np.float32), 8000)
    >>> read_audio(path)[0].tolist()
    [0.5, -0.25, 0.999969482421875]
    """
    target = Path(path)
    sample_rate = _check_rate(sample_rate, "sample_rate")
    data = np.asarray(samples)
    if data.ndim not in (1, 2):
        raise AudioError(f"{target}: expected [T] or [T, C] samples to write, got shape {tuple(data.shape)}")
    if data.dtype.kind == "f":
        if not _all_finite(data):
            raise AudioError(f"{target}: refusing to write NaN or infinite samples")
        pcm = np.clip(np.rint(data.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    elif data.dtype == np.int16:
        pcm = data
    else:
        pcm = np.clip(np.rint(_scale_to_float(data, str(target)) * 32768.0), -32768, 32767).astype(np.int16)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            soundfile.write(handle, pcm, sample_rate, format="WAV", subtype="PCM_16")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
