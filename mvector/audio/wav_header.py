"""Duration of a plain RIFF/WAVE file from its chunk headers, in pure Python: about ten times faster than asking
libsndfile, which matters when a training list holds a million files.

Only uncompressed layouts are answered (PCM, IEEE float, A-law, mu-law, WAVE_FORMAT_EXTENSIBLE); anything else
(RF64, compressed WAV, FLAC, MP3, a damaged header) returns None, and the caller asks the full decoder, which also
gives the clear error. As libsndfile does, the frames are those of the ``data`` chunk, cut to what the file holds.

>>> import tempfile, os, numpy as np
>>> from mvector.audio.io import save_wav
>>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
>>> save_wav(path, np.zeros(8000, dtype=np.float32), 16000)
>>> wav_duration(path)
0.5
>>> wav_duration(__file__) is None
True
"""

from __future__ import annotations

import os
import struct

__all__ = ["wav_duration"]

#: Format tags whose frames are data bytes / block align.
_FRAMED_FORMATS = {1, 3, 6, 7, 0xFFFE}
_MAX_CHUNKS = 64


def wav_duration(path: str | os.PathLike[str], min_rate: int = 1000, max_rate: int = 768000) -> float | None:
    """Seconds of audio in the WAV file at ``path``, or None when it is not a plain WAV this reader answers (a
    missing or unreadable file, another format, a sample rate outside ``min_rate..max_rate``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = os.fstat(f.fileno()).st_size
            rate = align = 0
            for _ in range(_MAX_CHUNKS):
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                name, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if name == b"fmt ":
                    if length < 16:
                        return None
                    fmt = f.read(length + (length & 1))
                    tag, channels, rate, _, align = struct.unpack("<HHIIH", fmt[:14])
                    if tag not in _FRAMED_FORMATS or channels < 1 or align < 1:
                        return None
                elif name == b"data":
                    if not align or not min_rate <= rate <= max_rate:
                        return None
                    available = max(0, size - f.tell())
                    return (min(length, available) // align) / rate
                else:
                    f.seek(length + (length & 1), os.SEEK_CUR)
    except (OSError, struct.error, ValueError):
        return None
    return None
