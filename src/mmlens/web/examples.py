"""The shipped example images a user can pick instead of uploading one.

Example:
    >>> names = [entry["name"] for entry in examples()]
    >>> "colour_question" in names
    True
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from mmlens.data.images import open_image
from mmlens.web.store import Input
from mmlens.web.uploads import WebError


@lru_cache(maxsize=1)
def examples() -> tuple[dict[str, Any], ...]:
    """Every shipped example: ``name`` (its image's stem), ``prompt``, ``answer`` and the asked object's ``box``."""
    folder = resources.files("mmlens.zoo") / "examples"
    entries = json.loads((folder / "examples.json").read_text())
    return tuple({"name": Path(e["image"]).stem, "image": e["image"], "prompt": e["prompt"], "answer": e["answer"],
                  "box": e.get("target_box")} for e in entries)


def example_path(name: str) -> Path:
    """The image file of the shipped example ``name``; :class:`WebError` 404 for any other name.

    Only names from the shipped list resolve, so a request cannot reach any other file.
    """
    for entry in examples():
        if entry["name"] == name:
            return Path(str(resources.files("mmlens.zoo") / "examples" / entry["image"]))
    raise WebError(f"no shipped example {name!r}; choose one of {', '.join(e['name'] for e in examples())}",
                   status=404)


def example_input(name: str, prompt: str | None = None) -> Input:
    """The example as an :class:`Input`: its image, its prompt (or ``prompt``) and its object's box."""
    path = example_path(name)
    entry = next(e for e in examples() if e["name"] == name)
    return Input(prompt or entry["prompt"], [open_image(path)], example=name, box=entry["box"])
