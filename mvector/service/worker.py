"""One model, one worker thread: every request's model work waits in a bounded queue and runs in turn.

The model is loaded once, in the background, when the worker starts (requests meanwhile get ``503
model_loading``). Jobs are callables taking the predictor; they run one at a time on the worker thread, which sets
the number of torch threads once, so concurrent requests never oversubscribe the CPU. Consecutive embedding jobs
waiting in the queue are merged into one batch (:meth:`ModelWorker.embed`). A full queue answers ``503
overloaded`` at once instead of letting latency grow without bound.

>>> import tempfile, numpy as np
>>> from mvector.demo import tiny_checkpoint
>>> from mvector.inference.predictor import MVectorPredictor
>>> folder = tiny_checkpoint(tempfile.mkdtemp())
>>> import torch  # threads: keep this process's setting (torch's thread count is process-wide)
>>> factory = lambda: MVectorPredictor(folder, audio_db_path=tempfile.mkdtemp(), use_gpu=False)
>>> worker = ModelWorker(factory, threads=torch.get_num_threads())
>>> worker.start(); worker.wait_ready(60)
True
>>> wave = (np.random.default_rng(0).standard_normal(8000).astype("float32"), 16000)
>>> worker.submit(lambda p: p.contrast(wave, wave)[1]).result()
True
>>> worker.submit_embed([wave, wave]).result().shape
(2, 32)
>>> worker.close()
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any, Callable, Sequence

import numpy as np

from mvector.service.errors import ServiceError
from mvector.utils.threads import thread_plan

__all__ = ["ModelWorker", "default_threads"]

log = logging.getLogger("mvector.service")

_STOP = object()


@functools.lru_cache(maxsize=1)
def default_threads() -> int:
    """Torch threads for the model when none are set: the thread policy's count less one CPU for HTTP and decoding,
    >= 1 (:func:`mvector.utils.threads.thread_plan`; ``MVECTOR_NUM_THREADS`` overrides); chosen once per process.

    Measured on a busy 2-core machine, two intra-op threads made every request about 20x slower than one.

    >>> default_threads() >= 1
    True
    """
    return thread_plan(reserve=1).intra_op


class _EmbedJob:
    __slots__ = ("audios", "future")

    def __init__(self, audios: Sequence[Any], future: Future) -> None:
        self.audios = list(audios)
        self.future = future


class _CallJob:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[Any], Any], future: Future) -> None:
        self.fn = fn
        self.future = future


class ModelWorker:
    """Loads a predictor once and runs model jobs on one thread, from a bounded queue.

    Args:
        factory: builds the predictor (called once, on the worker thread).
        max_queue: jobs waiting at most; one more is refused with ``503 overloaded``.
        max_batch: recordings merged into one embedding batch at most.
        threads: torch intra-op threads for the model (None: :func:`default_threads`).
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        max_queue: int = 64,
        max_batch: int = 16,
        threads: int | None = None,
    ) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be >= 1")
        self._factory = factory
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.max_batch = int(max_batch)
        self.threads = threads
        self.predictor: Any = None
        self.state = "stopped"  # stopped -> loading -> ready | failed; -> closed
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.jobs_done = 0
        self.batches = 0
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._held: Any = None  # a job taken from the queue while gathering a batch, run next

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start the worker thread; it loads the model first."""
        if self._thread is not None:
            return
        self.state = "loading"
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="mvector-model", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the model is loaded (or failed); True when ready."""
        self._ready.wait(timeout)
        return self.state == "ready"

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting jobs, finish the queued ones, stop the thread and close the predictor."""
        self._accepting = False
        if self._thread is not None:
            self._queue.put(_STOP)  # blocks only while the queue is full; the thread keeps draining it
            self._thread.join(timeout)
            self._thread = None
        if self.predictor is not None and hasattr(self.predictor, "close"):
            self.predictor.close()
        self.state = "closed"

    def _run(self) -> None:
        import torch

        torch.set_num_threads(int(self.threads or default_threads()))
        started = time.monotonic()
        try:
            self.predictor = self._factory()
            self.load_seconds = time.monotonic() - started
            self.state = "ready"
            log.info("model loaded in %.1f s", self.load_seconds)
        except BaseException as err:  # reported as 503 model_failed; the server stays up to say so
            self.error = f"{type(err).__name__}: {err}"
            self.state = "failed"
            log.error("the model could not be loaded: %s", self.error)
        finally:
            self._ready.set()
        while True:
            job = self._held if self._held is not None else self._queue.get()
            self._held = None
            if job is _STOP:
                break
            if self.state != "ready":
                job.future.set_exception(self._not_ready())
                continue
            if isinstance(job, _EmbedJob):
                self._run_embeds(self._gather(job))
            else:
                self._run_call(job)

    def _gather(self, first: _EmbedJob) -> list[_EmbedJob]:
        """``first`` and the embedding jobs queued right behind it, up to ``max_batch`` recordings."""
        jobs, count = [first], len(first.audios)
        while count < self.max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(nxt, _EmbedJob) or count + len(nxt.audios) > self.max_batch:
                self._held = nxt
                break
            jobs.append(nxt)
            count += len(nxt.audios)
        return jobs

    def _run_embeds(self, jobs: list[_EmbedJob]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            emb = self.predictor.embed_batch([a for j in live for a in j.audios])
        except Exception:  # one bad recording must not fail the others: run each job alone
            for job in live:
                try:
                    job.future.set_result(self.predictor.embed_batch(job.audios))
                except BaseException as err:
                    job.future.set_exception(err)
        else:
            start = 0
            for job in live:
                job.future.set_result(np.asarray(emb[start : start + len(job.audios)]))
                start += len(job.audios)
        self.jobs_done += len(live)
        self.batches += 1

    def _run_call(self, job: _CallJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn(self.predictor))
        except BaseException as err:
            if not isinstance(err, Exception):
                log.error("model job raised %s", traceback.format_exc())
            job.future.set_exception(err)
        self.jobs_done += 1
        self.batches += 1

    # ------------------------------------------------------------------ submitting
    def _not_ready(self) -> ServiceError:
        if self.state == "loading":
            return ServiceError(
                503, "model_loading", "the model is still loading; retry shortly", headers={"Retry-After": "2"}
            )
        if self.state == "failed":
            return ServiceError(503, "model_failed", "the model could not be loaded; see the server log")
        return ServiceError(503, "shutting_down", "the server is stopping", headers={"Retry-After": "5"})

    def check_ready(self) -> None:
        """Raise the 503 :class:`ServiceError` that fits when jobs cannot run now."""
        if self.state != "ready" or not self._accepting:
            raise self._not_ready()

    def _put(self, job: Any) -> Future:
        self.check_ready()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ServiceError(
                503,
                "overloaded",
                f"the server is busy ({self._queue.maxsize} requests waiting); retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        return job.future

    def submit(self, fn: Callable[[Any], Any]) -> Future:
        """Queue ``fn(predictor)``; returns its future (503 :class:`ServiceError` when not ready or full)."""
        return self._put(_CallJob(fn, Future()))

    def submit_embed(self, audios: Sequence[Any]) -> Future:
        """Queue the embedding of ``audios``; the future gives ``[len(audios), embd_dim]`` (batched with others)."""
        return self._put(_EmbedJob(audios, Future()))

    @property
    def queued(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return self._queue.qsize()
