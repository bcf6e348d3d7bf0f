"""Colour-bar labels and titles: what each method's numbers are (mmlens.report.score_names)."""

from mmlens.attribution.api import METHODS
from mmlens.report.score_names import SCORE_NAMES, score_label, target_title


def test_every_method_has_a_name():
    assert set(SCORE_NAMES) == set(METHODS)


def test_methods_that_read_the_score_name_it_and_a_contrast_names_both_tokens():
    assert score_label("gradient_x_input", "red") == "gradient × input: score of 'red'"
    assert score_label("occlusion", "red", "purple") == "score drop when hidden: logit('red') − logit('purple')"
    assert score_label("gradient_x_input") == "gradient × input"  # no answer given: the bare name


def test_attention_maps_name_no_score_and_unknown_methods_get_a_plain_name():
    assert score_label("attention", "red", "purple") == "attention weight (mean over heads, layers)"
    assert score_label("rollout", "red") == "rolled-out attention"
    assert score_label("my_method", "red") == "my method score"


def test_titles_name_the_token_and_the_foil():
    assert target_title("red") == "'red'"
    assert target_title("red", "purple") == "'red' vs 'purple'"
