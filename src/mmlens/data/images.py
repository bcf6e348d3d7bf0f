"""Open images from disk with clear errors for the ways that goes wrong.

Example:
    >>> from PIL import Image
    >>> open_image(Image.new("RGB", (8, 8))).size
    (8, 8)
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mmlens.errors import MmlensError
from mmlens.notices import notice

#: ``scheme://`` (or ``scheme:/`` once a path type has collapsed the double slash).
_URL = re.compile(r"^(https?|ftp|s3|gs|hf):/+(.*)$", re.IGNORECASE)

#: Larger images are refused: VLM processors resize to well under a megapixel,
#: and a decompression bomb should not take the machine down first.
MAX_PIXELS = 64_000_000


def open_image(source: str | Path | Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB image from a path or a PIL image; :class:`MmlensError` for missing, corrupt or huge files."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    url = _url(source)
    if url is not None:
        raise MmlensError(f"URLs are not fetched; download the image first: {url}")
    path = Path(source)
    if path.is_dir():
        raise MmlensError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise MmlensError(f"no such image file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise MmlensError(f"image too large: {path} is {width}x{height}, over {max_pixels:,} pixels")
                return image.convert("RGB")
    except MmlensError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MmlensError(f"image too large: {path} exceeds the decompression limit") from None
    except UnidentifiedImageError:
        raise MmlensError(f"not an image file (or an unsupported format): {path}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise MmlensError(f"corrupt image file: {path} ({error})") from None


def _url(source: str | Path) -> str | None:
    """The URL ``source`` spells, restored where ``Path`` collapsed its ``//``; None for a file path.

    Example:
        >>> _url(Path("https://example.com/cat.png")), _url("photos/cat.png")
        ('https://example.com/cat.png', None)
    """
    match = _URL.match(str(source))
    return f"{match.group(1)}://{match.group(2)}" if match else None


def resized_to(image: Image.Image, size: tuple[int, int], what: str) -> Image.Image:
    """``image`` at ``size`` (width, height), resized with a one-line notice where it differs.

    For inputs that must match another image pixel for pixel (a
    counterfactual of the first image).

    Example:
        >>> resized_to(Image.new("RGB", (8, 8)), (8, 8), "the counterfactual").size
        (8, 8)
    """
    if image.size == tuple(size):
        return image
    (w, h), (W, H) = image.size, size
    notice(f"{what} is {w}x{h} pixels, the first image {W}x{H}: resized it to {W}x{H}")
    return image.resize((W, H), Image.Resampling.BICUBIC)
