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
