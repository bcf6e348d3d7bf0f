"""Calls into decoder layers: the cache keyword read from signatures, masks for replays."""

from __future__ import annotations

import inspect
import os
import random
import string

import torch
from transformers.cache_utils import Cache

import mmlens
from mmlens.causal import record_layers
from mmlens.models import runtime
from mmlens.models.runtime.calls import blocks_later_keys, causal_mask

DEVICE = os.environ.get("MMLENS_TEST_DEVICE", "cpu")


def test_the_cache_keyword_is_read_from_the_signature_not_listed():
    keyword = "kv_" + "".join(random.Random().choices(string.ascii_lowercase, k=10))
    model = mmlens.load("tiny-llama", device=DEVICE)
    layers = model.decoder_layers
    wrapper = _renamed_cache_layer(keyword)
    for index in range(len(layers)):
        layers[index] = wrapper(layers[index])
    assert runtime.cache_keyword(layers[0]) == keyword
    assert keyword in inspect.signature(layers[0].forward).parameters
    batch = model.prepare(["a red circle left of a blue square", "a green cross"])
    with torch.no_grad():
        full = model.forward(batch, use_cache=False).logits
        replay = record_layers(model, batch)
        assert replay.calls[0].cache_key == keyword
        assert len(replay.keys_values()) == model.n_layers  # the recorder came in under the new name
        seq = batch.input_ids.shape[1]
        for start in range(model.n_layers + 1):
            torch.testing.assert_close(replay.logits(start, replay.inputs[start], positions=range(seq)), full,
                                       rtol=1e-4, atol=1e-5)
        if replay.suffix_allowed(seq - 2):
            suffix = replay.logits(0, replay.inputs[0][:, seq - 2:], offset=seq - 2)
            torch.testing.assert_close(suffix, full[:, -1:], rtol=1e-4, atol=1e-5)


def test_unannotated_layers_fall_back_to_the_parameter_name():
    class Old(torch.nn.Module):
        def forward(self, hidden_states, layer_past=None, attention_mask=None, use_cache=False):
            return hidden_states

    class NoCache(torch.nn.Module):
        def forward(self, hidden_states, use_cache=False, cache_position=None):
            return hidden_states

    assert runtime.cache_keyword(Old()) == "layer_past"
    assert runtime.cache_keyword(NoCache()) is None


def test_causal_mask_lets_each_query_see_itself_and_the_past_only():
    mask = causal_mask(5, 2, torch.float32, torch.device("cpu"))
    assert mask.shape == (1, 1, 3, 5)
    seen = mask[0, 0] == 0
    assert seen.tolist() == [[True, True, True, False, False], [True, True, True, True, False], [True] * 5]


def test_blocks_later_keys_reads_additive_boolean_and_missing_masks():
    additive = causal_mask(4, 0, torch.float32, torch.device("cpu"))
    assert blocks_later_keys(additive, 2)
    assert not blocks_later_keys(torch.zeros(1, 1, 4, 4), 2)  # a mask that lets every query see everything
    boolean = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    assert blocks_later_keys(boolean, 2) and not blocks_later_keys(torch.ones(1, 1, 4, 4, dtype=torch.bool), 2)
    assert blocks_later_keys(None, 2)  # no mask: transformers runs its causal kernel
    assert not blocks_later_keys(torch.zeros(4, 4), 2)  # not 4-D: unknown, so not trusted
def _renamed_cache_layer(keyword: str) -> type[torch.nn.Module]:
    """A decoder-layer wrapper that takes its cache under ``keyword``, as a future transformers might."""
    namespace: dict = {"Cache": Cache, "runtime": runtime}
    source = f"""
def forward(self, hidden_states, attention_mask=None, position_ids=None, {keyword}: "Cache | None" = None,
            use_cache=False, position_embeddings=None, **kwargs):
    kwargs.pop(runtime.cache_keyword(self.inner), None)  # the model's own (None) cache, under today's name
    inner = {{runtime.cache_keyword(self.inner): {keyword}}}
    return self.inner(hidden_states, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache,
                      position_embeddings=position_embeddings, **inner, **kwargs)
"""
    exec(source, namespace)

    class Renamed(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.self_attn, self.mlp = inner.self_attn, inner.mlp

    Renamed.forward = namespace["forward"]
    return Renamed
