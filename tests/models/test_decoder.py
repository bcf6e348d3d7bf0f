"""Decoder replays: the same logits as the whole model, for every family, with the last MLP cut to the targets."""

import pytest
import torch

import mmlens
from mmlens.models.decoder import last_mlp_only_at, record_decoder_call

FAMILIES = ["tiny-llava", "tiny-llava-next", "tiny-qwen2-vl", "tiny-idefics3", "tiny-paligemma", "tiny-llama"]


def _batch(model: mmlens.Model, noise):
    if model.name == "tiny-llama":
        return model.prepare("a red circle on the left")
    return model.prepare("<image> what colour is the circle ?", [noise(64, 64)])


@pytest.mark.parametrize("name", FAMILIES)
def test_replayed_logits_at_positions_equal_the_whole_model(name, noise):
    model = mmlens.load(name)
    batch = _batch(model, noise)
    with torch.no_grad():
        full = model.forward(batch).logits
        call = record_decoder_call(model, batch)
        positions = [3, -1]
        replayed = call.logits(torch.cat([call.embeds, call.embeds]), positions=positions)
    expected = full[:, positions].repeat(2, 1, 1)
    torch.testing.assert_close(replayed, expected, rtol=1e-4, atol=1e-5)


def test_last_mlp_runs_only_at_the_positions_and_hooks_are_removed(tiny_llama):
    mlp = tiny_llama.decoder_layers[-1].mlp
    seen = []
    handle = mlp.register_forward_hook(lambda module, args, output: seen.append((args[0].shape[1], output)))
    try:
        with torch.no_grad(), last_mlp_only_at(tiny_llama, torch.tensor([1, -1])):
            tiny_llama.forward(tiny_llama.prepare("a red circle on the left"))
        computed_rows, output = seen[-1]
        assert computed_rows == 2  # the MLP saw two positions, not the whole sequence
        assert output.abs().sum() > 0
        with torch.no_grad():
            tiny_llama.forward(tiny_llama.prepare("a red circle on the left"))
        assert seen[-1][0] > 2  # outside the block it runs everywhere again
    finally:
        handle.remove()


@pytest.mark.parametrize("run_decoder", [True, False])
def test_a_decoder_called_with_positional_ids_records_embeddings(run_decoder):
    # GPT-2's decoder takes input_ids as its first positional argument; the record must hold embeddings.
    model = mmlens.load("tiny-gpt2")
    batch = model.prepare("a red circle on the left")
    call = record_decoder_call(model, batch, run_decoder=run_decoder)
    assert call.embeds.is_floating_point() and call.embeds.shape[:2] == batch.input_ids.shape
    expected = model.hf.get_input_embeddings()(batch.input_ids)
    torch.testing.assert_close(call.embeds, expected)
