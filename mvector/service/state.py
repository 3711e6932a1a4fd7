"""What one service instance holds while it runs, kept on ``app.state.service``: its settings, the model worker, the
key store, the audio-memory budget, the decode threads' limiter and the guard's refusal counts.

:meth:`ServiceState.open` is the one place that opens the stores; the routes reach the state through
:func:`service_state` (``request.app.state.service``). ``app.state.config``, ``.worker``, ``.keys`` and
``.audio_budget`` name the same objects, for callers that hold the app.

>>> import tempfile
>>> from mvector.service.settings import ServiceConfig
>>> state = ServiceState.open(ServiceConfig(audio_db_path=tempfile.mkdtemp()), predictor_factory=lambda: None)
>>> state.public(state.config.audio_db_path + "/speakers.db").count("/")
1
>>> state.keys.close()
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import anyio
from fastapi import FastAPI, Request

from mvector.errors import ConfigError, StoreUnavailableError
from mvector.service.budget import AudioBudget
from mvector.service.keys import KeyStore, KeyStoreError
from mvector.service.settings import ServiceConfig
from mvector.service.worker import ModelWorker

__all__ = ["ServiceState", "service_state", "lifespan", "default_predictor_factory"]

log = logging.getLogger("mvector.service")


def default_predictor_factory(config: ServiceConfig) -> Callable[[], Any]:
    """The predictor ``mvector serve`` loads: ``MVectorPredictor`` over ``config.model_path`` and its settings.

    >>> default_predictor_factory(ServiceConfig())
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: model_path is required (mvector serve --model_path DIR)
    """
    if not config.model_path:
        raise ConfigError("model_path is required (mvector serve --model_path DIR)")

    def predictor_factory() -> Any:
        from mvector.inference.predictor import MVectorPredictor

        return MVectorPredictor(
            model_path=config.model_path,
            audio_db_path=config.audio_db_path,
            use_gpu=config.use_gpu,
            threshold=config.threshold,
            backend=config.backend,
            keep_audio=config.keep_audio,
            search_index=config.search_index,
        )

    return predictor_factory


@dataclass
class ServiceState:
    """The running service's parts (see the module docstring); made by :meth:`open`."""

    config: ServiceConfig
    worker: ModelWorker
    keys: KeyStore
    budget: AudioBudget
    decode_limiter: anyio.CapacityLimiter
    started: float = field(default_factory=time.time)
    refused: dict[str, int] = field(default_factory=dict)  # the guard's refusals by kind (401s: no key to audit)
    galleries: set[str] = field(default_factory=set)  # galleries known to exist (galleries are never deleted)
    #: the server's folders, longest first (:meth:`public` leaves them out of messages)
    server_paths: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        folders = [Path(base) for base in (self.config.audio_db_path, self.config.model_path) if base]
        self.server_paths = sorted({str(p) for f in folders for p in (f, f.resolve())}, key=len, reverse=True)

    @classmethod
    def open(cls, config: ServiceConfig, predictor_factory: Callable[[], Any]) -> ServiceState:
        """Open the key store and make the worker (its model loads when the app starts) and the budgets."""

        def load() -> Any:
            predictor = predictor_factory()
            len(predictor.db)  # open the speaker database now: a database of another model fails the start-up
            return predictor

        return cls(
            config=config,
            worker=ModelWorker(load, max_queue=config.max_queue, max_batch=config.max_batch, threads=config.threads),
            keys=KeyStore(
                config.audio_db_path, retention_days=config.audit_retention_days, replica=config.replica_name
            ),
            budget=AudioBudget(config.max_audio_bytes, wait_s=config.audio_wait),
            decode_limiter=anyio.CapacityLimiter(config.decode_threads),
        )

    def attach(self, app: FastAPI) -> None:
        """Put this state on ``app.state`` (``service``, and ``config``, ``worker``, ``keys``, ``audio_budget``)."""
        app.state.service = self
        app.state.config = self.config
        app.state.worker = self.worker
        app.state.keys = self.keys
        app.state.audio_budget = self.budget

    def public(self, message: str) -> str:
        """An error message without the server's folders (a client has no business knowing them)."""
        for path in self.server_paths:
            if path not in ("", "."):
                message = message.replace(path, Path(path).name)
        return message

    async def ready_predictor(self) -> Any:
        """The loaded predictor, or 503 ``model_loading`` / ``model_failed``."""
        self.worker.check_ready()
        return self.worker.predictor

    async def run_job(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(predictor)`` on the model worker's thread and wait for its result."""
        return await asyncio.wrap_future(self.worker.submit(fn))

    def audit(
        self, key: Any, action: str, target: str | None, status: int, detail: Any, client: str | None,
        gallery: str | None = None,
    ) -> None:
        """Write one audit line; a failure to write it is logged (the write it describes happened)."""
        try:
            self.keys.audit(key, action, target, status, detail=detail, client=client, gallery=gallery)
        except (KeyStoreError, StoreUnavailableError) as err:
            log.error("could not write the audit log: %s", err)


def service_state(request: Request) -> ServiceState:
    """The state of the app serving ``request``."""
    return request.app.state.service


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the model worker with the app (warning when no key exists yet); close worker and stores at the end."""
    state: ServiceState = app.state.service
    state.worker.start()
    if not state.keys.list(include_revoked=False):
        log.warning(
            "no API keys yet: every /v1 route answers 401. Create one with: "
            "mvector keys create --audio_db_path %s --scope admin",
            state.config.audio_db_path,
        )
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(state.worker.close)
        state.keys.close()
