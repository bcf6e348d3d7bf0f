"""CD-T: the parts add up, it is exact where the model is linear, and it is patching under frozen attention."""

import pytest
import torch

import mmlens

from mmlens.circuits import DecoderGraph, decompose, path_patch
from mmlens.errors import MmlensError
from mmlens.models.decoder import record_decoder_call

PROMPT = "a red circle is on the left"


@pytest.fixture(scope="module")
def batch(tiny_llama):
    return tiny_llama.prepare(PROMPT)


def test_source_and_its_complement_add_up_to_the_logit(tiny_llama, batch):
    seq = batch.input_ids.shape[1]
    source = [2, 3]
    rest = [p for p in range(seq) if p not in source]
    one = decompose(tiny_llama, batch, source, reference="zero", activation="shapley")
    other = decompose(tiny_llama, batch, rest, reference="zero", activation="shapley")
    # The Shapley split is symmetric: two complementary sources share the whole logit (no biases in LLaMA).
    assert one.source_logit + other.source_logit == pytest.approx(one.logit, abs=1e-4)
    assert abs(one.source_logit) > 1e-3 and abs(other.source_logit) > 1e-3  # neither side is trivially zero


def test_direct_shares_add_up_to_the_source_logit(tiny_llama, batch):
    result = decompose(tiny_llama, batch, [1, 2, 3])
    assert result.embed_source + float(result.direct_source.sum()) == pytest.approx(result.source_logit, abs=1e-4)


def test_everything_as_source_leaves_no_rest(tiny_llama, batch):
    seq = batch.input_ids.shape[1]
    result = decompose(tiny_llama, batch, list(range(seq)), reference="zero")
    assert result.source_logit == pytest.approx(result.logit, abs=1e-4)
    assert result.direct_rest.abs().max() < 1e-4
    assert result.total_source.abs().max() > 1e-3


def test_exact_on_a_linearised_model(linear_llama):
    batch = linear_llama.prepare(PROMPT)
    result = decompose(linear_llama, batch, [2, 3], reference="zero")
    # The model's own forward (not the graph) with the source embeddings zeroed.
    call = record_decoder_call(linear_llama, batch)
    zeroed = call.embeds.clone()
    zeroed[0, [2, 3]] = 0
    with torch.no_grad():
        logits = call.logits(torch.cat([call.embeds, zeroed]), positions=[-1])[:, 0]
    effect = float(logits[0, result.answer_id] - logits[1, result.answer_id])
    scale = abs(effect)
    assert scale > 0
    assert result.source_logit == pytest.approx(effect, rel=1e-3, abs=1e-3 * scale)
    patched = path_patch(linear_llama, batch, [2, 3], reference="zero")
    assert torch.allclose(result.total_source, patched.effects, atol=1e-3 * scale)


def test_cdt_is_path_patching_with_frozen_attention_and_norms(tiny_llama, batch):
    graph = DecoderGraph(tiny_llama)
    result = decompose(tiny_llama, batch, [2, 3], graph=graph)
    frozen = path_patch(tiny_llama, batch, [2, 3], frozen=True, graph=graph)
    real = path_patch(tiny_llama, batch, [2, 3], graph=graph)
    assert torch.allclose(result.total_source, frozen.effects, atol=1e-4)
    assert not torch.allclose(frozen.effects, real.effects, atol=1e-4)  # freezing is an approximation


def test_marginal_norms_are_path_patching_with_frozen_attention_only(tiny_llama, batch):
    graph = DecoderGraph(tiny_llama)
    result = decompose(tiny_llama, batch, [2, 3], norms="marginal", graph=graph)
    probs = path_patch(tiny_llama, batch, [2, 3], frozen="probs", graph=graph)
    frozen = decompose(tiny_llama, batch, [2, 3], graph=graph)
    assert torch.allclose(result.total_source, probs.effects, atol=1e-4)
    assert result.source_logit == pytest.approx(probs.total, abs=1e-4)
    assert not torch.allclose(result.total_source, frozen.total_source, atol=1e-3)  # the norms do react
    assert result.to_json()["norms"] == "marginal"


