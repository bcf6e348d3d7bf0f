"""The contract between mmlens and transformers, checked on every tiny family.

Each convention that :mod:`mmlens.models.runtime` owns is checked against
transformers itself: replays equal full forwards, captured probabilities equal
``output_attentions``, knockout zeroes exactly the blocked keys, and batched
causal tracing ranks injection layers as one forward per condition does.
"""

from __future__ import annotations

import os

import pytest
import torch

import mmlens
from mmlens.causal import plan_injection, record_layers, trace
from mmlens.hooks import BlockKeys, capture, eager_attention, intervene
from mmlens.layout import Modality
from mmlens.models import runtime
from tests.conftest import noise_image

# The same contract on an accelerator: MMLENS_TEST_DEVICE=cuda python -m pytest tests/models/test_runtime.py
DEVICE = os.environ.get("MMLENS_TEST_DEVICE", "cpu")
FAMILIES = ["tiny-llava", "tiny-llava-next", "tiny-llava-onevision", "tiny-qwen2-vl", "tiny-qwen2.5-vl",
            "tiny-idefics3", "tiny-paligemma", "tiny-llama", "tiny-gpt2"]


PROMPT = "what is the colour of the shape ?"
FOIL = "what is the colour of the sky ?"  # the same length: a counterfactual for text-only models


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> tuple[mmlens.Model, mmlens.Batch]:
    model = mmlens.load(request.param, device=DEVICE)
    if model.adapter.multimodal:
        return model, model.prepare(f"<image> {PROMPT}", [noise_image(64, 80, seed=1)])
    return model, model.prepare(PROMPT)


def test_replay_resumed_at_any_layer_equals_a_full_forward(family):
    model, batch = family
    with torch.no_grad():
        full = model.forward(batch, use_cache=False).logits
        replay = record_layers(model, batch)
        seq = batch.input_ids.shape[1]
        for start in range(model.n_layers + 1):
            resumed = replay.logits(start, replay.inputs[start], positions=range(seq))
            torch.testing.assert_close(resumed, full, rtol=1e-4, atol=1e-5)
        offset = seq - 3
        if replay.suffix_allowed(offset):  # the recorded keys and values stand in for the prefix
            suffix = replay.logits(1, replay.inputs[1][:, offset:], offset=offset)
            torch.testing.assert_close(suffix, full[:, -1:], rtol=1e-4, atol=1e-5)
        else:
            assert model.adapter.family == "paligemma"  # its prefix attends both ways


def test_captured_probabilities_equal_output_attentions(family):
    model, batch = family
    sites = [f"lm.L{i}.attn_probs" for i in range(model.n_layers)]
    with torch.no_grad():
        with capture(model, sites) as captured:
            model.forward(batch, use_cache=False)
        with capture(model, sites, query=-1) as row:
            model.forward(batch, use_cache=False)
        with eager_attention(model):
            reference = model.forward(batch, use_cache=False, output_attentions=True).attentions
    assert runtime.current_attention(model.hf) == "sdpa"  # switched back after each block
    assert len(reference) == model.n_layers
    for site, expected in zip(sites, reference):
        torch.testing.assert_close(captured[site], expected)
        torch.testing.assert_close(row[site], expected[:, :, -1])


