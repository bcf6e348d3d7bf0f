"""Open images from disk with clear errors for the ways that goes wrong.

Example:
    >>> from PIL import Image
    >>> open_image(Image.new("RGB", (8, 8))).size
    (8, 8)
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mmlens.errors import MmlensError

#: Larger images are refused: VLM processors resize to well under a megapixel,
#: and a decompression bomb should not take the machine down first.
MAX_PIXELS = 64_000_000


def open_image(source: str | Path | Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB image from a path or a PIL image; :class:`MmlensError` for missing, corrupt or huge files."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    path = Path(source)
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
