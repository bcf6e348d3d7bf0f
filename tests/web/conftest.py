"""Web fixtures: the shipped model loaded once, apps over it, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import io
import socket
import threading
import time
from typing import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import mmlens
from mmlens.web import Settings, create_app


@pytest.fixture(scope="session")
def shipped() -> mmlens.Model:
    return mmlens.load("shapes-llava")


@pytest.fixture(scope="session")
def client(shipped) -> Iterator[TestClient]:
    """A test client of an app with small limits (so the 413 and 422 tests upload little)."""
    settings = Settings(max_upload_bytes=200_000, max_pixels=1_000_000, max_waiting=2)
    with TestClient(create_app(shipped, settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def example_id(client) -> str:
    response = client.post("/api/inputs", data={"example": "colour_question"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread; ``url`` is its address."""

    def __init__(self, app) -> None:
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes the socket over
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", limit_concurrency=200))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="session")
def live(shipped) -> Iterator[LiveServer]:
    """A real uvicorn server over the shipped model (default limits, max 4 waiting)."""
    with LiveServer(create_app(shipped)) as server:
        yield server
