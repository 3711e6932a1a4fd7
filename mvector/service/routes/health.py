"""How the service is doing: ``GET /health`` (liveness and readiness, no key) and ``GET /v1/model`` (the model,
its threshold and where it came from, the limits, and the service's counters: audio memory, refusals, queue).

>>> sorted((route.path, *route.methods) for route in router.routes)
[('/health', 'GET'), ('/v1/model', 'GET')]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from mvector import __version__
from mvector.service.auth import require
from mvector.service.errors import ServiceError
from mvector.service.keys import KeyInfo
from mvector.service.schemas import error_responses
from mvector.service.settings import MB, ServiceConfig
from mvector.service.state import ServiceState, service_state
from mvector.service.worker import default_threads

__all__ = ["router", "threshold_info"]

router = APIRouter()
_READ = Depends(require("read"))


@router.get("/health", tags=["service"], summary="Liveness and readiness (no key needed)")
async def health(request: Request) -> JSONResponse:
    worker = service_state(request).worker
    status = {"ready": "ok", "loading": "loading", "failed": "failed"}.get(worker.state, "stopping")
    return JSONResponse({"status": status, "version": __version__}, status_code=200 if status == "ok" else 503)


@router.get("/v1/model", tags=["model"], summary="Model and threshold information", responses=error_responses())
async def model_info(request: Request, key: KeyInfo = _READ) -> dict[str, Any]:
    state = service_state(request)
    if state.worker.state == "failed":
        raise ServiceError(503, "model_failed", state.public(f"the model could not be loaded: {state.worker.error}"))
    p = await state.ready_predictor()
    conf = p.configs
    count = await anyio.to_thread.run_sync(lambda: len(p.db))
    return {
        "model": {
            "name": f"{conf.get('use_model')}_{(conf.get('preprocess_conf') or {}).get('feature_method')}",
            "backend": p.backend,
            "fingerprint": p.fingerprint,
            "embedding_size": p.embd_dim,
            "sample_rate": p.sample_rate,
            "max_duration_used": p.max_duration,
            "load_seconds": state.worker.load_seconds,
        },
        "threshold": _scrubbed(threshold_info(p, state.config), state.public),
        "calibrated": getattr(p, "calibration", None) is not None,
        "score": "cosine similarity of speaker embeddings, -1..1; same speaker when score >= threshold",
        "speakers": count,
        "limits": _limits(state.config),
        **_counters(state),
        "key": {"id": key.key_id, "scope": key.scope},
    }


def _limits(config: ServiceConfig) -> dict[str, Any]:
    """The request limits a client may want to know."""
    return {
        "max_upload_mb": config.max_upload_mb,
        "max_files": config.max_files,
        "max_duration_s": config.max_duration,
        "min_duration_s": config.min_duration,
        "max_queue": config.max_queue,
        "max_audio_mb": config.max_audio_mb,
        "max_requests": config.max_requests,
        "refusal_limit_per_minute": config.refusal_limit,
    }


def _counters(state: ServiceState) -> dict[str, Any]:
    """Audio memory held and refused, the guard's refusals, the queue, threads and uptime."""
    worker = state.worker
    return {
        "audio_memory": {"held_mb": round(state.budget.held / MB, 1), "refused": state.budget.refused},
        "refused_since_start": dict(state.refused),
        "queue": {"waiting": worker.queued, "jobs_done": worker.jobs_done, "batches": worker.batches},
        "threads": worker.threads or default_threads(),
        "uptime_s": round(time.time() - state.started, 1),
    }


def threshold_info(predictor: Any, config: ServiceConfig) -> dict[str, Any]:
    """The decision threshold and where it came from (the operator, the model folder's evaluation, a default)."""
    info: dict[str, Any] = {"value": float(predictor.threshold)}
    stated = getattr(predictor, "threshold_source", None) or getattr(predictor, "threshold_info", None)
    if config.threshold is not None:
        info["source"] = "set by the server operator (mvector serve --threshold)"
    elif stated:
        text = stated if isinstance(stated, str) else json.dumps(stated, default=str)
        folder = Path(predictor.model_path)
        for prefix in (str(folder.resolve().parent), str(folder.parent)):  # no server paths in answers
            if prefix not in ("", "."):
                text = text.replace(prefix + "/", "")
        info["source"] = text if isinstance(stated, str) else json.loads(text)
    else:
        info["source"] = "default (the model folder holds no evaluation result; run eval.py on it)"
        for name, what in (("result.json", "evaluation of the model (eval.py)"), ("meta.json", "export metadata")):
            path = Path(predictor.model_path) / name
            try:
                data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict) and data.get("threshold") is not None:
                info["source"] = f"{what}: {name}"
                info["evaluation"] = {
                    k: v for k, v in data.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
                }
                break
    return info


def _scrubbed(value: Any, public: Callable[[str], str]) -> Any:
    """``value`` with ``public`` applied to every string in it (no server paths in answers)."""
    if isinstance(value, str):
        return public(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v, public) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v, public) for v in value]
    return value
