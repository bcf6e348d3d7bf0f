"""One server's state: the model (loaded once), its queue, and what it remembers for clients.

Example:
    >>> import mmlens
    >>> server = Server(mmlens.load("tiny-llava"), Settings())
    >>> server.queue.max_waiting
    4
"""

from __future__ import annotations

import asyncio
from typing import Any

from mmlens.model import Model
from mmlens.web.queue import ModelQueue
from mmlens.web.settings import Settings
from mmlens.web.store import Input, Job, Recent


class Server:
    """The loaded model with its queue, inputs, background jobs and cached neuron results."""

    def __init__(self, model: Model, settings: Settings) -> None:
        self.model = model
        self.settings = settings
        self.queue = ModelQueue(settings.max_waiting)
        self.inputs: Recent[Input] = Recent(settings.max_inputs)
        self.jobs: Recent[Job] = Recent(settings.max_jobs)
        self.neurons: dict[tuple[int, float], dict[str, Any]] = {}  # one model: results depend on the options only
        self.tasks: set[asyncio.Task] = set()  # background jobs, kept referenced until they end

    def close(self) -> None:
        """Cancel background jobs and stop the model's worker thread."""
        for task in self.tasks:
            task.cancel()
        self.queue.close()
