"""Uploaded images, checked the way every mmlens command checks an image file.

The bytes go to a private temporary folder and through
:func:`mmlens.data.images.open_image` (missing, corrupt, not an image, too
many pixels), then the folder is removed: nothing a request uploads stays on
disk or can be reached by another request.

Example:
    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO(); Image.new("RGB", (8, 8)).save(buffer, "PNG")
    >>> read_image(buffer.getvalue(), "a.png", max_pixels=100).size
    (8, 8)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from mmlens.data.images import open_image
from mmlens.errors import MmlensError


class WebError(MmlensError):
    """A request the server refuses, with the HTTP status that says why (422 unless given).

    Example:
        >>> WebError("too big", status=413).status
        413
    """

    def __init__(self, message: str, status: int = 422, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def read_image(data: bytes, filename: str | None, max_pixels: int, max_bytes: int | None = None) -> Image.Image:
    """The RGB image in ``data``; :class:`WebError` 413 when over ``max_bytes``, 422 for anything not a usable image.

    Example:
        >>> read_image(b"hello", "notes.txt", max_pixels=100)
        Traceback (most recent call last):
        ...
        mmlens.web.uploads.WebError: not an image file (or an unsupported format): notes.txt
    """
    shown = _safe_name(filename)
    if max_bytes is not None and len(data) > max_bytes:
        raise WebError(f"{shown} is {len(data):,} bytes, over the {max_bytes:,}-byte upload limit", status=413)
    if not data:
        raise WebError(f"{shown} is empty: upload an image file")
    with tempfile.TemporaryDirectory(prefix="mmlens-upload-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            return open_image(path, max_pixels=max_pixels)
        except MmlensError as error:
            # The private temporary path means nothing to the user: name their file instead.
            raise WebError(str(error).replace(str(path), shown)) from None


def _safe_name(filename: str | None) -> str:
    """The upload's base name, printable and short (it is echoed in messages)."""
    name = Path(filename or "upload").name
    name = "".join(ch for ch in name if ch.isprintable())[:80]
    return name or "upload"
