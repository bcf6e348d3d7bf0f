"""The model queue: one job at a time, a bounded wait, 429 beyond it, and waiting jobs dropped when clients leave."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mmlens.web.queue import ClientGone, ModelQueue, Worker, model_lock
from mmlens.web.uploads import WebError
from tests.web.conftest import run_async


class CountingJob:
    """A job that sleeps ``seconds`` and records the most copies of itself that ever ran at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.running, self.most = seconds, 0, 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self._lock:
            self.running -= 1
        return "ok"


def test_one_job_at_a_time_and_bounded_wait():
    job = CountingJob(0.05)

    async def scenario():
        queue = ModelQueue(max_waiting=2)
        results = await asyncio.gather(*(queue.run(job) for _ in range(6)), return_exceptions=True)
        queue.close()
        return results, queue.peak, queue.admitted

    results, peak, left = run_async(scenario())
    most = job.most
    refused = [r for r in results if isinstance(r, WebError)]
    assert results.count("ok") == 3 and len(refused) == 3
    assert all(r.status == 429 and int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert most == 1 and peak == 3 and left == 0


def test_two_queues_over_one_model_never_run_it_at_once():
    """Two servers over one model (a notebook, the tests) share its lock; their queues alone would overlap."""
    class Model:
        pass

    model, other = Model(), Model()
    assert model_lock(model) is model_lock(model) and model_lock(model) is not model_lock(other)

    async def scenario(queues, job):
        results = await asyncio.gather(*(queue.run(job) for queue in queues for _ in range(2)))
        for queue in queues:
            queue.close()
        return results

    shared, alone = CountingJob(0.2), CountingJob(0.2)  # long enough that unlocked jobs overlap on a loaded machine
    assert run_async(scenario([ModelQueue(2, exclusive=model_lock(model)) for _ in range(2)], shared)) == ["ok"] * 4
    assert run_async(scenario([ModelQueue(2) for _ in range(2)], alone)) == ["ok"] * 4
    assert shared.most == 1 and alone.most == 2


def test_a_waiting_job_whose_client_left_never_runs():
    async def scenario():
        queue = ModelQueue(max_waiting=2)
        ran = []
        gone = asyncio.Event()

        async def client_gone() -> bool:
            return gone.is_set()

        first = asyncio.ensure_future(queue.run(lambda: (time.sleep(0.3), ran.append("first"))))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(queue.run(lambda: ran.append("second"), client_gone))
        await asyncio.sleep(0.05)
        gone.set()
        with pytest.raises(ClientGone):
            await second
        await first
        third = await queue.run(lambda: ran.append("third") or "done")  # the slot and the lock were given back
        queue.close()
        return ran, queue.cancelled, third, queue.admitted

    ran, cancelled, third, left = run_async(scenario())
    assert ran == ["first", "third"] and cancelled == 1 and third == "done" and left == 0


def test_a_failing_job_frees_its_slot():
    async def scenario():
        queue = ModelQueue(max_waiting=0)
        with pytest.raises(ZeroDivisionError):
            await queue.run(lambda: 1 / 0)
        answer = await queue.run(lambda: 7)
        queue.close()
        return answer

    assert run_async(scenario()) == 7


def test_worker_runs_in_order_on_one_thread_and_skips_jobs_nobody_awaits():
    async def scenario():
        worker, ran = Worker(), []
        gate = threading.Event()
        busy = worker.run(gate.wait)  # holds the thread while the next jobs queue up
        skipped = worker.run(ran.append, "skipped")
        kept = worker.run(lambda: ran.append(threading.current_thread().name) or "kept")
        skipped.cancel()  # its caller left before it started
        gate.set()
        await busy
        failing = worker.run(lambda: 1 / 0)
        worker.stop()
        with pytest.raises(ZeroDivisionError):
            await failing
        return await kept, ran

    kept, ran = run_async(scenario())
    assert kept == "kept" and ran == ["mmlens-model"]
