"""The decoder graph: same logits as the model, the right edges, one line for other decoders."""

import dataclasses

import pytest
import torch

import mmlens
from mmlens.circuits import DecoderGraph
from mmlens.errors import MmlensError
from mmlens.models.decoder import record_decoder_call


def test_graph_logits_match_the_model_with_left_padding(tiny_llama):
    batch = tiny_llama.prepare(["a red circle", "a blue square is on the left"])
    call = record_decoder_call(tiny_llama, batch)
    graph = DecoderGraph(tiny_llama)
    with torch.no_grad():
        run = graph.run(call)
        expected = call.logits(call.embeds, positions=[-1])[:, 0]
    assert torch.allclose(run.logits, expected, atol=1e-4)
    # The residual stream is the sum of the node outputs.
    assert torch.allclose(run.outputs.sum(0), run.final, atol=1e-5)


def test_graph_on_a_multimodal_model(tiny_llava, noise):
    batch = tiny_llava.prepare("<image> what colour is the circle ?", [noise(32, 32)])
    call = record_decoder_call(tiny_llava, batch)
    graph = DecoderGraph(tiny_llava)
    with torch.no_grad():
        graph.check(call, graph.run(call))  # raises if the logits differ


@pytest.mark.parametrize("name", ["tiny-idefics3", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-paligemma",
                                  "tiny-llava-next", "tiny-llava-onevision"])
def test_graph_logits_match_other_families(name, noise):
    """Idefics3 (a LLaMA text model), Qwen2-VL and Qwen2.5-VL (q/k/v biases, M-RoPE positions), PaliGemma
    (``1 + w`` norms, a bidirectional image and prompt prefix), left-padded."""
    model = mmlens.load(name)
    batch = model.prepare(["<image> what colour is the circle ?", "<image> a big red circle is left of a blue square"],
                          [[noise(64, 64)], [noise(64, 64, seed=1)]])
    call = record_decoder_call(model, batch)
    graph = DecoderGraph(model)
    with torch.no_grad():
        run = graph.run(call)
        expected = call.logits(call.embeds, positions=[-1])[:, 0]
    error = float((run.logits - expected).abs().max() / expected.abs().max())
    assert error < 1e-5
    positions = call.kwargs.get("position_ids")
    if name.startswith("tiny-qwen"):
        # M-RoPE: three position rows that differ over the image; the text positions alone would be measurably wrong.
        assert positions.ndim == 3 and bool((positions[0] != positions[1]).any())
        text_only = dataclasses.replace(call, kwargs={**call.kwargs, "position_ids": positions[:1].expand(3, -1, -1)})
        with torch.no_grad():
            wrong = graph.run(text_only).logits
        assert float((wrong - expected).abs().max() / expected.abs().max()) > 10 * error
    if name == "tiny-paligemma":
        # The model's own 4-D mask attends both ways over the prefix; a causal one would be measurably wrong.
        mask = call.kwargs["attention_mask"]
        seq = mask.shape[-1]
        assert mask.ndim == 4 and bool((mask & ~torch.ones(seq, seq, dtype=torch.bool).tril()).any())
        causal = dataclasses.replace(call, kwargs={**call.kwargs, "attention_mask": mask.tril()})
        with torch.no_grad():
            wrong = graph.run(causal).logits
        assert float((wrong - expected).abs().max() / expected.abs().max()) > 100 * error


def test_nodes_readers_and_edges(tiny_llama):
    graph = DecoderGraph(tiny_llama)
    layers, heads = graph.n_layers, graph.n_heads
    assert graph.nodes[0] == "embed" and graph.readers[-1] == "logits"
    assert len(graph.nodes) == 1 + layers * (heads + 1)
    names = graph.edge_names()
    # A head reads the layers below, never a head of its own layer; an MLP reads its own layer's heads.
    assert "L0.H0 -> L1.H0" in names and "L1.H0 -> L1.H1" not in names and "L1.H0 -> L1.MLP" in names
    assert "L1.MLP -> logits" in names and "embed -> L0.H0" in names
    expected = sum(heads * (1 + l * (heads + 1)) + 1 + l * (heads + 1) + heads for l in range(layers))
    assert len(graph.edges) == expected + len(graph.nodes)


def test_frozen_run_of_itself_is_the_same_run(tiny_llama):
    call = record_decoder_call(tiny_llama, tiny_llama.prepare("a red circle"))
    graph = DecoderGraph(tiny_llama)
    with torch.no_grad():
        run = graph.run(call)
        again = graph.run(call, frozen=run)
    assert torch.allclose(run.logits, again.logits, atol=1e-5)


def test_other_decoders_get_one_line():
    with pytest.raises(MmlensError) as error:
        DecoderGraph(mmlens.load("tiny-gpt2"))
    assert "LLaMA-style" in str(error.value) and "\n" not in str(error.value)
