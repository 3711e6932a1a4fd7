"""Run ``mvector serve`` in a child process: for scripts, load tests and end-to-end tests.

>>> port = free_port()
>>> 1024 <= port <= 65535
True
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence, Union

__all__ = ["ServerProcess", "free_port", "wait_for_health"]

PathLike = Union[str, os.PathLike]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_health(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> dict:
    """Poll ``url + '/health'`` until it answers ``{"status": "ok"}``; returns that body.

    Raises :class:`TimeoutError` after ``timeout`` seconds, or :class:`RuntimeError` when ``proc`` exits first.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                body = json.loads(resp.read())
                if body.get("status") == "ok":
                    return body
                last = str(body)
        except urllib.error.HTTPError as err:  # 503 while the model loads
            last = f"HTTP {err.code}"
        except (OSError, ValueError) as err:
            last = str(err)
        time.sleep(0.1)
    raise TimeoutError(f"{url} was not ready after {timeout:g} s ({last})")


class ServerProcess:
    """``mvector serve`` in a child process on ``host:port`` (a free port by default), logging to a file, in the
    working folder ``cwd`` (default: this process's).

    Use it as a context manager; it stops the server gracefully (SIGTERM) on exit, or kills it if it hangs::

        with ServerProcess("models/x/best_model", "audio_db") as server:
            requests.get(server.url + "/health")
    """

    def __init__(
        self,
        model_path: PathLike,
        audio_db_path: PathLike,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        log_path: PathLike | None = None,
        env: dict[str, str] | None = None,
        cwd: PathLike | None = None,
    ) -> None:
        self.model_path = str(model_path)
        self.audio_db_path = str(audio_db_path)
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = list(extra_args)
        if log_path is None:  # beside the database folder; in the working folder for a database URL
            base = Path(cwd or ".") if "://" in self.audio_db_path else Path(self.audio_db_path).parent
            log_path = base / f"serve-{self.port}.log"
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = None if cwd is None else str(cwd)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The command line that runs the server."""
        return [
            sys.executable,
            "-m",
            "mvector.cli.serve",
            "--model_path",
            self.model_path,
            "--audio_db_path",
            self.audio_db_path,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--log_level",
            "warning",
            *self.extra_args,
        ]

    def start(self, timeout: float = 60.0, wait: bool = True) -> ServerProcess:
        """Start the server; with ``wait``, return once ``/health`` says ok."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd)
        if wait:
            try:
                wait_for_health(self.url, timeout, self.proc)
            except (RuntimeError, TimeoutError) as err:
                self.kill()
                tail = "\n".join(self.log().splitlines()[-15:])
                raise RuntimeError(f"{err}; its log {self.log_path} ends with:\n{tail}") from None
            except BaseException:
                self.kill()
                raise
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """Graceful stop (SIGTERM: requests in flight finish); kills after ``timeout``. Returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash or power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        """What the server wrote so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.is_file() else ""

    def __enter__(self) -> ServerProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
