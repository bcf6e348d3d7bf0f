"""Load on loopback: 50 concurrent requests, memory over repeated bursts, and a 200-request soak."""

from __future__ import annotations

import asyncio
import gc
import time

import httpx
import psutil
import pytest

from tests.web.conftest import run_async

BURST = 50


def strip_timings(data: dict) -> dict:
    """An explanation's JSON without its timings (they differ run to run; nothing else may)."""
    return {**data, "methods": {m: {**v, "milliseconds": None} for m, v in data["methods"].items()}}


async def burst(url: str, body: dict, n: int = BURST) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(client.post("/api/explain", json=body) for _ in range(n)))


@pytest.fixture(scope="module")
def body(live) -> dict:
    created = httpx.post(f"{live.url}/api/inputs", data={"example": "colour_question"}, timeout=60)
    return {"input": created.json()["id"], "methods": ["rollout"]}  # the cheapest method: the server is measured


def test_fifty_concurrent_requests_respect_the_queue(live, body):
    queue = live.app.state.server.queue
    queue.peak = 0
    start = time.monotonic()
    responses = run_async(burst(live.url, body))
    seconds = time.monotonic() - start
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 1 + queue.max_waiting  # the first admitted ones all ran
    assert codes.count(429) >= 1  # and the bound was reached
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)
    assert queue.peak <= 1 + queue.max_waiting and queue.admitted == 0
    assert seconds < 60
    answers = {r.json()["answer"] for r in responses if r.status_code == 200}
    assert answers == {"purple"}


def test_memory_stays_flat_over_bursts(live, body):
    process = psutil.Process()
    run_async(burst(live.url, body))  # warm-up
    gc.collect()
    before = process.memory_info().rss
    for _ in range(5):
        responses = run_async(burst(live.url, body))
        assert all(r.status_code in (200, 429) for r in responses)
    gc.collect()
    growth = process.memory_info().rss / before - 1
    assert growth < 0.05, f"memory grew {growth:.1%} over five bursts"


def test_soak_of_two_hundred_requests_gives_the_same_answer(live, body):
    single = strip_timings(httpx.post(f"{live.url}/api/explain", json=body, timeout=60).json())

    async def soak() -> list[dict]:
        answers: list[dict] = []
        async with httpx.AsyncClient(base_url=live.url, timeout=120) as client:
            async def worker(n: int) -> None:
                for _ in range(n):
                    while True:
                        response = await client.post("/api/explain", json=body)
                        if response.status_code != 429:
                            break
                        await asyncio.sleep(0.05)
                    assert response.status_code == 200, response.text
                    answers.append(strip_timings(response.json()))
            await asyncio.gather(*(worker(50) for _ in range(4)))
        return answers

    answers = run_async(soak())
    assert len(answers) == 200
    assert all(answer == single for answer in answers)
