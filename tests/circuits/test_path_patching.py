"""Path patching from a source: batched rows agree with one component patched at a time."""

import torch

from mmlens.circuits import DecoderGraph, path_patch
from mmlens.models.decoder import record_decoder_call


def test_batched_rows_match_single_patches(tiny_llama):
    batch = tiny_llama.prepare("a red circle is on the left")
    graph = DecoderGraph(tiny_llama)
    result = path_patch(tiny_llama, batch, [2, 3], reference="zero", graph=graph)
    call = record_decoder_call(tiny_llama, batch)
    replaced = call.embeds.clone()
    replaced[0, [2, 3]] = 0
    with torch.no_grad():
        clean, corrupt = graph.run(call), graph.run(call, replaced)
        answer = int(clean.logits[0].argmax())
        node = graph.node_index(1, 0)
        one = graph.run(call, edit=lambda n, out: corrupt.outputs[n] if n == node else out)
    expected = float(clean.logits[0, answer] - one.logits[0, answer])
    assert abs(float(result.effects[node - 1]) - expected) < 1e-5
    assert abs(result.total - float(clean.logits[0, answer] - corrupt.logits[0, answer])) < 1e-5
