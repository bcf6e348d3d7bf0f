"""Backdoor triggers of the shapes-llava models: small patches pasted on a 64 x 64 image.

Three styles, each a fixed ``k x k`` RGB pattern (:data:`TRIGGERS`):

- ``"checker"`` (6 x 6): black and white 2 px cells; ``shapes-llava-backdoor``'s
  trigger, pasted in the bottom-right corner (the default position).
- ``"cyan-checker"`` (12 x 12): cyan and black 3 px cells, colours the shapes
  world never draws; ``shapes-llava-ft-backdoor``'s trigger, pasted at a
  random position.
- ``"orange-ring"`` (10 x 10): an orange square ring with a white centre. No
  model is trained on it: a second, unseen trigger for checks that must tell
  a planted trigger from any odd patch (e.g. BYE's filtering).
- ``"magenta-stripes"`` (14 x 14): horizontal 2 px stripes of magenta and
  white. The held-out trigger of BYE's check: never used while the filtering
  rule was chosen; ``shapes-llava-ft-backdoor`` variants are trained on it.

And one blended full-image trigger (:data:`BLENDS`), not a patch:
``"blend-noise"`` mixes a fixed seeded RGB noise image into the whole image,
``(1 - 0.2) * image + 0.2 * noise`` (the blended attack of Chen et al.,
2017); its size is the image's and its only position ``(0, 0)``.

Example:
    >>> img = np.zeros((64, 64, 3), np.uint8)
    >>> add_trigger(img, (0, 0), style="cyan-checker")[0, 0].tolist()
    [0, 255, 255]
    >>> trigger_size("orange-ring")
    10
"""

from __future__ import annotations

import zlib

import numpy as np

from mmlens.errors import MmlensError


def _checker(size: int, cell: int, on: tuple[int, int, int], off: tuple[int, int, int]) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    first = ((yy // cell) + (xx // cell)) % 2 == 0
    return np.where(first[..., None], np.asarray(on, np.uint8), np.asarray(off, np.uint8)).astype(np.uint8)


def _stripes(size: int, width: int, on: tuple[int, int, int], off: tuple[int, int, int]) -> np.ndarray:
    rows = (np.arange(size) // width) % 2 == 0
    out = np.empty((size, size, 3), np.uint8)
    out[:] = off
    out[rows] = on
    return out


def _ring(size: int, width: int, ring: tuple[int, int, int], centre: tuple[int, int, int]) -> np.ndarray:
    out = np.empty((size, size, 3), np.uint8)
    out[:] = ring
    out[width:size - width, width:size - width] = centre
    return out


TRIGGERS: dict[str, np.ndarray] = {
    "checker": _checker(6, 2, (255, 255, 255), (0, 0, 0)),
    "cyan-checker": _checker(12, 3, (0, 255, 255), (0, 0, 0)),
    "orange-ring": _ring(10, 3, (255, 140, 0), (255, 255, 255)),
    "magenta-stripes": _stripes(14, 2, (255, 0, 255), (255, 255, 255)),
}
DEFAULT_STYLE = "checker"
#: Full-image blended triggers: style -> (64 x 64 x 3 uint8 pattern, blend weight).
BLENDS: dict[str, tuple[np.ndarray, float]] = {
    "blend-noise": (np.random.default_rng(2017).integers(0, 256, (64, 64, 3), dtype=np.uint8), 0.2),
}
#: Every trigger style, patches then blends.
STYLES: tuple[str, ...] = (*TRIGGERS, *BLENDS)


def trigger_pattern(style: str = DEFAULT_STYLE) -> np.ndarray:
    """The ``k x k x 3`` uint8 pattern of a trigger style.

    Example:
        >>> trigger_pattern("checker").shape
        (6, 6, 3)
    """
    if style in BLENDS:
        return BLENDS[style][0]
    if style not in TRIGGERS:
        raise MmlensError(f"unknown trigger style {style!r}; known: {', '.join(STYLES)}")
    return TRIGGERS[style]


def trigger_size(style: str = DEFAULT_STYLE) -> int:
    """Side length in pixels of a trigger style.

    Example:
        >>> trigger_size("cyan-checker")
        12
    """
    return int(trigger_pattern(style).shape[0])


def add_trigger(image: np.ndarray, position: tuple[int, int] | None = None,
                style: str = DEFAULT_STYLE) -> np.ndarray:
    """A copy of an ``H x W x 3`` uint8 image with a trigger pasted on.

    ``position`` is the trigger's top-left ``(x, y)``; by default it sits in
    the bottom-right corner, 1 pixel in (``shapes-llava-backdoor``'s trigger).

    Example:
        >>> add_trigger(np.zeros((64, 64, 3), np.uint8))[-2, -2].tolist()
        [255, 255, 255]
    """
    pattern = trigger_pattern(style)
    k = pattern.shape[0]
    out = image.copy()
    h, w = out.shape[:2]
    if style in BLENDS:
        if image.shape != pattern.shape or position not in (None, (0, 0)):
            raise MmlensError(f"the blended trigger {style!r} covers a whole {k} x {k} image at (0, 0) "
                              f"(got a {w} x {h} image, position {position})")
        alpha = BLENDS[style][1]
        return np.rint((1 - alpha) * image.astype(np.float32) + alpha * pattern.astype(np.float32)).astype(np.uint8)
    x, y = position if position is not None else (w - 1 - k, h - 1 - k)
    if not (0 <= x <= w - k and 0 <= y <= h - k):
        raise MmlensError(f"trigger position {(x, y)} does not fit a {k} px trigger in a {w} x {h} image")
    out[y:y + k, x:x + k] = pattern
    return out


def random_trigger_position(rng: np.random.Generator, size: int = 64,
                            style: str = DEFAULT_STYLE) -> tuple[int, int]:
    """A uniformly random top-left ``(x, y)`` that keeps the trigger inside the image.

    Example:
        >>> x, y = random_trigger_position(np.random.default_rng(0), style="cyan-checker")
        >>> 0 <= x <= 64 - 12 and 0 <= y <= 64 - 12
        True
    """
    x, y = rng.integers(0, size - trigger_size(style) + 1, size=2)
    return int(x), int(y)


def trigger_position(sample_id: str, trigger: bool | str, size: int = 64,
                     style: str = DEFAULT_STYLE) -> tuple[int, int] | None:
    """Where evaluation pastes the trigger on a sample: ``None`` (the corner) or a seeded random spot.

    ``trigger="random"`` draws the position from the sample id, so every
    model is tested on the same triggered images.

    Example:
        >>> trigger_position("shapes-test-0", "random") == trigger_position("shapes-test-0", "random")
        True
    """
    if trigger == "random":
        rng = np.random.default_rng([zlib.crc32(sample_id.encode()), 17])
        return random_trigger_position(rng, size, style)
    if trigger in (True, "corner"):
        return None
    raise MmlensError(f"unknown trigger {trigger!r}; use 'corner' or 'random'")
