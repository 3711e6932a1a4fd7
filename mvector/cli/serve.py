"""``mvector serve``: run the HTTP verification service (FastAPI app served by uvicorn).

    mvector keys create --audio_db_path audio_db --scope admin      # the key is on the last line
    mvector serve --model_path models/EcapaTdnn_MelSpectrogram/best_model --audio_db_path audio_db --port 8000
    curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/v1/model

It binds to 127.0.0.1 unless ``--host`` says otherwise (put it behind a reverse proxy with TLS to expose it).
SIGTERM or Ctrl-C stops it gracefully: no new connections, requests in flight finish (up to --graceful_timeout s).
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import sys
from typing import Sequence

from mvector.cli.common import CliParser, HelpFormatter, add_flag, add_threads_argument, add_use_gpu_flag, run_cli
from mvector.errors import ConfigError
from mvector.inference.ann_index import SEARCH_INDEXES, faiss_available

# (importable names, pip package): python-multipart is imported as python_multipart (older releases: multipart)
_NEEDED = (
    (("fastapi",), "fastapi"),
    (("uvicorn",), "uvicorn"),
    (("python_multipart", "multipart"), "python-multipart"),
)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``mvector serve``.

    >>> args = build_parser().parse_args(["--model_path", "m"])
    >>> args.host, args.port, args.max_upload_mb
    ('127.0.0.1', 8000, 10.0)
    """
    parser = CliParser(
        prog=prog,
        description="Run the HTTP verification service (FastAPI app served by uvicorn).",
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model_path", required=True, help="model folder (checkpoint or export)")
    parser.add_argument(
        "--audio_db_path", default="audio_db/",
        help="speaker database folder, or a postgresql:// URL shared by replicas (keys and audit live there too)",
    )
    parser.add_argument(
        "--replica_name", default=None,
        help="this replica's name in the shared audit log (default: host name and process id)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes it to the network")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--threshold", type=float, default=None, help="decision threshold; None: the model's")
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "torch", "torchscript", "onnx"], help="how to run the model"
    )
    add_use_gpu_flag(parser, "run the model on CUDA")
    add_flag(parser, "--keep_audio", default=False, help="keep enrolled audio in the database folder")
    parser.add_argument(
        "--search_index", default="exact", choices=list(SEARCH_INDEXES),
        help="how plain identifications search a gallery: exact (every speaker) or an approximate index "
        "(pq recommended; needs mvector[ann]; see the README's 'Several machines')",
    )
    parser.add_argument("--max_upload_mb", type=float, default=10.0, help="size limit of one uploaded recording")
    parser.add_argument("--max_files", type=int, default=10, help="recordings per enrolment request at most")
    parser.add_argument("--max_duration", type=float, default=60.0, help="seconds per recording at most")
    parser.add_argument("--min_duration", type=float, default=0.5, help="seconds per recording at least")
    parser.add_argument("--max_queue", type=int, default=64, help="model jobs waiting at most (then 503 overloaded)")
    parser.add_argument("--max_batch", type=int, default=16, help="recordings embedded in one batch at most")
    add_threads_argument(parser, "the usable CPUs less one (HTTP, decoding), less those busy")
    parser.add_argument(
        "--cors_origins", nargs="*", default=[], help="origins allowed by CORS (none: CORS off), e.g. https://app.example"
    )
    limits = parser.add_argument_group("limits (see the README's 'HTTP service' section)")
    limits.add_argument("--max_requests", type=int, default=64, help="requests handled at once (then 503 overloaded)")
    limits.add_argument(
        "--max_connections", type=int, default=256, help="open connections at once (then 503 and closed)"
    )
    limits.add_argument(
        "--header_timeout", type=float, default=10.0, help="seconds for a request's headers (then 408 and closed)"
    )
    limits.add_argument(
        "--body_timeout", type=float, default=30.0, help="seconds a request body may stall (then 408)"
    )
    limits.add_argument(
        "--max_audio_mb",
        type=float,
        default=None,
        help="audio held in memory across all requests (bodies and decoded recordings); None: a tenth of the RAM",
    )
    limits.add_argument(
        "--audio_wait", type=float, default=2.0, help="seconds a request waits for audio memory (then 503)"
    )
    limits.add_argument(
        "--refusal_limit", type=int, default=60, help="refused requests per key and client per minute (then 429)"
    )
    limits.add_argument(
        "--audit_retention_days", type=float, default=90.0, help="audit log entries older than this are deleted"
    )
    parser.add_argument(
        "--forwarded_allow_ips",
        nargs="*",
        default=[],
        help="proxy addresses whose X-Forwarded-For/-Proto are trusted (none: ignored, the client is the TCP peer)",
    )
    parser.add_argument("--graceful_timeout", type=float, default=30.0, help="seconds to finish requests on shutdown")
    parser.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _graceful_server_class(uvicorn):
    """uvicorn's Server, except that a SIGTERM/SIGINT that stopped it gracefully ends the process with status 0.

    (uvicorn raises the signal again after its graceful shutdown, so the process would die of it instead.)
    """
    import contextlib
    import signal
    import threading

    class GracefulServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return GracefulServer


