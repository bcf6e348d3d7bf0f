"""What every dataset reader shares: rows by index, bad rows as :class:`BadRow`, lazy iteration.

A reader knows how many rows its dataset has and loads row ``i`` as a
:class:`~mmlens.data.Sample` on demand, so a job can start at any row (a
resumed harvest skips finished shards without opening their images). A row
that cannot become a sample (a missing or unreadable image, a prompt without
an ``<image>`` slot per image) raises :class:`BadRow` with its id and the
reason; iteration skips it and hands it to ``on_bad``.

Example:
    >>> from mmlens.data.readers import open_reader
    >>> reader = open_reader("shapes:test[0:3]")
    >>> [s.id for s in reader]
    ['shapes-test-0', 'shapes-test-1', 'shapes-test-2']
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

from mmlens.data.images import open_image
from mmlens.data.sample import IMAGE_SLOT, Sample
from mmlens.errors import MmlensError


class BadRow(Exception):
    """A dataset row that cannot become a sample: its id and why.

    Example:
        >>> str(BadRow("row-3", "no such image file: a.png"))
        'row-3: no such image file: a.png'
    """

    def __init__(self, row_id: str, reason: str) -> None:
        super().__init__(f"{row_id}: {reason}")
        self.row_id = row_id
        self.reason = reason

    def to_json(self) -> dict[str, str]:
        return {"id": self.row_id, "reason": self.reason}


class Reader(ABC):
    """A dataset as numbered rows, each loaded lazily as a :class:`Sample`.

    Subclasses set ``name`` and implement ``__len__``, :meth:`options` and
    :meth:`_load`; :meth:`load` adds the checks every reader shares.
    """

    name: str = "reader"

    @abstractmethod
    def __len__(self) -> int:
        """Number of rows, bad ones included."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """JSON-ready description of the data (what a store's manifest records): same options, same rows."""

    @abstractmethod
    def _load(self, index: int) -> Sample:
        """Row ``index`` as a sample; raise :class:`BadRow` (or :class:`MmlensError`) when it cannot be one."""

    def load(self, index: int) -> Sample:
        """Row ``index`` as a checked sample, or :class:`BadRow`.

        Example:
            >>> open_reader("shapes:test[5:9]").load(0).id
            'shapes-test-5'
        """
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of a {len(self)}-row dataset")
        try:
            sample = self._load(index)
        except MmlensError as error:
            raise BadRow(self.row_id(index), str(error)) from None
        check_slots(sample)
        return sample

    def row_id(self, index: int) -> str:
        """The id row ``index`` reports errors under (before it is loaded)."""
        return f"row-{index}"

    def read(self, start: int = 0, stop: int | None = None,
             on_bad: Callable[[int, BadRow], None] | None = None) -> Iterator[tuple[int, Sample]]:
        """``(index, sample)`` for rows ``start .. stop - 1``, lazily; bad rows go to ``on_bad`` and are skipped.

        Example:
            >>> [i for i, _ in open_reader("shapes:val[0:10]").read(2, 4)]
            [2, 3]
        """
        stop = len(self) if stop is None else min(stop, len(self))
        for index in range(start, stop):
            try:
                sample = self.load(index)
            except BadRow as bad:
                if on_bad is not None:
                    on_bad(index, bad)
                continue
            yield index, sample

    def __iter__(self) -> Iterator[Sample]:
        for _, sample in self.read():
            yield sample

    def key(self) -> str:
        """:meth:`options` as canonical JSON: equal keys, equal rows."""
        return json.dumps(self.options(), sort_keys=True, separators=(",", ":"))


def images_of(sample: Sample) -> list[Image.Image]:
    """Every image of a sample: ``meta["images"]`` for multi-image rows, else ``[sample.image]``.

    Example:
        >>> from mmlens.data import make_sample
        >>> len(images_of(make_sample("test", 0)))
        1
    """
    images = sample.meta.get("images")
    if images:
        return list(images)
    return [] if sample.image is None else [sample.image]


def check_slots(sample: Sample) -> None:
    """:class:`BadRow` unless the prompt has one ``<image>`` slot per image."""
    n_images, slots = len(images_of(sample)), sample.prompt.count(IMAGE_SLOT) if isinstance(sample.prompt, str) else 0
    if not isinstance(sample.prompt, str) or not sample.prompt.strip():
        raise BadRow(sample.id, "no prompt")
    if slots != n_images:
        what = "no <image> slot" if slots == 0 else f"{slots} <image> slots"
        raise BadRow(sample.id, f"the prompt has {what} for {n_images} image{'s' if n_images != 1 else ''}")


def open_row_image(row_id: str, source: Any, root: Path | None = None) -> Image.Image:
    """An RGB image from a path (relative to ``root``), raw bytes, a ``{"bytes", "path"}`` dict or a PIL image.

    Anything that fails is a :class:`BadRow` for ``row_id``.
    """
    import io

    if isinstance(source, dict):  # a datasets Image feature left undecoded
        source = source.get("bytes") or source.get("path")
    if source is None or source == "":
        raise BadRow(row_id, "no image")
    if isinstance(source, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(source)) as image:
                return image.convert("RGB")
        except Exception as error:  # PIL raises many types for corrupt bytes
            raise BadRow(row_id, f"unreadable image bytes ({type(error).__name__})") from None
    if isinstance(source, (str, Path)) and root is not None and not Path(source).is_absolute():
        source = root / source
    if not isinstance(source, (str, Path, Image.Image)):
        raise BadRow(row_id, f"an image is a path or image bytes, got {type(source).__name__}")
    try:
        return open_image(source)
    except MmlensError as error:
        raise BadRow(row_id, str(error)) from None
