"""Web fixtures: the shipped model loaded once, apps over it, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Coroutine, Iterator, TypeVar

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import mmlens
from mmlens.web import Settings, create_app
from mmlens.web.live import LiveServer

T = TypeVar("T")


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


@pytest.fixture(scope="session")
def live(shipped) -> Iterator[LiveServer]:
    """A real uvicorn server over the shipped model (default limits, max 4 waiting)."""
    with LiveServer(create_app(shipped)) as server:
        yield server


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` in a thread of its own: Playwright's sync API keeps an event loop running in this one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
