"""Microphone capture (16 kHz mono) through PyAudio, an optional extra: ``pip install "mvector[mic]"``.

>>> try:
...     samples = record_seconds(0.1)
... except MicrophoneUnavailable as err:
...     samples = None   # no PyAudio or no input device: the message says how to install it
>>> microphone_available() in (True, False)
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mvector.errors import ConfigError, MVectorError

__all__ = ["MicrophoneUnavailable", "record_seconds", "require_pyaudio", "microphone_available", "INSTALL_HINT"]

INSTALL_HINT = (
    "microphone capture needs PyAudio, which builds against the PortAudio headers: install them first "
    "(Debian/Ubuntu: sudo apt-get install portaudio19-dev; macOS: brew install portaudio), then "
    'pip install "mvector[mic]". Everything else in mvector works without it; pass files instead.'
)


class MicrophoneUnavailable(MVectorError, RuntimeError):
    """PyAudio is missing or no input device could be opened."""


def require_pyaudio() -> Any:
    """Import and return the ``pyaudio`` module, or raise :class:`MicrophoneUnavailable` saying how to install it.

    >>> try:
    ...     module = require_pyaudio()
    ... except MicrophoneUnavailable as err:
    ...     "portaudio" in str(err)
    ... else:
    ...     True
    True
    """
    try:
        import pyaudio
    except ImportError as err:  # not installed, or a broken build (libportaudio missing)
        raise MicrophoneUnavailable(INSTALL_HINT) from err
    return pyaudio


def microphone_available() -> bool:
    """Whether PyAudio is importable (an input device is only looked for when recording).

    >>> isinstance(microphone_available(), bool)
    True
    """
    try:
        require_pyaudio()
    except MicrophoneUnavailable:
        return False
    return True


def record_seconds(seconds: float, sample_rate: int = 16000, device_index: int | None = None) -> np.ndarray:
    """Record ``seconds`` of mono audio from the default (or given) input device as float32 in [-1, 1].

    Raises :class:`MicrophoneUnavailable` (with install instructions) without PyAudio or an input device.

    >>> record_seconds(0)
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: seconds must be a positive number, got 0
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
        raise ConfigError(f"seconds must be a positive number, got {seconds!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ConfigError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    pyaudio = require_pyaudio()
    chunk = 1024
    try:
        audio = pyaudio.PyAudio()
    except OSError as err:
        raise MicrophoneUnavailable(f"cannot start PortAudio: {err}") from err
    try:
        try:
            stream = audio.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=sample_rate,
                input=True,
                frames_per_buffer=chunk,
                input_device_index=device_index,
            )
        except OSError as err:
            raise MicrophoneUnavailable(f"cannot open an audio input device: {err}") from err
        frames = []
        total = int(round(seconds * sample_rate))
        got = 0
        try:
            while got < total:
                data = stream.read(min(chunk, total - got), exception_on_overflow=False)
                frames.append(np.frombuffer(data, dtype=np.int16))
                got += len(frames[-1])
        finally:
            stream.stop_stream()
            stream.close()
    finally:
        audio.terminate()
    return (np.concatenate(frames).astype(np.float32) / 32768.0)[:total]
