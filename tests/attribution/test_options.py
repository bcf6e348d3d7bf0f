"""What explain accepts as methods and per-method options (mmlens.attribution.options), without a model."""

import pytest

from mmlens.attribution.options import accepted, method_list, method_options
from mmlens.errors import MmlensError


def _rise(model, targets, masks=256, grid=4):
    return None


def _ig(model, targets, steps=32, *extra, **more):
    return None


KNOWN = {"rise": _rise, "integrated_gradients": _ig}


def test_one_name_is_a_list_of_one_and_unknown_names_are_refused():
    assert method_list("rise", KNOWN) == ["rise"]
    assert method_list(("rise", "integrated_gradients"), KNOWN) == ["rise", "integrated_gradients"]
    with pytest.raises(MmlensError, match="unknown method\\(s\\) 'rsie'"):
        method_list(["rsie"], KNOWN)


def test_accepted_options_are_the_keywords_after_model_and_targets():
    assert accepted(_rise) == ["masks", "grid"]
    assert accepted(_ig) == ["steps"]  # *args and **kwargs are no option names


def test_options_of_methods_not_run_are_checked_then_put_aside():
    shared = {"rise": {"masks": 8}, "integrated_gradients": {"steps": 4}}
    assert method_options(shared, ["rise"], KNOWN) == {"rise": {"masks": 8}}
    assert method_options(None, ["rise"], KNOWN) == {}
    with pytest.raises(MmlensError, match="integrated_gradients takes no option 'stepz'; its options: steps"):
        method_options({"integrated_gradients": {"stepz": 4}}, ["rise"], KNOWN)
    with pytest.raises(MmlensError, match="'rsie', which is no method; choose from rise, integrated_gradients"):
        method_options({"rsie": {}}, ["rise"], KNOWN)
    with pytest.raises(MmlensError, match="the options of rise must be a mapping"):
        method_options({"rise": 5}, ["rise"], KNOWN)
    with pytest.raises(MmlensError, match="options map method names to their options"):
        method_options(["rise"], ["rise"], KNOWN)