@pytest.mark.parametrize("activation", ["marginal", "shapley"])
def test_marginal_norms_keep_source_plus_rest_equal_to_the_full_run(uniform_llama, activation):
    """With input-independent attention, the rest is the model's own run with the source replaced: s + r = full."""
    batch = uniform_llama.prepare(PROMPT)
    result = decompose(uniform_llama, batch, [5, 6], reference="zero", norms="marginal", activation=activation)
    call = record_decoder_call(uniform_llama, batch)
    zeroed = call.embeds.clone()
    zeroed[0, [5, 6]] = 0
    with torch.no_grad():
        logits = call.logits(torch.cat([call.embeds, zeroed]), positions=[-1])[:, 0]
    rest = result.logit - result.source_logit
    assert result.logit == pytest.approx(float(logits[0, result.answer_id]), abs=1e-4)
    if activation == "marginal":  # the rest is exactly the replaced run
        assert rest == pytest.approx(float(logits[1, result.answer_id]), abs=1e-4)
    assert abs(result.source_logit) > 1e-3


def test_replaced_rest_is_exact_where_no_attention_is_downstream(tiny_llama, batch):
    """With the rest = the run with the source replaced, source + rest = full at every node; the components with
    no attention downstream (the last layer) get exactly their path-patching effect."""
    graph = DecoderGraph(tiny_llama)
    result = decompose(tiny_llama, batch, [2, 3], norms="marginal", rest="replaced", graph=graph)
    real = path_patch(tiny_llama, batch, [2, 3], graph=graph)
    propagated = decompose(tiny_llama, batch, [2, 3], norms="marginal", graph=graph)
    assert result.source_logit == pytest.approx(real.total, abs=1e-5)
    last = graph.n_heads + 1  # the last layer's heads and MLP
    assert torch.allclose(result.total_source[-last:], real.effects[-last:], atol=1e-5)
    assert not torch.allclose(propagated.total_source[-last:], real.effects[-last:], atol=1e-5)
    assert result.to_json()["rest"] == "replaced"


@pytest.mark.parametrize("name", ["tiny-idefics3", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-paligemma"])
def test_cdt_is_frozen_path_patching_on_other_families(name, noise):
    model = mmlens.load(name)
    batch = model.prepare("<image> what colour is the circle ?", [noise(64, 64)])
    images = batch.layout.image_positions(0).tolist()
    graph = DecoderGraph(model)
    for norms, frozen in (("frozen", True), ("marginal", "probs")):
        result = decompose(model, batch, images, norms=norms, graph=graph)
        patched = path_patch(model, batch, images, frozen=frozen, graph=graph)
        scale = float(patched.effects.abs().max())
        assert scale > 1e-4
        assert torch.allclose(result.total_source, patched.effects, atol=1e-4 * scale + 1e-6)


def test_image_tokens_as_source_and_the_ranking(tiny_llava, noise):
    batch = tiny_llava.prepare("<image> what colour is the circle ?", [noise(32, 32)])
    images = batch.layout.image_positions(0).tolist()
    result = decompose(tiny_llava, batch, images, answer="red", foil="blue")
    ranked = [score for _, score in result.ranking()]
    assert ranked == sorted(ranked, key=abs, reverse=True) and len(ranked) == len(result.components)
    signed = [score for _, score in result.ranking(signed=True)]
    assert signed == sorted(ranked, reverse=True)
    assert result.source_positions == images and result.foil_id is not None
    assert result.to_json()["reference"] == "mean"


@pytest.mark.parametrize("kwargs, words", [({"source_positions": [99]}, "source positions"),
                                           ({"source_positions": [1, 1]}, "distinct"),
                                           ({"source_positions": [1], "reference": "noise"}, "reference"),
                                           ({"source_positions": [1], "activation": "relu"}, "activation"),
                                           ({"source_positions": [1], "norms": "layer"}, "norm rule"),
                                           ({"source_positions": [1], "rest": "zero"}, "rest")])
def test_bad_input_is_one_line(tiny_llama, batch, kwargs, words):
    with pytest.raises(MmlensError) as error:
        decompose(tiny_llama, batch, **kwargs)
    assert words in str(error.value) and "\n" not in str(error.value)
