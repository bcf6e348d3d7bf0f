"""The model's queue: one job runs at a time, a few wait, the rest are told to come back later.

A model's hooks and caches belong to one forward pass at a time, so every
request that runs the model goes through :meth:`ModelQueue.run`. Jobs run on
one worker thread (the event loop stays free to answer pages, job polls and
429s). A job whose client goes away while it waits is dropped before it runs.
Two servers over one model in one process (a notebook, the tests) share the
model's lock (:func:`model_lock`), so their jobs never run on it at once.

Example:
    >>> import asyncio
    >>> queue = ModelQueue(max_waiting=2)
    >>> asyncio.run(queue.run(lambda: 6 * 7))
    42
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
import weakref
from typing import Any, Awaitable, Callable, TypeVar

from mmlens.web.uploads import WebError

Result = TypeVar("Result")

#: How often a waiting job checks whether its client is still there, in seconds.
POLL_SECONDS = 0.05

_MODEL_LOCKS: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.Lock:
    """The one lock of ``model`` in this process: whoever runs it from a server's worker thread holds it.

    Example:
        >>> class Model: ...
        >>> model = Model()
        >>> model_lock(model) is model_lock(model)
        True
    """
    with _MODEL_LOCKS_GUARD:
        return _MODEL_LOCKS.setdefault(model, threading.Lock())


class ClientGone(Exception):
    """The client disconnected while its job waited; the job never ran."""


class ModelQueue:
    """At most one running job and ``max_waiting`` waiting ones; beyond that, :class:`WebError` 429."""

    def __init__(self, max_waiting: int = 4, exclusive: threading.Lock | None = None) -> None:
        self.max_waiting = max_waiting
        self._exclusive = exclusive or threading.Lock()  # held by the worker thread while a job runs
        self._lock = asyncio.Lock()
        self._admitted = 0  # running + waiting
        self._worker: Worker | None = None  # started with the first job, again after close()
        self._seconds = 1.0  # running mean of a job's duration, for Retry-After
        self.peak = 0  # most jobs ever admitted at once (tests check the bound)
        self.cancelled = 0  # waiting jobs dropped because their client left

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now."""
        return self._admitted

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the jobs ahead times a job's mean duration, at least 1."""
        return max(1, math.ceil(self._seconds * max(1, self._admitted)))

    def admit(self) -> None:
        """Take a slot or refuse with 429 and ``Retry-After``; pair with :meth:`release`."""
        if self._admitted >= 1 + self.max_waiting:
            raise WebError(f"the model is busy: {self._admitted} jobs running or waiting; try again later",
                           status=429, headers={"Retry-After": str(self.retry_after())})
        self._admitted += 1
        self.peak = max(self.peak, self._admitted)

    def release(self) -> None:
        """Give back a slot taken by :meth:`admit`."""
        self._admitted -= 1

    async def run(self, job: Callable[[], Result], gone: Callable[[], Awaitable[bool]] | None = None) -> Result:
        """Admit ``job``, wait for the model, run it on the worker thread and return its result.

        ``gone`` tells whether the client has disconnected; checked while the
        job waits, so an abandoned job is dropped (:class:`ClientGone`) instead of run.
        """
        self.admit()
        return await self.run_admitted(job, gone)

    async def run_admitted(self, job: Callable[[], Result], gone: Callable[[], Awaitable[bool]] | None = None) -> Result:
        """:meth:`run` for a job that already holds a slot (:meth:`admit`); the slot is released at the end."""
        try:
            await self._acquire(gone)
            try:
                start = time.perf_counter()
                if self._worker is None:
                    self._worker = Worker()
                result = await self._worker.run(self._holding, job)
                self._seconds = 0.8 * self._seconds + 0.2 * (time.perf_counter() - start)
                return result
            finally:
                self._lock.release()
        finally:
            self.release()

    def _holding(self, job: Callable[[], Result]) -> Result:
        # A job outlives its coroutine when that is cancelled, and close() starts a fresh worker
        # thread: the lock, not the single thread, is what keeps two jobs off the model at once.
        with self._exclusive:
            return job()

    async def _acquire(self, gone: Callable[[], Awaitable[bool]] | None) -> None:
        if gone is None or not self._lock.locked():
            await self._lock.acquire()
            return
        waiting = asyncio.ensure_future(self._lock.acquire())
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=POLL_SECONDS)
            if done:
                return
            if await gone():
                waiting.cancel()
                try:
                    await waiting
                except asyncio.CancelledError:
                    pass
                else:  # it got the lock just as it was cancelled: hand it on
                    self._lock.release()
                self.cancelled += 1
                raise ClientGone()

    def close(self) -> None:
        """Stop the worker thread once its current job ends (a later job starts a new one)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None


class Worker:
    """One long-lived thread that runs jobs handed to it and answers on the caller's event loop.

    A plain queue in and ``call_soon_threadsafe`` out: the fewest steps between
    the event loop and the model (no executor bookkeeping, no second future
    chained to the first), since for the cheapest methods every handoff shows.

    Example:
        >>> async def main():
        ...     worker = Worker()
        ...     try:
        ...         return await worker.run(lambda x: x + 1, 41)
        ...     finally:
        ...         worker.stop()
        >>> asyncio.run(main())
        42
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="mmlens-model", daemon=True)
        self._thread.start()

    def run(self, function: Callable[..., Result], *args: Any) -> "asyncio.Future[Result]":
        """``function(*args)`` on the worker thread; the future resolves on the calling loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, function, args))
        return future

    def stop(self) -> None:
        """End the thread after the jobs already handed to it (a job still waiting whose caller left is skipped)."""
        self._jobs.put(None)

    def _serve(self) -> None:
        while (item := self._jobs.get()) is not None:
            loop, future, function, args = item
            if future.cancelled():  # its caller has gone: do not run the model for nobody
                continue
            try:
                outcome, failed = function(*args), False
            except BaseException as error:  # noqa: BLE001 - handed to the caller, raised there
                outcome, failed = error, True
            try:
                loop.call_soon_threadsafe(_settle, future, outcome, failed)
            except RuntimeError:  # the loop has closed: nobody is waiting
                pass
            del item, loop, future, function, args, outcome  # drop the job's data now, not at the next job


def _settle(future: asyncio.Future, outcome: Any, failed: bool) -> None:
    if future.cancelled():
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
