"""A half-precision decoder computed in float32 one module at a time: fp32 results, the model unchanged after."""

from __future__ import annotations

import torch

import mmlens
from mmlens.models.decoder import decoder_in_float32, record_decoder_call
from mmlens.models.runtime import compute_in_float32, is_half
from tests.conftest import noise_image


def test_each_module_is_float32_only_while_it_runs_and_exactly_restored():
    torch.manual_seed(0)
    stack = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
    before = [p.clone() for p in stack.parameters()]
    seen = []
    stack[1].register_forward_pre_hook(lambda m, a: seen.append((stack[0].weight.dtype, a[0].dtype)))
    with compute_in_float32(list(stack)):
        out = stack(torch.ones(1, 4, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    assert seen == [(torch.bfloat16, torch.float32)]  # the first layer is back in bf16; its output went on in fp32
    assert all(torch.equal(a, b) and b.dtype == torch.bfloat16 for a, b in zip(before, stack.parameters()))
    assert stack(torch.ones(1, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16  # the hooks are gone
    assert is_half(stack) and not is_half(stack.float())


def test_a_bf16_decoder_in_float32_is_closer_to_fp32_than_bf16_itself():
    full = mmlens.load("tiny-llava")
    half = mmlens.load("tiny-llava", dtype=torch.bfloat16)
    with torch.no_grad():  # both hold the same bf16-rounded weights: only the arithmetic differs
        full.hf.load_state_dict({k: v.float() for k, v in half.hf.state_dict().items()})
    image = noise_image(32, 32, seed=1)
    reference = record_decoder_call(full, full.prepare("<image> what colour ?", [image]))
    call = record_decoder_call(half, half.prepare("<image> what colour ?", [image]))
    embeds = reference.embeds  # the same decoder input for all three
    with torch.no_grad():
        exact = reference.logits(embeds)
        rounded = call.logits(embeds.to(torch.bfloat16)).float()
        with decoder_in_float32(half):
            upcast = call.logits(embeds)
    assert upcast.dtype == torch.float32 and {p.dtype for p in half.hf.parameters()} == {torch.bfloat16}
    assert (upcast - exact).abs().max() < (rounded - exact).abs().max() / 10