def test_knockout_zeroes_exactly_the_blocked_keys_and_changes_the_output(family):
    model, batch = family
    modality = batch.layout.modality
    modality = modality.to(model.device)
    blocked = modality == int(Modality.IMAGE) if model.adapter.multimodal else torch.zeros_like(modality, dtype=bool)
    if not model.adapter.multimodal:
        blocked[:, : modality.shape[1] // 2] = True
    edits = {f"lm.L{i}.attn_probs": BlockKeys(blocked, query=-1) for i in range(model.n_layers)}
    sites = [f"lm.L{i}.attn_probs" for i in range(model.n_layers)]
    with torch.no_grad():
        plain = model.forward(batch, use_cache=False).logits[:, -1]
        with intervene(model, edits), capture(model, sites, query=-1) as captured:
            knocked = model.forward(batch, use_cache=False).logits[:, -1]
    for site in sites:
        probs = captured[site]  # (batch, heads, keys)
        assert torch.all(probs[blocked[:, None, :].expand_as(probs)] == 0)
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    assert not torch.allclose(knocked, plain)


def test_injection_plan_ranks_layers_as_one_forward_per_condition(family):
    model, batch = family
    last = torch.zeros_like(batch.input_ids, dtype=torch.bool, device="cpu")
    last[:, -1] = True
    groups = {"last": last, "all": torch.ones_like(last)}
    corrupt = "embeddings" if model.adapter.multimodal else model.prepare(FOIL)
    kwargs = dict(corrupt=corrupt, components=["attn", "mlp"], noise=3.0)
    batched = trace(model, batch, groups, **kwargs)
    single = trace(model, batch, groups, batched=False, **kwargs)
    for component in ("attn", "mlp"):
        torch.testing.assert_close(batched.p_patched[component], single.p_patched[component], rtol=1e-4, atol=1e-6)
    n = model.n_layers
    plan, reference = plan_injection(batched, sources=n, targets=n), plan_injection(single, sources=n, targets=n)
    for component in ("attn", "mlp"):
        # The same ranking. (Rates divide by a small clean-corrupt gap on random weights, so their
        # values are compared through p_patched above, not here.)
        assert list(plan.sources[component]) == list(reference.sources[component])




def test_attention_switch_restores_every_sub_model():
    model = mmlens.load("tiny-llava", device=DEVICE)
    before = runtime._implementations(model.hf.config)
    with eager_attention(model):
        inside = runtime._implementations(model.hf.config)
    assert runtime._all_equal(inside, "eager")
    assert runtime._implementations(model.hf.config) == before


def _towers(model: mmlens.Model) -> list[str]:
    """The towers whose attention modules hand back probabilities (Qwen2-VL's vision attention drops them)."""
    vision = model.adapter.multimodal and model.adapter.family not in ("qwen2_vl", "qwen2_5_vl")
    return ["lm", "vision"] if vision else ["lm"]


def test_rows_through_the_mmlens_attention_equal_eager_rows(family):
    model, batch = family
    for tower in _towers(model):
        count = model.n_layers if tower == "lm" else model.n_vision_layers
        sites = [f"{tower}.L{i}.attn_probs" for i in range(count)]
        with torch.no_grad():
            with eager_attention(model), capture(model, sites) as eager:
                model.forward(batch, use_cache=False)
            queries = eager[sites[0]].shape[-2]
            rows = sorted({0, queries // 2, queries - 1})
            with capture(model, sites, query=rows) as picked, capture(model, sites, query=-2, mean_heads=True) as mean:
                model.forward(batch, use_cache=False)
        assert runtime.current_attention(model.hf) == "sdpa"
        for site in sites:
            torch.testing.assert_close(picked[site], eager[site][:, :, rows], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(mean[site], eager[site][:, :, -2].mean(1), rtol=1e-5, atol=1e-6)


def test_knockout_during_generation_blocks_the_newest_token(family):
    model, batch = family
    seq = batch.input_ids.shape[1]
    blocked = torch.zeros(batch.input_ids.shape[0], seq, dtype=torch.bool)
    blocked[:, : seq // 2] = True
    with torch.no_grad(), intervene(model, {"lm.L0.attn_probs": BlockKeys(blocked)}), \
            capture(model, "lm.L0.attn_probs", query=-1) as captured:
        model.generate(batch, max_new_tokens=2)
    for step in captured.steps("lm.L0.attn_probs"):  # (batch, heads, keys); the key axis grows
        assert torch.all(step[..., : seq // 2] == 0)
        torch.testing.assert_close(step.sum(-1), torch.ones_like(step.sum(-1)))


class _Shapes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the shape of every floating tensor an operation creates."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                self.shapes.append(tuple(tensor.shape))
        return out


def test_only_the_asked_rows_and_layers_are_computed():
    model = mmlens.load("tiny-llava", device=DEVICE)
    batch = model.prepare("<image> " + " ".join(["what is the colour of the shape ?"] * 40), [noise_image(64, 80)])
    seq = batch.input_ids.shape[1]
    assert seq > 300
    returned: dict[str, tuple] = {}
    modules = {f"lm.L{i}": layer.self_attn for i, layer in enumerate(model.decoder_layers)}
    modules.update({f"vision.L{i}": layer.self_attn for i, layer in enumerate(model.vision_layers)})
    handles = [m.register_forward_hook(lambda m, a, out, name=name: returned.__setitem__(
        name, None if out[1] is None else tuple(out[1].shape))) for name, m in modules.items()]
    try:
        with torch.no_grad(), capture(model, "lm.L1.attn_probs", query=-1) as captured, _Shapes() as shapes:
            model.forward(batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    heads = model.hf.config.text_config.num_attention_heads
    assert captured["lm.L1.attn_probs"].shape == (1, heads, seq)
    assert returned["lm.L1"] == (1, heads, 1, seq)
    assert all(shape is None for name, shape in returned.items() if name != "lm.L1")  # SDPA everywhere else
    with torch.no_grad(), _Shapes() as bare:  # what the SDPA kernel itself makes (its math fallback, on some devices)
        model.forward(batch, use_cache=False)
    with torch.no_grad(), eager_attention(model), _Shapes() as eager:  # the check would see eager's maps
        model.forward(batch, use_cache=False)

    def square(seen: _Shapes) -> list[tuple[int, ...]]:
        return sorted(shape for shape in seen.shapes if len(shape) >= 2 and shape[-2:] == (seq, seq))

    assert square(shapes) == square(bare), f"mmlens made (..., {seq}, {seq}) tensors beyond the kernel's own"
    assert len(square(eager)) > len(square(bare))