def _check_store(location: str, keep_audio: bool) -> None:
    """Reach the store now: a wrong PostgreSQL host, port, database or password is one clear line and a non-zero
    exit at start-up, not an error at the first request (and so is --keep_audio on a store that keeps no files)."""
    from mvector.store import is_url, open_store, redact

    if keep_audio and is_url(location):
        raise ConfigError(
            f"--keep_audio needs a database folder: {redact(location)} keeps no audio files (leave --keep_audio out)"
        )
    store = open_store(location)
    try:
        store.check()
    finally:
        store.close()


def _serve(args: argparse.Namespace) -> None:
    missing = []
    for names, package in _NEEDED:
        for name in names:
            try:
                importlib.import_module(name)
                break
            except ImportError:
                continue
        else:
            missing.append(package)
    if missing:
        raise ConfigError(
            f"mvector serve needs {', '.join(missing)}, which are not installed: pip install \"mvector[serve]\""
        )
    import logging

    import uvicorn

    from mvector.build import resolve_model_dir
    from mvector.service.app import create_app
    from mvector.service.server import server_config
    from mvector.service.settings import ServiceConfig
    from mvector.utils.threads import thread_plan

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    resolve_model_dir(args.model_path)  # a missing folder is one clear error before the server starts
    _check_store(args.audio_db_path, args.keep_audio)
    if args.search_index != "exact" and not faiss_available():
        raise ConfigError(f"--search_index {args.search_index} needs faiss-cpu: pip install 'mvector[ann]'")
    config = ServiceConfig(
        model_path=args.model_path,
        audio_db_path=args.audio_db_path,
        threshold=args.threshold,
        backend=args.backend,
        use_gpu=args.use_gpu,
        keep_audio=args.keep_audio,
        search_index=args.search_index,
        max_upload_mb=args.max_upload_mb,
        max_files=args.max_files,
        max_duration=args.max_duration,
        min_duration=args.min_duration,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        threads=thread_plan(args.threads, reserve=1).intra_op,
        cors_origins=tuple(args.cors_origins),
        max_requests=args.max_requests,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_audio_mb=args.max_audio_mb,
        audio_wait=args.audio_wait,
        refusal_limit=args.refusal_limit,
        audit_retention_days=args.audit_retention_days,
        forwarded_allow_ips=tuple(args.forwarded_allow_ips),
        replica_name=args.replica_name,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not _is_loopback(args.host):
        print(
            f"warning: binding to {args.host}: the API is reachable from the network over plain HTTP; "
            "put it behind a reverse proxy with TLS (see docs/service.md)",
            file=sys.stderr,
        )
    app = create_app(config)
    print(f"mvector serve: http://{args.host}:{args.port}/ (API docs at /docs, OpenAPI at /openapi.json)", flush=True)
    server = _graceful_server_class(uvicorn)(
        server_config(
            app, config, args.host, args.port, log_level=args.log_level, graceful_timeout=args.graceful_timeout
        )
    )
    server.run()
    if not server.started:
        raise ConfigError(f"the server could not start on {args.host}:{args.port} (is the port in use?)")
    print("mvector serve: stopped", flush=True)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``mvector serve``; returns the exit status."""
    parser = build_parser(prog)
    return run_cli(lambda a: _serve(parser.parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
