"""JSON Lines as a dataset: ``{"id", "image" | "images", "prompt", "answer"?, "box"?}`` per line.

Image paths are relative to the file's folder. Line offsets are indexed once
(a scan, no parsing), so any row loads without reading the rows before it.
Blank lines are not rows. ``box`` is ``[x0, y0, x1, y1]`` in pixels
(:class:`~mmlens.box.Box`), kept in ``sample.meta["box"]``; several images go to
``sample.meta["images"]`` (``sample.image`` is the first).

Example:
    >>> reader = JsonlReader("questions.jsonl")  # doctest: +SKIP
    >>> reader.load(0).answer  # doctest: +SKIP
    'red'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmlens.box import Box
from mmlens.data.readers.base import BadRow, Reader, open_row_image
from mmlens.data.sample import Sample
from mmlens.errors import MmlensError


class JsonlReader(Reader):
    """One row per non-blank line of ``path``."""

    name = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MmlensError(f"no such file: {self.path}")
        self.offsets: list[int] = []
        self.lines: list[int] = []
        with self.path.open("rb") as handle:
            offset = 0
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    self.offsets.append(offset)
                    self.lines.append(number)
                offset += len(line)

    def __len__(self) -> int:
        return len(self.offsets)

    def options(self) -> dict[str, Any]:
        return {"reader": self.name, "path": str(self.path.resolve())}

    def row_id(self, index: int) -> str:
        return f"line-{self.lines[index]}"

    def _record(self, index: int) -> dict[str, Any]:
        with self.path.open("rb") as handle:
            handle.seek(self.offsets[index])
            line = handle.readline()
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BadRow(self.row_id(index), f"not JSON ({error})") from None
        if not isinstance(record, dict):
            raise BadRow(self.row_id(index), f"a row is a JSON object, got {type(record).__name__}")
        return record

    def _load(self, index: int) -> Sample:
        record = self._record(index)
        row_id = str(record.get("id", self.row_id(index)))
        return sample_from_record(row_id, record, self.path.parent)


def sample_from_record(row_id: str, record: dict[str, Any], root: Path | None) -> Sample:
    """A sample from a dict with ``image``/``images``, ``prompt`` and optional ``answer`` and ``box``."""
    sources = record.get("images")
    if sources is None:
        sources = [record["image"]] if record.get("image") not in (None, "") else []
    if not isinstance(sources, (list, tuple)):
        sources = [sources]
    if not sources:
        raise BadRow(row_id, "no image")
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise BadRow(row_id, "no prompt")
    images = [open_row_image(row_id, source, root) for source in sources]
    meta: dict[str, Any] = {}
    if len(images) > 1:
        meta["images"] = images
    if record.get("box") is not None:
        try:
            meta["box"] = Box.of(record["box"])
        except (TypeError, ValueError) as error:
            raise BadRow(row_id, f"box is [x0, y0, x1, y1] ({error})") from None
    answer = record.get("answer")
    return Sample(id=row_id, image=images[0], prompt=prompt, answer=None if answer is None else str(answer), meta=meta)
