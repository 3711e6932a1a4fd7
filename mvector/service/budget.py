"""One ceiling on the audio bytes the service holds across all requests (bodies being read, decoded recordings
waiting, queued or in the model).

A request reserves bytes before it holds them and gives all of them back when it ends (the request guard
releases whatever a request still holds, whatever way it ended). A reservation that does not fit waits up to
``wait_s`` for others to finish, then fails with 503 ``overloaded`` and a ``Retry-After`` header.

>>> import asyncio
>>> budget = AudioBudget(1000, wait_s=0.05)
>>> async def demo():
...     owner_a, owner_b = {}, {}
...     await budget.reserve(owner_a, 800)
...     try:
...         await budget.reserve(owner_b, 300)
...     except ServiceError as err:
...         refused = err.status, err.headers["Retry-After"]
...     budget.release(owner_a)
...     await budget.reserve(owner_b, 300)
...     return refused, budget.held
>>> asyncio.run(demo())
((503, '1'), 300)
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from typing import Any, MutableMapping, Optional

from mvector.service.errors import ServiceError
from mvector.utils.heap import release_free_memory

__all__ = ["AudioBudget", "default_audio_budget_mb", "REQUEST_OWNER"]

#: The reservation holder of the request being handled (the guard sets it to the request's ``scope["state"]``).
REQUEST_OWNER: contextvars.ContextVar[Optional[MutableMapping[str, Any]]] = contextvars.ContextVar(
    "mvector_request_owner", default=None
)

_KEY = "mvector_audio_bytes"
_MB = 1024 * 1024
_TRIM_AFTER = 8 * _MB  # a release at least this large that empties the budget trims the heap


def default_audio_budget_mb() -> float:
    """The default ceiling: a tenth of the machine's memory, at least 256 MB (MB = 2**20 bytes).

    >>> default_audio_budget_mb() >= 256
    True
    """
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: assume 4 GB
        total = 4 * 1024 * _MB
    return max(256.0, round(total / 10 / _MB))


class AudioBudget:
    """A byte counter with a ceiling, shared by the requests of one app (used on its event loop only).

    ``owner`` is a per-request mapping (the ASGI ``scope["state"]``) where the request's reservation is kept.
    """

    def __init__(self, limit_bytes: int, wait_s: float = 2.0) -> None:
        self.limit = int(limit_bytes)
        self.wait_s = float(wait_s)
        self.held = 0
        self.refused = 0
        self._changed: asyncio.Condition | None = None
        self._wakers: set[asyncio.Task] = set()

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # created on the running loop (the app may be built before it starts)
            self._changed = asyncio.Condition()
        return self._changed

    async def reserve(self, owner: MutableMapping[str, Any], nbytes: int) -> None:
        """Reserve ``nbytes`` for ``owner``; waits up to ``wait_s``, then raises 503 ``overloaded``."""
        nbytes = max(0, int(nbytes))
        if self.held + nbytes > self.limit:
            changed = self._condition()
            try:
                async with changed:
                    await asyncio.wait_for(changed.wait_for(lambda: self.held + nbytes <= self.limit), self.wait_s)
            except (asyncio.TimeoutError, TimeoutError):
                self.refused += 1
                raise ServiceError(
                    503,
                    "overloaded",
                    f"the server holds its limit of audio in memory ({self.limit / _MB:.0f} MB); retry shortly",
                    headers={"Retry-After": "1"},
                ) from None
        self.held += nbytes
        owner[_KEY] = owner.get(_KEY, 0) + nbytes

    def release(self, owner: MutableMapping[str, Any]) -> None:
        """Give back everything ``owner`` holds (safe to call twice)."""
        nbytes = owner.pop(_KEY, 0)
        if nbytes:
            self.held -= nbytes
            if self.held == 0 and nbytes >= _TRIM_AFTER:
                # nothing held any more: give the freed decoding buffers back to the system, or glibc keeps them in
                # the heaps of the threads that used them (the process then grew by 20-190 MB per flood of large
                # recordings, varying from run to run, instead of returning to where it was)
                release_free_memory()
            if self._changed is not None:
                changed = self._changed

                async def wake() -> None:
                    async with changed:
                        changed.notify_all()

                try:
                    task = asyncio.get_running_loop().create_task(wake())
                except RuntimeError:  # no loop running (shutting down): nobody waits
                    return
                self._wakers.add(task)
                task.add_done_callback(self._wakers.discard)
