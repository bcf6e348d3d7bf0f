"""Shared samples for the neuron tests (tiny models come from tests/conftest.py)."""

from __future__ import annotations

import pytest

from mmlens.data.shapes import make_sample


@pytest.fixture(scope="module")
def samples() -> list:
    """Five shapes samples of mixed question types (prompts of different lengths, so padding happens)."""
    return [make_sample("val", i) for i in range(5)]


def gate_activations(model, batch, also: list[str] | None = None):
    """Reference neuron values of a gated decoder: act_fn(gate_proj x) per layer, read with plain torch hooks.

    With ``also``, the same forward captures those sites too (the same attention
    kernel, so no float noise between the two) and ``(values, captured)`` is returned.
    """
    import torch

    import mmlens

    values, handles = {}, []
    for i, layer in enumerate(model.decoder_layers):
        mlp = layer.mlp
        handles.append(mlp.gate_proj.register_forward_hook(
            lambda module, args, out, i=i, act=mlp.act_fn: values.__setitem__(i, act(out).detach())))
    try:
        with mmlens.capture(model, also or []) as captured, torch.no_grad():
            model.forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    return (values, captured) if also else values
