"""Edge attribution patching: exact where the model is linear; the faithfulness curve's ends."""

import pytest
import torch

from mmlens.circuits import DecoderGraph
from mmlens.circuits.eap import edge_scores, faithfulness_curve, find_circuit, metric_of
from mmlens.errors import MmlensError
from mmlens.models.decoder import record_decoder_call


def _calls(model, clean="a red circle is on the left", corrupt="a blue square is on the right"):
    return record_decoder_call(model, model.prepare(clean)), record_decoder_call(model, model.prepare(corrupt))


def _edge_patched(graph, clean, corrupt, edge):
    """The metric's inputs when only ``edge`` carries its corrupt value: each reader sums its upstream outputs."""
    with torch.no_grad():
        other = graph.run(corrupt).outputs
    u, r = graph.edges[edge]

    def rule(stacked, reader):
        x = stacked[: graph.upstream[reader]].sum(0)
        return x + (other[u] - stacked[u]) if reader == r else x

    with torch.no_grad():
        return graph.run(clean, inputs=rule).logits


def test_scores_are_exact_edge_patching_on_a_linearised_model(linear_llama):
    graph = DecoderGraph(linear_llama)
    clean, corrupt = _calls(linear_llama)
    with torch.no_grad():
        top = graph.run(clean).logits[0].topk(2).indices
    answer, foil = top[:1], top[1:]
    scores = edge_scores(linear_llama, clean, corrupt, answer, foil, graph=graph)
    largest = scores.top(3)
    for edge in largest:
        patched = float(metric_of(_edge_patched(graph, clean, corrupt, edge), answer, foil)[0])
        assert patched - float(scores.clean[0]) == pytest.approx(float(scores.scores[edge]), rel=1e-3, abs=1e-6)
    assert abs(float(scores.scores[largest[0]])) > 0


def test_scores_match_edge_patching_to_first_order(tiny_llama):
    graph = DecoderGraph(tiny_llama)
    clean, _ = _calls(tiny_llama)
    # A small corruption: first order is close.
    corrupt = type(clean)(clean.model, clean.embeds + 0.001 * torch.randn_like(clean.embeds,
                                                                          generator=torch.Generator().manual_seed(0)),
                          clean.kwargs)
    answer, foil = torch.tensor([5]), torch.tensor([6])
    scores = edge_scores(tiny_llama, clean, corrupt, answer, foil, graph=graph)
    edge = scores.top(1)[0]
    patched = float(metric_of(_edge_patched(graph, clean, corrupt, edge), answer, foil)[0])
    assert patched - float(scores.clean[0]) == pytest.approx(float(scores.scores[edge]), rel=0.03)


def test_curve_ends_are_the_clean_and_corrupt_runs(tiny_llava, noise):
    graph = DecoderGraph(tiny_llava)
    prompt = "<image> what colour is the circle ?"
    clean = record_decoder_call(tiny_llava, tiny_llava.prepare(prompt, [noise(32, 32, 0)]))
    corrupt = record_decoder_call(tiny_llava, tiny_llava.prepare(prompt, [noise(32, 32, 1)]))
    with torch.no_grad():
        top = graph.run(clean).logits[0].topk(2).indices
    scores = edge_scores(tiny_llava, clean, corrupt, top[:1], top[1:], graph=graph)
    total = len(graph.edges)
    with torch.no_grad():
        ablation = graph.run(corrupt).outputs
    curve = faithfulness_curve(tiny_llava, clean, ablation, scores, [0, 5, total], top[:1], top[1:], corrupt, graph)
    assert float(curve.recovered[-1]) == pytest.approx(1.0, abs=1e-4)  # every edge kept: the clean run
    assert float(curve.recovered[0]) == pytest.approx(0.0, abs=1e-4)  # none kept, corrupt-ablated: the corrupt run
    assert curve.empty == pytest.approx(curve.corrupt, abs=1e-4)
    assert curve.smallest(0.99) == total or curve.smallest(0.99) == 5
    mean_curve = faithfulness_curve(tiny_llava, clean, ablation.mean(1), scores, [total], top[:1], top[1:], corrupt,
                                    graph)
    assert float(mean_curve.recovered[0]) == pytest.approx(1.0, abs=1e-4)


def test_the_circuit_is_the_fewest_edges_reaching_the_target(tiny_llava, noise):
    prompt = "<image> what colour is the circle ?"
    clean, corrupted = (tiny_llava.prepare(prompt, [noise(32, 32, seed)]) for seed in (0, 1))
    circuit = find_circuit(tiny_llava, clean, corrupted, target=0.5)
    kept, recovered = circuit.curve.kept, circuit.curve.recovered.tolist()
    reaching = [k for k, r in zip(kept, recovered) if r >= 0.5]
    assert circuit.edges_kept == min(reaching) and circuit.recovered == recovered[kept.index(circuit.edges_kept)]
    summary = circuit.to_json()
    assert summary["edges"] == len(circuit.scores.edges) and len(summary["top_edges"]) == circuit.edges_kept
    # The scores are edge_scores' for the clean top token against the corrupted run's answer.
    graph = DecoderGraph(tiny_llava)
    calls = [record_decoder_call(tiny_llava, b) for b in (clean, corrupted)]
    with torch.no_grad():
        top, other = (graph.run(c).logits[0].argmax() for c in calls)
    assert circuit.answer_id == int(top) and (circuit.runner_up or circuit.foil_id == int(other))
    direct = edge_scores(tiny_llava, *calls, [circuit.answer_id], [circuit.foil_id], graph=graph)
    torch.testing.assert_close(circuit.scores.scores, direct.scores)
    # Corrupting nothing leaves the answer: the foil is then the clean runner-up, and the run says so.
    same = find_circuit(tiny_llava, clean, clean)
    with torch.no_grad():
        second = int(graph.run(calls[0]).logits[0].topk(2).indices[1])
    assert same.runner_up and same.foil_id == second


def test_shapes_must_match(tiny_llama):
    clean, corrupt = _calls(tiny_llama, corrupt="a blue square")
    with pytest.raises(MmlensError) as error:
        edge_scores(tiny_llama, clean, corrupt, [5], [6])
    assert "same prompt" in str(error.value) and "\n" not in str(error.value)
