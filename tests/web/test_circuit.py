"""The circuit endpoint: CD-T and EAP of an input as a background job, and its one-line refusals."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

import mmlens
from mmlens.causal import object_positions
from mmlens.circuits import decompose
from mmlens.web import create_app
from mmlens.web.examples import example_input
from tests.web.test_api import wait_for


@pytest.fixture(scope="module")
def found(client, example_id) -> dict:
    started = client.post("/api/circuit", json={"input": example_id})
    assert started.status_code == 202, started.text
    return wait_for(client, started.json()["id"])


def test_circuit_job_matches_cdt_and_draws_the_graph(found, shipped):
    assert found["state"] == "done" and found["done"] == found["total"] == 3, found
    result = found["result"]
    given = example_input("colour_question")
    batch = shipped.prepare(given.prompt, given.images)
    positions = object_positions(batch.layout, 0, given.box)
    assert result["source"] == {"kind": "object", "positions": positions, "box": given.box}
    direct = decompose(shipped, batch, positions)
    ranked = result["cdt"]["components"]
    assert [(c["component"], c["total"]) for c in ranked] == [(n, round(s, 6)) for n, s in direct.ranking()]
    assert [c["rank"] for c in ranked] == list(range(1, 21)) and result["cdt"]["answer"] == "purple"
    assert {c["kind"] for c in ranked} == {"head", "mlp"}
    eap, graph = result["eap"], result["graph"]
    assert eap["edges"] == 207 and 0 < eap["edges_kept"] == len(graph["edges"]) == len(eap["top_edges"])
    assert len(graph["nodes"]) == 2 + 4 * 5 and {n["name"] for n in graph["nodes"] if n["in_circuit"]} >= {"logits"}
    rows = {n["name"]: n["y"] for n in graph["nodes"]}
    assert rows["embed"] < rows["L0.H0"] < rows["L1.H0"] < rows["L3.H3"] < rows["logits"]  # layers in rows
    assert all("--" not in w for w in result["warnings"])  # no command-line option named on a web page
    assert set(result["figures"]) == {"cdt", "graph", "curve"}
    assert all(uri.startswith("data:image/png;base64,") for uri in result["figures"].values())


def test_options_source_box_target_and_foil(client, example_id):
    body = {"input": example_id, "methods": ["cdt"], "source": "object", "box": [40, 0, 56, 16],
            "target": "red", "foil": "purple"}
    result = wait_for(client, client.post("/api/circuit", json=body).json()["id"])["result"]
    assert result["source"]["box"] == [40, 0, 56, 16] and len(result["source"]["positions"]) == 4
    assert (result["cdt"]["answer"], result["cdt"]["foil"]) == ("red", "purple")
    assert "eap" not in result and set(result["figures"]) == {"cdt"}
    image = wait_for(client, client.post("/api/circuit", json={"input": example_id, "methods": ["cdt"],
                                                               "source": "image"}).json()["id"])["result"]
    assert image["source"]["kind"] == "image" and len(image["source"]["positions"]) == 64


def test_the_cdt_variant_that_agrees_with_patching(client, example_id, shipped):
    body = {"input": example_id, "methods": ["cdt"], "norms": "marginal", "rest": "replaced"}
    result = wait_for(client, client.post("/api/circuit", json=body).json()["id"])["result"]
    given = example_input("colour_question")
    batch = shipped.prepare(given.prompt, given.images)
    direct = decompose(shipped, batch, result["source"]["positions"], norms="marginal", rest="replaced")
    published = decompose(shipped, batch, result["source"]["positions"])
    ranked = [(c["component"], c["total"]) for c in result["cdt"]["components"]]
    assert ranked == [(n, round(s, 6)) for n, s in direct.ranking()]
    assert ranked != [(n, round(s, 6)) for n, s in published.ranking()]
    assert client.post("/api/circuit", json={**body, "rest": "sideways"}).status_code == 422


def test_bad_circuit_requests_are_one_line_4xx(client, example_id):
    assert client.post("/api/circuit", json={"input": "nope"}).status_code == 404
    outside = client.post("/api/circuit", json={"input": example_id, "box": [100, 100, 120, 120]})
    assert outside.status_code == 422 and outside.json()["detail"] == "the box [100.0, 100.0, 120.0, 120.0] lies " \
                                                                      "outside the 64x64 image"
    for body in ({"input": example_id, "methods": []}, {"input": example_id, "methods": ["nope"]},
                 {"input": example_id, "box": [1, 2, 3]}, {"input": example_id, "keep": 0}):
        assert client.post("/api/circuit", json=body).status_code == 422
    text_only = client.post("/api/inputs", data={"prompt": "what colour is the circle ?"}).json()["id"]
    refused = client.post("/api/circuit", json={"input": text_only})
    assert refused.status_code == 422 and "need an image" in refused.json()["detail"]


def test_a_decoder_circuits_cannot_split_is_422():
    # Every tiny multimodal family's decoder is now split (docs/circuits.md); a LayerNorm makes one that is not.
    model = mmlens.load("tiny-llava")
    for layer in model.decoder_layers:
        layer.input_layernorm = torch.nn.LayerNorm(layer.input_layernorm.weight.shape[0])
    with TestClient(create_app(model)) as client:
        key = client.post("/api/inputs", data={"example": "colour_question"}).json()["id"]
        refused = client.post("/api/circuit", json={"input": key})
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith("llava: circuits support LLaMA-style decoders only")
        assert client.app.state.server.queue.admitted == 0  # refused before a job was queued
