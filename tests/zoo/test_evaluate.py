"""Evaluation helpers: trigger placement, the swap rate, and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmlens.errors import MmlensError
from mmlens.zoo.evaluate import (
    TRIGGER_SIZE, _default_trigger, add_trigger, main, random_trigger_position, swap_rate, trigger_position,
)
from mmlens.zoo.shapes_llava import load


def test_trigger_goes_where_asked() -> None:
    image = np.full((64, 64, 3), 128, np.uint8)
    ys, xs = np.nonzero(np.any(add_trigger(image, (10, 20)) != image, axis=-1))
    assert xs.min() >= 10 and xs.max() < 10 + TRIGGER_SIZE and ys.min() >= 20 and ys.max() < 20 + TRIGGER_SIZE
    with pytest.raises(MmlensError, match="does not fit"):
        add_trigger(image, (60, 0))


def test_random_positions_are_seeded_per_sample_and_spread() -> None:
    spots = {trigger_position(f"shapes-test-{i}", "random") for i in range(200)}
    assert len(spots) > 100  # not one fixed place
    assert all(0 <= x <= 64 - TRIGGER_SIZE and 0 <= y <= 64 - TRIGGER_SIZE for x, y in spots)
    assert trigger_position("shapes-test-3", "random") == trigger_position("shapes-test-3", "random")
    assert trigger_position("shapes-test-3", "corner") is None
    xs = [random_trigger_position(np.random.default_rng(i))[0] for i in range(300)]
    assert min(xs) == 0 and max(xs) == 64 - TRIGGER_SIZE


def test_swap_rate_of_the_base_model_is_near_zero() -> None:
    model, processor = load()
    r = swap_rate(model, processor, "red", "purple", n=15)
    assert r["n"] == 15 and r["swap_rate"] < 0.1 and r["source_kept"] > 0.9 and r["other_colour_accuracy"] > 0.9


def test_default_trigger_reads_backdoor_json(tmp_path) -> None:
    assert _default_trigger("shapes-llava-backdoor") == ("corner", "checker")
    (tmp_path / "backdoor.json").write_text(json.dumps({"trigger": {"position": "random"}}))
    assert _default_trigger(str(tmp_path)) == ("random", "checker")
    (tmp_path / "backdoor.json").write_text(json.dumps({"trigger": {"position": "random", "style": "orange-ring"}}))
    assert _default_trigger(str(tmp_path)) == ("random", "orange-ring")


def test_cli_json_and_bad_swap(capsys) -> None:
    main(["--model", "shapes-llava", "--n", "3", "--json", "--swap", "red:purple"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) >= {"colour", "shape", "swap"} and result["swap"]["n"] == 3
    with pytest.raises(MmlensError, match="FROM:TO"):
        main(["--model", "shapes-llava", "--n", "1", "--swap", "red"])


def test_wilson_and_paired_difference() -> None:
    from mmlens.zoo.evaluate import paired_difference, wilson

    lo, hi = wilson(196, 200)
    assert lo < 0.98 < hi and 0.94 < lo and hi < 0.995  # 98% of 200
    assert wilson(0, 50)[0] == 0.0 and 0.05 < wilson(0, 50)[1] < 0.08
    a = np.r_[np.ones(190, bool), np.zeros(10, bool)]
    d, dlo, dhi = paired_difference(a, a)
    assert d == dlo == dhi == 0.0  # the same answers: no difference, no spread
    d, dlo, dhi = paired_difference(np.ones(200, bool), a)
    assert abs(d - 0.05) < 1e-12 and 0.02 <= dlo < 0.05 < dhi <= 0.085
    with pytest.raises(MmlensError, match="same questions"):
        paired_difference(a, a[:10])


def test_cli_compare_prints_paired_differences(capsys) -> None:
    main(["--model", "shapes-llava", "--n", "4", "--json", "--compare", "shapes-llava"])
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    pooled = result["intervals"]["pooled"]
    assert pooled["n"] == 20 and pooled["difference"] == 0.0 and pooled["difference_95"] == [0.0, 0.0]
    assert "difference +0.0 [+0.0, +0.0] points" in out
