"""One-line choice checks shared by every module that takes a named option."""

import pytest

from mmlens.errors import MmlensError, check_choice, check_choices


def test_a_known_choice_comes_back_and_an_unknown_one_names_the_choices() -> None:
    assert check_choice("mean", ("zero", "mean"), "ablation") == "mean"
    with pytest.raises(MmlensError, match=r"^unknown ablation 'half'; choose one of zero, mean$"):
        check_choice("half", ("zero", "mean"), "ablation")


def test_a_list_names_every_stray_and_may_be_required_non_empty() -> None:
    assert check_choices(("resid", "attn"), ["resid", "attn", "mlp"], "component") == ["resid", "attn"]
    assert check_choices([], ["resid"], "component") == []
    with pytest.raises(MmlensError, match=r"unknown component\(s\) 'x', 'y'; choose from resid$"):
        check_choices(["resid", "x", "y"], ["resid"], "component")
    with pytest.raises(MmlensError, match=r"unknown component\(s\) \(none\)"):
        check_choices([], ["resid"], "component", at_least_one=True)


def test_an_enum_choice_names_the_values_the_enum_does_not() -> None:
    from mmlens.readout import Baseline
    from mmlens.errors import check_enum

    assert check_enum("zeros", Baseline, "baseline") is Baseline.ZEROS
    with pytest.raises(MmlensError, match=r"^unknown baseline 'grey'; choose one of mean, zeros, blur, mean_colour$"):
        check_enum("grey", Baseline, "baseline")


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3", None])
def test_a_count_is_a_whole_number_of_at_least_the_minimum(value) -> None:
    import numpy as np
    from mmlens.errors import check_count

    assert check_count(3, "window") == 3 and check_count(np.int64(2), "window") == 2
    with pytest.raises(MmlensError, match="window must be a whole number of at least 1"):
        check_count(value, "window")
