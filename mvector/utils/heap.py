"""The C heap of this process (glibc's malloc), where Python, numpy and torch buffers live.

:func:`release_free_memory` hands heap memory that was freed back to the system (``malloc_trim``). glibc keeps
freed blocks below its mmap threshold (which grows up to 32 MB) in the heap of the thread that used them, so
without it the pages of a million temporary rows of a bulk read, or of the recordings a server's threads decoded,
stay counted in the process. A no-op returning False where there is no glibc (another C library or platform).

>>> isinstance(release_free_memory(), bool)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

__all__ = ["release_free_memory"]


@functools.cache
def _libc_function(name: str) -> Any | None:
    """The C library's function ``name``, looked up once (``find_library`` runs ``ldconfig``: not per request)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return getattr(libc, name)
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return freed heap memory to the system (glibc ``malloc_trim(0)``); False without glibc.

    >>> isinstance(release_free_memory(), bool)
    True
    """
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]  # the same object each call: setting it again is cheap
    trim(0)
    return True
