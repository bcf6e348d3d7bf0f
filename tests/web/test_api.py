"""The JSON API with the test client: every endpoint, every error code, the schema."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import mmlens
from mmlens.data.shapes import QUESTION_TYPES
from mmlens.runner.neurons import DOMAIN_TOP
from mmlens.report.neurons import TOWERS
from mmlens.web import Settings, create_app
from tests.web.conftest import png_bytes

ENDPOINTS = {("get", "/api/model"), ("get", "/api/examples"), ("get", "/api/examples/{name}/image"),
             ("post", "/api/inputs"), ("get", "/api/inputs/{key}/image/{index}"), ("get", "/api/inputs/{key}/layout"),
             ("post", "/api/explain"), ("post", "/api/lens"), ("post", "/api/neurons"), ("post", "/api/neurons/top"),
             ("post", "/api/trace"),
             ("post", "/api/circuit"), ("get", "/api/jobs/{key}"), ("delete", "/api/jobs/{key}")}


def test_schema_lists_every_endpoint_and_no_page(client):
    schema = client.get("/api/openapi.json").json()
    found = {(method, path) for path, item in schema["paths"].items() for method in item}
    assert found == ENDPOINTS
    assert client.get("/api/docs").status_code == 200


def test_model_examples_and_pages(client):
    model = client.get("/api/model").json()
    assert (model["model"], model["family"]) == ("shapes-llava", "llava")
    assert "lm.L0.resid" in model["sites"] and "attention" in model["methods"]
    names = [e["name"] for e in client.get("/api/examples").json()]
    assert names == ["colour_question", "shape_question"]
    image = client.get("/api/examples/colour_question/image")
    assert image.headers["content-type"] == "image/png" and image.content[:4] == b"\x89PNG"
    for path in ("/ask", "/inside", "/circuit", "/neurons", "/model"):
        page = client.get(path)
        assert page.status_code == 200 and all(p in page.text for p in ("/ask", "/inside", "/neurons", "/model"))
    assert client.get("/", follow_redirects=False).headers["location"] == "/ask"
    assert client.get("/static/ask.js").status_code == 200


def test_explain_matches_mmlens_explain(client, shipped, example_id):
    response = client.post("/api/explain", json={"input": example_id, "methods": ["attention", "rollout"],
                                                 "max_new_tokens": 2})
    assert response.status_code == 200, response.text
    data = response.json()
    image = Image.open(mmlens.zoo.example_image())
    direct = mmlens.explain(shipped, "<image> what colour is the circle ?", [image], methods=["attention"],
                            max_new_tokens=2)
    assert data["answer_tokens"] == direct.answer_tokens == ["purple", "circle"]
    for t in range(2):
        grid = np.array(data["methods"]["attention"]["targets"][t]["grids"][0][0], dtype=float)
        np.testing.assert_allclose(grid, direct.image_grid("attention", t), atol=1e-5)
        top = data["methods"]["attention"]["targets"][t]["top"]
        assert (top["row"], top["col"]) == np.unravel_index(np.nanargmax(grid), grid.shape)
        assert data["layout"]["positions"][0][0][top["row"]][top["col"]] == top["position"]
    words = data["methods"]["attention"]["targets"][0]["words"]
    assert any(w["kind"] == "chip" for w in words) and any("background" in w["style"] for w in words)


def test_lens_layout_image(client, example_id):
    lens = client.post("/api/lens", json={"input": example_id}).json()
    assert lens["answer"] == "purple"
    assert len(lens["layers"]) == len(lens["grid"]) and len(lens["grid"][0]["words"]) == 8
    assert lens["knockout"]["groups"] == ["image"]
    # Every view's words, and each view's box and grid: the page lays the words on the view's pixel box.
    assert lens["images"][0]["views"][0]["box"] == [0.0, 0.0, 64.0, 64.0]
    assert [(v["image"], v["view"]) for v in lens["grid"][-1]["views"]] == [(0, 0)]
    assert lens["grid"][-1]["views"][0]["words"] == lens["grid"][-1]["words"]
    assert set(lens["figures"]) >= {"lens_emergence", "knockout", "flow_heads"}
    layout = client.get(f"/api/inputs/{example_id}/layout").json()
    kinds = [p["modality"] for p in layout["positions"]]
    assert kinds.count("image") == 64 and layout["family"] == "llava"
    assert client.get(f"/api/inputs/{example_id}/image/0").content[:4] == b"\x89PNG"


def test_trace_job_reports_progress_and_result(client, example_id):
    started = client.post("/api/trace", json={"input": example_id, "components": ["resid"]})
    assert started.status_code == 202
    job = started.json()["id"]
    state = wait_for(client, job)
    assert state["state"] == "done", state
    assert state["done"] == state["total"] > 0
    assert state["result"]["components"] == ["resid"] and "resid" in state["result"]["figures"]
    assert client.delete(f"/api/jobs/{job}").status_code == 200


def wait_for(client, job: str) -> dict:
    """Poll a background job until it ends."""
    for _ in range(2400):
        state = client.get(f"/api/jobs/{job}").json()
        if state["state"] not in ("waiting", "running"):
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job} did not end: {state}")


def test_neurons_job_and_its_cache(client):
    started = client.post("/api/neurons", json={"samples": 2})
    assert started.status_code == 202
    found = wait_for(client, started.json()["id"])["result"]
    assert sum(found["selected"].values()) > 0 and "depth" in found["figures"]
    assert "files" not in found
    again = client.post("/api/neurons", json={"samples": 2}).json()
    assert again["state"] == "done" and client.get(again["url"]).json()["result"] == found
    # Domain neurons come by default: per question type, counts per tower and the most specific first.
    assert set(found["domains"]) == set(QUESTION_TYPES) == set(found["domain_neurons"])
    assert all(set(counts) == set(TOWERS) for counts in found["domains"].values())
    for domain, listed in found["domain_neurons"].items():
        assert len(listed) == min(DOMAIN_TOP, sum(found["domains"][domain].values()))
        assert [n["entropy"] for n in listed] == sorted(n["entropy"] for n in listed)
    without = wait_for(client, client.post("/api/neurons", json={"samples": 2, "domains": False}).json()["id"])
    assert "domains" not in without["result"] and without["result"]["selected"] == found["selected"]


def test_any_decoder_neurons_top_patches(client):
    found = wait_for(client, client.post("/api/neurons", json={"samples": 2, "domains": False}).json()["id"])["result"]
    strongest = found["strongest"]
    assert set(strongest) == set(found["selected"]) and all(len(listed) > 0 for listed in strongest.values())
    for listed in strongest.values():
        assert [n["score"] for n in listed] == sorted((n["score"] for n in listed), reverse=True)
    # The strongest image neuron's top patches, asked for by name, are the ones the neurons job found.
    best = strongest["image"][0]
    top = client.post("/api/neurons/top", json={"site": best["site"], "index": best["index"], "samples": 2})
    assert top.status_code == 200
    top = top.json()
    assert (top["site"], top["index"]) == (found["top_image_neuron"]["site"], found["top_image_neuron"]["index"])
    assert top["samples"] == found["top_image_neuron"]["samples"][:4] and len(top["patches"]) == 4
    assert top["values"] == sorted(top["values"], reverse=True) and top["figure"].startswith("data:image/png;base64,")
    other = strongest["text"][0]
    shown = client.post("/api/neurons/top", json={"site": other["site"], "index": other["index"], "samples": 2,
                                                  "top": 2}).json()
    assert (shown["site"], shown["index"]) == (other["site"], other["index"]) and len(shown["samples"]) == 2


@pytest.mark.parametrize("site, index, says", [("lm.L99.neurons", 0, "no decoder neuron site"),
                                               ("vision.L0.neurons", 0, "no decoder neuron site"),
                                               ("lm.L0.mlp", 0, "no decoder neuron site"),
                                               ("lm.L0.neurons", 10**6, "there is no neuron")])
def test_neuron_top_patches_refuse_what_is_not_a_decoder_neuron(client, site, index, says):
    refused = client.post("/api/neurons/top", json={"site": site, "index": index, "samples": 1})
    assert refused.status_code == 422 and says in refused.json()["detail"]


def test_cancelled_job_stops_at_its_next_step(client, example_id):
    job = client.post("/api/trace", json={"input": example_id}).json()["id"]
    assert client.delete(f"/api/jobs/{job}").json()["state"] in ("waiting", "running")
    ended = wait_for(client, job)
    assert ended["state"] == "cancelled" and ended["result"] is None and ended["done"] < max(ended["total"], 1)


@pytest.mark.parametrize("path, body", [("/api/explain", {"input": "nope"}), ("/api/lens", {"input": "nope"}),
                                        ("/api/trace", {"input": "nope"})])
def test_unknown_input_is_404(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 404 and "no input" in response.json()["detail"]


def test_unknown_ids_and_paths_are_404(client, example_id):
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.delete("/api/jobs/nope").status_code == 404
    assert client.get("/api/examples/../../etc/passwd/image").status_code == 404
    assert client.get("/api/examples/examples.json/image").status_code == 404
    assert client.get(f"/api/inputs/{example_id}/image/1").status_code == 404
    assert client.get("/api/inputs/nope/layout").status_code == 404
    assert client.get("/static/../api.py").status_code == 404


def test_ids_are_random(client):
    ids = [client.post("/api/inputs", data={"example": "shape_question"}).json()["id"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(len(i) >= 22 for i in ids)


def test_upload_errors(client):
    def upload(data: bytes, name: str = "a.png"):
        return client.post("/api/inputs", files={"image": (name, data, "image/png")}, data={"prompt": "<image> hi"})

    big = upload(b"\0" * 300_000)
    assert big.status_code == 413 and "limit" in big.json()["detail"]
    text = upload(b"hello", "notes.txt")
    assert text.status_code == 422 and text.json()["detail"] == "not an image file (or an unsupported format): notes.txt"
    assert upload(b"", "empty.png").status_code == 422
    truncated = upload(png_bytes(Image.new("RGB", (32, 32), "red"))[:60])
    assert truncated.status_code == 422 and "upload" not in truncated.json()["detail"].split(":")[0]
    bomb = upload(png_bytes(Image.new("1", (2000, 2000))), "bomb.png")  # 4 MP in 1.5 kB, over the 1 MP limit
    assert bomb.status_code == 422 and "too large" in bomb.json()["detail"]
    ok = upload(png_bytes(Image.new("RGB", (48, 40), "blue")))
    assert ok.status_code == 201 and ok.json()["images"][0] == {"width": 48, "height": 40, "url": ok.json()["images"][0]["url"]}


def test_an_uploaded_image_needs_a_prompt(client):
    image = png_bytes(Image.new("RGB", (32, 32), "red"))
    refused = client.post("/api/inputs", files={"image": ("red.png", image, "image/png")})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("type a prompt")  # no stand-in question
    empty = client.post("/api/inputs", files={"image": ("red.png", image, "image/png")}, data={"prompt": ""})
    assert empty.status_code == 422


def test_favicon_and_icon_link(client):
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert '<link rel="icon" href="data:image/svg+xml,' in client.get("/ask").text


def test_bad_requests_are_422(client, example_id):
    assert client.post("/api/inputs", data={}).status_code == 422
    assert client.post("/api/inputs", data={"example": "colour_question", "prompt": "   "}).status_code == 422
    assert client.post("/api/inputs", data={"prompt": "x" * 3000}).status_code == 422
    assert client.post("/api/inputs", data={"example": "nope"}).status_code == 404
    assert client.post("/api/inputs", data={"prompt": "<image> <image> two"}).status_code == 422  # no images
    for body in ({"input": example_id, "methods": ["nope"]}, {"input": example_id, "methods": []},
                 {"input": example_id, "max_new_tokens": 0}, {}):
        assert client.post("/api/explain", json=body).status_code == 422
    assert client.post("/api/neurons", json={"samples": 0}).status_code == 422
    text_only = client.post("/api/inputs", data={"prompt": "what colour is the circle ?"}).json()["id"]
    assert client.post("/api/trace", json={"input": text_only}).status_code == 422


def test_busy_queue_answers_429_with_retry_after(shipped):
    app = create_app(shipped, Settings(max_waiting=0))
    with TestClient(app) as test_client:
        key = test_client.post("/api/inputs", data={"example": "colour_question"}).json()["id"]
        app.state.server.queue.admit()  # a job holds the only slot
        try:
            refused = test_client.post("/api/explain", json={"input": key})
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert test_client.post("/api/trace", json={"input": key}).status_code == 429
        finally:
            app.state.server.queue.release()
        assert test_client.post("/api/explain", json={"input": key}).status_code == 200


def test_token_is_required_when_set(shipped):
    app = create_app(shipped, Settings(token="s3cret-token"))
    with TestClient(app) as test_client:
        assert test_client.get("/api/model").status_code == 401
        assert test_client.get("/ask").status_code == 401
        assert test_client.get("/api/model", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert test_client.get("/api/model", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        visit = test_client.get("/ask?token=s3cret-token")
        assert visit.status_code == 200 and "mmlens_token" in visit.headers["set-cookie"]
        assert test_client.get("/api/model").status_code == 200  # the cookie carries it now
