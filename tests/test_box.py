"""One Box, (x0, y0, x1, y1) in pixels: parsing, JSON, masks, and the command line's --object-box."""

import json

import numpy as np
import pytest

import mmlens
from mmlens.box import Box
from mmlens.cli.inside_options import parse_box
from mmlens.errors import MmlensError


def test_box_round_trips_through_json():
    box = Box(10.0, 20.0, 51.5, 61.0)
    text = json.dumps({"box": box.to_json()})
    assert json.loads(text)["box"] == [10.0, 20.0, 51.5, 61.0]
    assert Box.from_json(json.loads(text)["box"]) == box
    assert Box.from_json({"x0": 10, "y0": 20, "x1": 51.5, "y1": 61}) == box
    assert json.loads(json.dumps(box)) == [10.0, 20.0, 51.5, 61.0]  # a named tuple: JSON as a list


def test_command_line_box_is_x0_y0_x1_y1():
    box = parse_box("10,20,51,61")
    assert box == Box(x0=10.0, y0=20.0, x1=51.0, y1=61.0)
    assert (box.width, box.height, box.centre) == (41.0, 41.0, (30.5, 40.5))
    assert Box.from_json(box.to_json()) == box
    for bad in ("1,2,3", "a,b,c,d", "5,0,1,4", "0,5,4,1"):
        with pytest.raises(MmlensError, match="--object-box"):
            parse_box(bad)


def test_mask_takes_the_pixels_whose_centres_lie_inside():
    mask = Box(1, 0, 3, 2).mask((3, 4))
    assert mask.tolist() == [[False, True, True, False], [False, True, True, False], [False] * 4]
    assert Box(0.6, 0, 1.4, 1).mask((1, 3)).tolist() == [[False, False, False]]  # no centre inside
    assert Box(1, 1, 2, 2).mask((3, 3), grow=1).all()


def test_boxes_must_be_ordered_x0_y0_x1_y1():
    assert not hasattr(Box, "from_layout")  # layout boxes are Boxes: nothing to convert
    with pytest.raises(MmlensError):
        Box.of((5, 0, 1, 4))


def test_one_box_everywhere():
    from mmlens.data.shapes import make_sample

    assert mmlens.Box is Box
    obj = make_sample("test", 0, "colour").objects[0]
    x0, y0, x1, y1 = obj.box
    assert isinstance(obj.box, Box) and np.array_equal(obj.box.mask(obj.mask.shape) & obj.mask, obj.mask)
    assert obj.mask[y0:y1, x0:x1].sum() == obj.area
