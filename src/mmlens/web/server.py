"""One server's state: the model (loaded once), its queue, and what it remembers for clients.

Example:
    >>> import mmlens
    >>> server = Server(mmlens.load("tiny-llava"), Settings())
    >>> server.queue.max_waiting
    4
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Hashable

from mmlens.model import Model
from mmlens.web.queue import ClientGone, ModelQueue, model_lock
from mmlens.web.settings import Settings
from mmlens.web.store import Cancelled, Input, Job, Recent

#: A background job that nobody has polled for this long is cancelled (its client has left).
ABANDONED_SECONDS = 60.0
#: Finished results kept for requests that ask the same again (neurons depend on their options only).
CACHED_RESULTS = 4

Progress = Callable[[int, int], None]


class Server:
    """The loaded model with its queue, inputs, background jobs and cached results."""

    def __init__(self, model: Model, settings: Settings) -> None:
        self.model = model
        self.settings = settings
        self.queue = ModelQueue(settings.max_waiting, exclusive=model_lock(model))
        self.inputs: Recent[Input] = Recent(settings.max_inputs)
        self.jobs: Recent[Job] = Recent(settings.max_jobs)
        self.cache: dict[Hashable, dict[str, Any]] = {}
        self.tasks: set[asyncio.Task] = set()  # background jobs, kept referenced until they end

    def start_job(self, kind: str, work: Callable[[Progress], dict[str, Any]],
                  cache_key: Hashable | None = None) -> dict[str, Any]:
        """Queue ``work(progress)`` as a background job (429 now if the queue is full); its id and address.

        ``progress(done, total)`` records progress and raises :class:`Cancelled`
        once the job is cancelled or abandoned, which stops the work at its next step.
        With ``cache_key``, a result computed before is answered at once.
        """
        job = Job(kind)
        if cache_key is not None and cache_key in self.cache:
            job.state, job.result = "done", self.cache[cache_key]
        else:
            self.queue.admit()
        key = self.jobs.add(job)
        if job.state == "waiting":
            task = asyncio.create_task(self._run(job, work, cache_key))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return {"id": key, "url": f"/api/jobs/{key}", "state": job.state}

    async def _run(self, job: Job, work: Callable[[Progress], dict[str, Any]], cache_key: Hashable | None) -> None:
        def progress(done: int, total: int) -> None:
            if job.abandoned(ABANDONED_SECONDS):
                raise Cancelled()
            job.done, job.total = done, total

        def running() -> dict[str, Any]:
            job.state = "running"
            progress(0, 0)
            return work(progress)

        async def gone() -> bool:
            return job.abandoned(ABANDONED_SECONDS)

        try:
            job.result = await self.queue.run_admitted(running, gone)
            job.state = "done"
        except (Cancelled, ClientGone, asyncio.CancelledError):
            job.state = "cancelled"
            job.cancelled.set()  # a job already on the worker thread outlives this coroutine: stop it at its next step
            return
        except Exception as error:  # noqa: BLE001 - a failed job reports its error through GET /api/jobs/{id}
            job.state, job.error = "failed", " ".join(str(error).split()) or type(error).__name__
            return
        if cache_key is not None:
            while len(self.cache) >= CACHED_RESULTS:
                self.cache.pop(next(iter(self.cache)))
            self.cache[cache_key] = job.result

    def close(self) -> None:
        """Cancel background jobs and stop the model's worker thread."""
        for task in self.tasks:
            task.cancel()
        self.queue.close()
