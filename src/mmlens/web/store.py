"""What the server remembers between requests: inputs and background jobs, under random ids, bounded.

Ids come from :func:`secrets.token_urlsafe` (128 bits), never a counter, so one
client cannot guess another's URLs. Both stores drop their oldest entries past
their size, so a long-running server does not grow.

Example:
    >>> store = Recent[str](limit=2)
    >>> first = store.add("a"); _ = store.add("b"); _ = store.add("c")
    >>> store.get(first) is None, len(store)
    (True, 2)
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from PIL import Image

Item = TypeVar("Item")


def new_id() -> str:
    """A random, URL-safe id of 128 bits.

    Example:
        >>> len(new_id()) >= 22
        True
    """
    return secrets.token_urlsafe(16)


class Recent(Generic[Item]):
    """A thread-safe map from random ids to items that keeps only the ``limit`` newest."""

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[str, Item] = OrderedDict()
        self._limit = max(1, limit)
        self._lock = threading.Lock()

    def add(self, item: Item) -> str:
        """Store ``item``; return its new id."""
        key = new_id()
        with self._lock:
            self._items[key] = item
            while len(self._items) > self._limit:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> Item | None:
        """The item under ``key``, or None (unknown, or dropped as old)."""
        with self._lock:
            return self._items.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class Input:
    """One prompt with its images, as the user gave them (or a shipped example)."""

    prompt: str
    images: list[Image.Image]
    example: str | None = None  # the shipped example's name, if one was picked
    box: list[float] | None = None  # the asked object's box, known for shipped examples


class Cancelled(Exception):
    """A background job was cancelled (its client asked, or stopped polling)."""


@dataclass
class Job:
    """A background run (causal tracing): its state, progress and result."""

    kind: str
    state: str = "waiting"  # waiting, running, done, failed, cancelled
    done: int = 0
    total: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    polled: float = field(default_factory=time.monotonic)  # when a client last asked about it

    def abandoned(self, seconds: float) -> bool:
        """Whether it was cancelled, or nobody has polled it for ``seconds``."""
        return self.cancelled.is_set() or time.monotonic() - self.polled > seconds

    def to_json(self) -> dict[str, Any]:
        """What ``GET /api/jobs/{id}`` answers."""
        return {"kind": self.kind, "state": self.state, "done": self.done, "total": self.total,
                "result": self.result, "error": self.error}
