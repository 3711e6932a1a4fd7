"""Helpers of the service tests: an app served by uvicorn in a thread of the test process, on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import uvicorn

from mvector.service.process import free_port


@contextmanager
def running(app, graceful: float = 10.0):
    """Serve ``app`` on a free port of 127.0.0.1 while the block runs; yields ``(server, base_url)``.

    Setting ``server.should_exit`` is what SIGTERM / Ctrl-C do (a graceful stop of at most ``graceful`` s).
    """
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=graceful)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive()
