"""Synthetic worlds as datasets, by split and range: ``shapes:test[0:500]``.

A world is a function ``(split, index) -> Sample``. The shapes world is built
in; others register with :func:`register_world` (the multi-domain world of
``mmlens.data.domains`` registers as ``domains`` when that package offers a
``make_sample(split, index)``; it is looked up on first use, so the package
may appear after this module).

Example:
    >>> reader = WorldReader("shapes", "val", 10, 12)
    >>> [s.id for s in reader]
    ['shapes-val-10', 'shapes-val-11']
"""

from __future__ import annotations

import re
from importlib import import_module
from typing import Any, Callable

from mmlens.data.readers.base import Reader
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError

World = Callable[[str, int], Sample]
_WORLDS: dict[str, World] = {}
#: Worlds found on first use: name -> (module, function).
_LAZY: dict[str, tuple[str, str]] = {"shapes": ("mmlens.data.shapes", "make_sample"),
                                     "domains": ("mmlens.data.domains", "world_sample")}
SPEC = re.compile(r"^(?P<world>[a-z][a-z0-9_-]*):(?P<split>[a-z]+)(\[(?P<start>\d*):(?P<stop>\d*)\])?$")
DEFAULT_ROWS = 100


def register_world(name: str, make: World) -> None:
    """Make ``name:split[a:b]`` read ``make(split, index)`` for each index.

    Example:
        >>> register_world("mine", lambda split, i: make_sample(split, i))  # doctest: +SKIP
    """
    _WORLDS[name] = make


def world(name: str) -> World:
    """The sample function of a registered or built-in world; a clear error otherwise."""
    if name in _WORLDS:
        return _WORLDS[name]
    if name in _LAZY:
        module_name, function = _LAZY[name]
        try:
            make = getattr(import_module(module_name), function)
        except (ImportError, AttributeError):
            raise MmlensError(f"the {name} world is not available in this mmlens ({module_name}.{function} "
                              "is missing)") from None
        _WORLDS[name] = make
        return make
    raise MmlensError(f"unknown world {name!r}; known: {', '.join(sorted(set(_WORLDS) | set(_LAZY)))}")


def is_world_spec(spec: str) -> bool:
    """Whether ``spec`` reads like ``world:split`` or ``world:split[a:b]``."""
    match = SPEC.match(spec)
    return bool(match) and (match.group("world") in _WORLDS or match.group("world") in _LAZY)


class WorldReader(Reader):
    """Samples ``start .. stop - 1`` of one split of a world."""

    name = "world"

    def __init__(self, world_name: str, split: str, start: int = 0, stop: int | None = None) -> None:
        self.world_name, self.split = world_name, split
        self.start = start
        self.stop = start + DEFAULT_ROWS if stop is None else stop
        if self.stop < self.start:
            raise MmlensError(f"empty range [{start}:{stop}] of {world_name}:{split}")
        self.make = world(world_name)
        if self.stop > self.start:  # a wrong split is the whole job's mistake, not every row's
            try:
                self.make(split, self.start)
            except ValueError as error:
                raise MmlensError(f"{world_name}:{split}: {error}") from None

    @classmethod
    def parse(cls, spec: str) -> "WorldReader":
        """``shapes:test[0:500]`` (``[a:]`` and a bare split read :data:`DEFAULT_ROWS` rows)."""
        match = SPEC.match(spec)
        if not match:
            raise MmlensError(f"a world is read as world:split[start:stop], got {spec!r}")
        start = int(match.group("start") or 0)
        stop = int(match.group("stop")) if match.group("stop") else None
        return cls(match.group("world"), match.group("split"), start, stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def options(self) -> dict[str, Any]:
        return {"reader": self.name, "world": self.world_name, "split": self.split,
                "start": self.start, "stop": self.stop}

    def row_id(self, index: int) -> str:
        return f"{self.world_name}-{self.split}-{self.start + index}"

    def _load(self, index: int) -> Sample:
        try:
            return self.make(self.split, self.start + index)
        except ValueError as error:  # the world refuses the split or index
            raise MmlensError(f"{self.world_name}: {error}") from None
