"""Open images from disk (or arrays) with clear errors for the ways that goes wrong.

Example:
    >>> from PIL import Image
    >>> open_image(Image.new("RGB", (8, 8))).size
    (8, 8)
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmlens.errors import MmlensError
from mmlens.notices import notice

#: ``scheme://`` (or ``scheme:/`` once a path type has collapsed the double slash).
_URL = re.compile(r"^(https?|ftp|s3|gs|hf):/+(.*)$", re.IGNORECASE)

#: Larger images are refused: VLM processors resize to well under a megapixel,
#: and a decompression bomb should not take the machine down first.
MAX_PIXELS = 64_000_000


def open_image(source: str | Path | Image.Image | Any, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB image from a path, a PIL image or an array; :class:`MmlensError` for missing, corrupt or huge files.

    Arrays (numpy or torch) go through :func:`image_from_array`.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if _is_array(source):
        return image_from_array(source)
    if not isinstance(source, (str, Path)):
        raise MmlensError(f"an image is a file path, a PIL image or an array, got {type(source).__name__}")
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


def is_one_image(value: Any) -> bool:
    """Whether ``value`` is one image (a path, a PIL image, an array), not a list of them.

    Example:
        >>> is_one_image("cat.png"), is_one_image(["cat.png"])
        (True, False)
    """
    return isinstance(value, (str, Path, Image.Image)) or _is_array(value)


def image_list(images: Any) -> list:
    """``images`` as a list: one image becomes a one-element list (``prepare(prompt, image)`` reads as ``[image]``).

    Example:
        >>> image_list("cat.png"), image_list(None)
        (['cat.png'], [])
    """
    if images is None:
        return []
    if is_one_image(images):
        return [images]
    try:
        return list(images)
    except TypeError:
        raise MmlensError(f"images are a list of file paths, PIL images or arrays, got "
                          f"{type(images).__name__}") from None


def image_from_array(source: Any) -> Image.Image:
    """An RGB image from a numpy array or torch tensor: ``(H, W)``, ``(H, W, 3|4)`` or channels first ``(3, H, W)``.

    Integers are read as 0..255; floats as 0..1 when none exceeds 1 (torchvision's
    ``to_tensor``), else as 0..255.

    Example:
        >>> image_from_array(np.zeros((3, 8, 6), dtype=np.float32)).size
        (6, 8)
    """
    array = source.detach().cpu().float().numpy() if hasattr(source, "detach") else np.asarray(source)
    shape = tuple(array.shape)
    if array.ndim == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels first (torch's layout) to channels last (PIL's)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
        raise MmlensError(f"an image array is (height, width), (height, width, 3) or (3, height, width), got shape "
                          f"{shape}; give several images as a list")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise MmlensError(f"an image array holds numbers, got dtype {array.dtype}")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise MmlensError("the image array holds NaN or infinite values")
    if np.issubdtype(array.dtype, np.floating) and values.max(initial=0.0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8)).convert("RGB")


def _is_array(value: Any) -> bool:
    """A numpy array or torch tensor (duck-typed: torch need not be imported here)."""
    return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "shape"))
