"""A model dispatched by accelerate (layers on the CPU, on disk and on meta) gives every method the same results.

Accelerate's hooks move a module's inputs to its execution device and load
offloaded weights just before its forward; mmlens' own hooks must compose with
them (its input edits run first, on the incoming device) and must never read a
weight outside a forward, where an offloaded one is on the meta device.
"""

from __future__ import annotations

import pytest
import torch

import mmlens
from mmlens.causal import trace
from mmlens.data.shapes import make_dataset, make_sample
from mmlens.layout import Modality
from mmlens.lens import knockout, logit_lens
from mmlens.models import runtime
from mmlens.neurons import modality_scores

import accelerate  # noqa: E402  (a dev dependency: a missing one fails, never skips)

METHODS = ["attention", "rollout", "relevancy", "gradient_x_input", "integrated_gradients", "occlusion"]


def _device_map(model: mmlens.Model, placed: dict[str, str]) -> dict[str, str]:
    """A complete device map: ``placed`` modules where asked, every other module on the CPU."""
    full: dict[str, str] = {}

    def walk(module: torch.nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if path in placed:
                full[path] = placed[path]
            elif any(key.startswith(path + ".") for key in placed):
                walk(child, path)
            else:
                full[path] = "cpu"

    walk(model.hf, "")
    return full


@pytest.fixture(scope="module", params=["tiny-llava", "tiny-qwen2-vl"])
def pair(request, tmp_path_factory):
    """The undispatched model and a dispatched copy: layer 0 on disk, layer 1 offloaded to meta (CPU weights map)."""
    name = request.param
    reference = mmlens.load(name)
    dispatched = mmlens.load(name)
    layers = next(path for path, module in dispatched.hf.named_modules() if module is dispatched.decoder_layers)
    placed = {f"{layers}.0": "disk", f"{layers}.1": "meta", dispatched.adapter.unembed: "disk"}
    device_map = _device_map(dispatched, {k: ("cpu" if v == "meta" else v) for k, v in placed.items()})
    offload = tmp_path_factory.mktemp("offload")
    # "meta": the weights stay in a CPU state dict and the module holds meta tensors between calls.
    cpu_offload = {k for k, v in placed.items() if v == "meta"}
    state = dispatched.hf.state_dict()
    offloaded = {k: v for k, v in state.items() if any(k.startswith(p + ".") for p in cpu_offload)}
    device_map = {k: ("disk" if k in cpu_offload else v) for k, v in device_map.items()}
    accelerate.dispatch_model(dispatched.hf, device_map=device_map, main_device="cpu", offload_dir=str(offload),
                              state_dict=offloaded)
    return reference, dispatched


def _sample_batch(model: mmlens.Model):
    sample = make_sample("test", 0, "colour")
    return sample, model.prepare([sample.prompt], [[sample.image]])


def test_accelerate_hooks_are_in_place_and_weights_are_offloaded(pair):
    _, dispatched = pair
    for layer in list(dispatched.decoder_layers)[:2]:
        assert hasattr(layer, "_hf_hook")
        assert next(layer.parameters()).device.type == "meta"
    assert runtime.execution_device(dispatched.decoder_layers[0]).type == "cpu"
    assert dispatched.device.type == "cpu"


@pytest.mark.parametrize("method", METHODS)
def test_attributions_equal_the_undispatched_model(pair, method):
    reference, dispatched = pair
    sample = make_sample("test", 0, "colour")
    options = {"integrated_gradients": {"steps": 8}} if method == "integrated_gradients" else None
    a = mmlens.explain(reference, sample.prompt, [sample.image], methods=[method], max_new_tokens=1, options=options)
    b = mmlens.explain(dispatched, sample.prompt, [sample.image], methods=[method], max_new_tokens=1, options=options)
    assert a.answer == b.answer
    torch.testing.assert_close(b.scores[method], a.scores[method], rtol=1e-4, atol=1e-5)


def test_logit_lens_equals_the_undispatched_model(pair):
    reference, dispatched = pair
    _, batch = _sample_batch(reference)
    a, b = logit_lens(reference, batch), logit_lens(dispatched, _sample_batch(dispatched)[1])
    assert torch.equal(a.top_ids, b.top_ids)
    torch.testing.assert_close(b.answer_prob, a.answer_prob)


def test_knockout_equals_the_undispatched_model(pair):
    reference, dispatched = pair
    _, batch = _sample_batch(reference)
    groups = {"image": batch.layout.mask(Modality.IMAGE), "text": batch.layout.mask(Modality.TEXT)}
    a = knockout(reference, batch, groups)
    b = knockout(dispatched, _sample_batch(dispatched)[1], groups)
    torch.testing.assert_close(b.probability, a.probability, rtol=1e-4, atol=1e-6)


def test_trace_equals_the_undispatched_model(pair):
    reference, dispatched = pair
    samples = [make_sample("test", 0, "colour")]
    a, b = trace(reference, samples), trace(dispatched, samples)
    torch.testing.assert_close(b.p_patched, a.p_patched, rtol=1e-4, atol=1e-5)


def test_neuron_scores_equal_the_undispatched_model(pair):
    reference, dispatched = pair
    samples = make_dataset("val", 3)
    a = modality_scores(reference, samples, progress=False)
    b = modality_scores(dispatched, samples, progress=False)
    for name in a.sums:
        torch.testing.assert_close(b.sums[name], a.sums[name], rtol=1e-4, atol=1e-5)


def test_half_precision_occlusion_upcasts_offloaded_layers_too(tmp_path):
    """``precision="auto"`` casts each layer to float32 as it runs; accelerate loads an offloaded layer's
    weights inside that call, and they must arrive in float32 as well (equal to the undispatched model)."""
    reference = mmlens.load("tiny-llava", dtype=torch.bfloat16)
    dispatched = mmlens.load("tiny-llava", dtype=torch.bfloat16)
    layers = next(path for path, module in dispatched.hf.named_modules() if module is dispatched.decoder_layers)
    device_map = _device_map(dispatched, {f"{layers}.0": "disk", f"{layers}.1": "disk"})
    accelerate.dispatch_model(dispatched.hf, device_map=device_map, main_device="cpu", offload_dir=str(tmp_path))
    sample = make_sample("test", 0, "colour")
    scores = {}
    for label, model, precision in [("ref", reference, "auto"), ("disp", dispatched, "auto"),
                                    ("bf16", reference, "model")]:
        result = mmlens.explain(model, sample.prompt, [sample.image], methods=["occlusion"], max_new_tokens=1,
                                options={"occlusion": {"precision": precision}})
        scores[label] = result.scores["occlusion"].float()
    assert next(dispatched.decoder_layers[0].parameters()).device.type == "meta"
    torch.testing.assert_close(scores["disp"], scores["ref"], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(scores["bf16"], scores["ref"], rtol=1e-4, atol=1e-5)  # float32 made a difference
