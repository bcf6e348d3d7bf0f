"""A real uvicorn server in a background thread, on a free loopback port: for tests, benchmarks and notebooks.

Example:
    >>> import httpx
    >>> from mmlens.web import create_app
    >>> with LiveServer(create_app("tiny-llava")) as live:
    ...     httpx.get(f"{live.url}/api/model").json()["model"]
    'tiny-llava'
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread; ``url`` is its address once entered."""

    def __init__(self, app: Any, start_seconds: float = 30.0) -> None:
        import uvicorn

        # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
        # without it Nagle holds a response's body behind its headers until the client's delayed ACK
        # (40 ms) on every reused connection. uvicorn's own sockets (``mmlens serve``) name it already.
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes the socket over
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.app = app
        self.start_seconds = start_seconds
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + self.start_seconds
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.socket.close()
