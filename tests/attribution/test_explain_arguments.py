"""explain(): wrong arguments are one clear line, never a traceback or a silent blank map."""

import numpy as np
import pytest

import mmlens
from mmlens.attribution.base import layer_indices
from mmlens.attribution.logit_lens_map import logit_lens_msea
from mmlens.readout import build_targets
from tests.conftest import noise_image

PROMPT = "<image> what colour ?"


def refused(match: str, call) -> str:
    with pytest.raises(mmlens.MmlensError, match=match) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.fixture(scope="module")
def explained(tiny_llava):
    return mmlens.explain(tiny_llava, PROMPT, [noise_image(64, 64)], methods=["attention"], answer="red")


@pytest.mark.parametrize("method", ["occlusion", "rise", "grad_eclip", "mmel"])
def test_image_only_methods_refuse_a_text_only_prompt_by_name(tiny_llava, method):
    message = refused("no images", lambda: mmlens.explain(tiny_llava, "what colour ?", None, methods=[method],
                                                          answer="red"))
    assert message.startswith(method)  # mmel is named as mmel, not as the grad_eclip it builds on


def test_image_only_methods_refuse_before_other_methods_run(tiny_llava):
    ran = []
    refused("occlusion", lambda: mmlens.explain(tiny_llava, "what colour ?", None, methods=["attention", "occlusion"],
                                                answer="red", progress=ran.append))
    assert ran == []


def test_occlusion_called_directly_refuses_a_text_only_batch(tiny_llava):
    from mmlens.attribution.occlusion import occlusion

    targets = build_targets(tiny_llava, tiny_llava.prepare("what colour ?"), answer="red")
    refused("occlusion explains image tokens", lambda: occlusion(tiny_llava, targets))


def test_a_text_only_model_given_an_image_is_named(tiny_llama):
    message = refused("text-only", lambda: mmlens.explain(tiny_llama, PROMPT, [noise_image(64, 64)],
                                                          methods=["attention"], answer="red"))
    assert message.startswith(f"{tiny_llama.name} is")


def test_a_foil_equal_to_the_answer_is_refused(tiny_llava):
    refused("foil is the answer itself", lambda: mmlens.explain(tiny_llava, PROMPT, [noise_image(64, 64)],
                                                                methods=["attention"], answer="red", foil="red"))


def test_one_method_name_and_one_image_need_no_list(tiny_llava, tmp_path):
    path = tmp_path / "noise.png"
    noise_image(64, 64).save(path)
    explanation = mmlens.explain(tiny_llava, PROMPT, path, methods="attention", answer="red")
    assert explanation.methods == ["attention"]
    assert [m.shape for m in explanation.heatmaps("attention")] == [(64, 64)]
    array = np.asarray(noise_image(64, 64))
    assert mmlens.explain(tiny_llava, PROMPT, array, methods="attention", answer="red").methods == ["attention"]


@pytest.mark.parametrize("options, match", [
    ({"rsie": {"masks": 3}}, "'rsie', which is no method; choose from attention, "),
    ({"integrated_gradients": {"stepz": 4}}, "integrated_gradients takes no option 'stepz'"),  # checked, though not run
    ({"rise": 5}, "must be a mapping"),
    ({"rise": {"maks": 3}}, "rise takes no option 'maks'; its options: masks, grid"),
    ({"rise": {"masks": 0}}, "RISE masks must be a whole number of at least 1"),
    (["rise"], "options map method names"),
])
def test_options_are_checked_before_the_model_runs(tiny_llava, options, match):
    refused(match, lambda: mmlens.explain(tiny_llava, PROMPT, [noise_image(64, 64)], methods=["rise"],
                                          answer="red", options=options))


def test_options_of_methods_not_run_are_kept_aside(tiny_llava):
    shared = {"rise": {"masks": 8}, "integrated_gradients": {"steps": 4}}  # one mapping for several calls
    explanation = mmlens.explain(tiny_llava, PROMPT, [noise_image(64, 64)], methods=["rise"], answer="red",
                                 options=shared)
    assert explanation.methods == ["rise"]


def test_unknown_option_names_the_methods_options(tiny_llava):
    message = refused("stepz", lambda: mmlens.explain(tiny_llava, PROMPT, [noise_image(64, 64)],
                                                      methods=["integrated_gradients"], answer="red",
                                                      options={"integrated_gradients": {"stepz": 4}}))
    assert "steps" in message


def test_results_name_what_they_hold(explained):
    refused("no 'occlusion' scores in this explanation; it holds attention", lambda: explained.heatmaps("occlusion"))
    refused("no answer token 5: the answer has 1 token", lambda: explained.heatmaps("attention", target=5))
    refused("no answer token 5", lambda: explained.prompt_scores("attention", 5))
    refused("no answer token", lambda: explained.image_share("attention", -2))
    assert explained.prompt_scores("attention", -1) == explained.prompt_scores("attention", 0)


def test_attention_layers_take_an_index_a_list_or_a_slice(tiny_llava, explained):
    n = tiny_llava.n_layers
    assert layer_indices(tiny_llava, None, "attention") == list(range(n))
    assert layer_indices(tiny_llava, -1, "attention") == [n - 1]
    assert layer_indices(tiny_llava, [0, -1], "attention") == [0, n - 1]
    assert layer_indices(tiny_llava, slice(1, None), "attention") == list(range(1, n))
    refused(f"selects no layer; {tiny_llava.name} has {n} decoder layers",
            lambda: layer_indices(tiny_llava, slice(9, 12), "attention"))
    refused("layer 9 is out of range", lambda: layer_indices(tiny_llava, 9, "attention"))
    refused("layers is a layer index", lambda: layer_indices(tiny_llava, "all", "attention"))
    one = mmlens.explain(tiny_llava, PROMPT, explained.images, methods=["attention"], answer="red",
                         options={"attention": {"layers": [0]}})
    assert one.extras["attention"]["per_layer"].shape[1] == 1


@pytest.mark.parametrize("scales, match", [((), "one or more positive numbers"), ((0,), "positive"),
                                           ((-1,), "positive"), ((0.01,), "smaller than one 8-pixel patch"),
                                           ("big", "one or more positive numbers")])
def test_msea_scales_that_give_blank_maps_are_refused(tiny_llava, scales, match):
    targets = build_targets(tiny_llava, tiny_llava.prepare(PROMPT, [noise_image(64, 64)]), answer="red")
    message = refused(match, lambda: logit_lens_msea(tiny_llava, targets, scales=scales))
    if scales == (0.01,):
        assert "from 0.125" in message  # the valid range: one patch of 8 pixels on a 64-pixel side


def test_the_default_methods_skip_image_only_ones_without_an_image(tiny_llama, caplog):
    from mmlens.attribution.api import DEFAULT_METHODS

    explanation = mmlens.explain(tiny_llama, "a red circle", answer="red",
                                 options={"occlusion": {"window": 2}, "attention": {"layers": 0}})
    assert explanation.methods == [m for m in DEFAULT_METHODS if m not in ("occlusion", "rise")]
    assert "occlusion skipped" in caplog.text
