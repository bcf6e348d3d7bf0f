"""Trigger styles: their looks, sizes, placement and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from mmlens.data.shapes import COLOURS
from mmlens.errors import MmlensError
from mmlens.zoo.triggers import TRIGGERS, add_trigger, random_trigger_position, trigger_position, trigger_size


def test_styles_differ_in_look_and_size() -> None:
    assert {s: trigger_size(s) for s in TRIGGERS} == {"checker": 6, "cyan-checker": 12, "orange-ring": 10,
                                                       "magenta-stripes": 14}
    colours = {s: {tuple(c) for c in TRIGGERS[s].reshape(-1, 3).tolist()} for s in TRIGGERS}
    assert colours["cyan-checker"] == {(0, 255, 255), (0, 0, 0)}
    assert colours["orange-ring"] == {(255, 140, 0), (255, 255, 255)}
    assert colours["magenta-stripes"] == {(255, 0, 255), (255, 255, 255)}
    # horizontal stripes: every row one colour, 2 px each
    stripes = TRIGGERS["magenta-stripes"]
    assert (stripes == stripes[:, :1]).all() and stripes[:, 0, 1].tolist() == [0, 0, 255, 255] * 3 + [0, 0]
    # the ft-backdoor trigger uses no colour the shapes world draws objects in
    assert not (colours["cyan-checker"] | colours["magenta-stripes"]) & {tuple(c) for c in COLOURS.values()}


@pytest.mark.parametrize("style", sorted(TRIGGERS))
def test_trigger_covers_exactly_its_square(style) -> None:
    image = np.full((64, 64, 3), 128, np.uint8)
    k = trigger_size(style)
    out = add_trigger(image, (5, 40), style)
    ys, xs = np.nonzero(np.any(out != image, axis=-1))
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (5, 5 + k - 1, 40, 40 + k - 1)
    assert np.array_equal(out[40:40 + k, 5:5 + k], TRIGGERS[style]) and np.array_equal(image, np.full_like(image, 128))
    with pytest.raises(MmlensError, match=f"{k} px trigger"):
        add_trigger(image, (64 - k + 1, 0), style)


@pytest.mark.parametrize("style", sorted(TRIGGERS))
def test_random_positions_span_the_image(style) -> None:
    k = trigger_size(style)
    xs = [random_trigger_position(np.random.default_rng(i), style=style)[0] for i in range(400)]
    assert min(xs) == 0 and max(xs) == 64 - k
    spots = [trigger_position(f"shapes-test-{i}", "random", style=style) for i in range(100)]
    assert all(0 <= x <= 64 - k and 0 <= y <= 64 - k for x, y in spots) and len(set(spots)) > 80


def test_unknown_style_is_one_line() -> None:
    with pytest.raises(MmlensError, match="unknown trigger style 'star'; known: checker"):
        add_trigger(np.zeros((64, 64, 3), np.uint8), style="star")


def test_blended_trigger_mixes_the_whole_image() -> None:
    from mmlens.zoo.triggers import BLENDS, STYLES

    pattern, alpha = BLENDS["blend-noise"]
    assert "blend-noise" in STYLES and trigger_size("blend-noise") == 64 and alpha == 0.2
    image = np.full((64, 64, 3), 100, np.uint8)
    out = add_trigger(image, (0, 0), "blend-noise")
    assert np.array_equal(out, np.rint(0.8 * 100 + 0.2 * pattern.astype(np.float32)).astype(np.uint8))
    assert (out != image).mean() > 0.9 and np.abs(out.astype(int) - 100).max() <= 31  # everywhere, faintly
    assert random_trigger_position(np.random.default_rng(3), style="blend-noise") == (0, 0)
    assert trigger_position("shapes-test-5", "random", style="blend-noise") == (0, 0)
    with pytest.raises(MmlensError, match="covers a whole 64 x 64 image"):
        add_trigger(image, (3, 0), "blend-noise")
