"""The JSON API under ``/api/``: every page's data comes from here (OpenAPI schema at ``/api/openapi.json``).

Example:
    >>> from fastapi.testclient import TestClient
    >>> from mmlens.web import create_app
    >>> client = TestClient(create_app("tiny-llava"))
    >>> client.get("/api/model").json()["family"]
    'llava'
"""

from __future__ import annotations

import io
import time
from typing import Any, Literal, Optional

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from mmlens.attribution.api import DEFAULT_METHODS, METHODS
from mmlens.causal.tracing import COMPONENTS
from mmlens.model import check_prompt
from mmlens.neurons.top import check_top_neuron
from mmlens.web.circuit import SOURCES, CircuitOptions, check_circuit_input, circuit_input
from mmlens.web.examples import example_input, example_path, examples
from mmlens.web.server import Server
from mmlens.web.store import Input
from mmlens.web.uploads import WebError, read_image
from mmlens.web.work import describe_input, explain_input, lens_input, neuron_top_json, neurons_json, trace_input

class Problem(BaseModel):
    """Every refusal: one line saying what was wrong (a list of field errors for 422 validation errors)."""

    detail: Any


#: What any endpoint may answer besides success: every refusal is a :class:`Problem`.
REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "the server needs its token (--token) and the request had none"},
    404: {"model": Problem, "description": "no such input, job or example"},
    413: {"model": Problem, "description": "the upload is over the size limit"},
    422: {"model": Problem, "description": "the request or the image is not usable (message says why)"},
    429: {"model": Problem, "description": "the model's queue is full; see Retry-After",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}},
}

router = APIRouter(prefix="/api", responses=REFUSALS)

Method = Literal[tuple(METHODS)]  # type: ignore[valid-type]
Component = Literal[tuple(COMPONENTS)]  # type: ignore[valid-type]
InputId = Field(..., min_length=1, max_length=64, description="An id from POST /api/inputs.")
Word = Field(None, min_length=1, max_length=200)



class ExplainRequest(BaseModel):
    input: str = InputId
    methods: list[Method] = Field(default_factory=lambda: ["attention", "rollout"], min_length=1,  # type: ignore
                                  max_length=len(METHODS))
    max_new_tokens: Optional[int] = Field(None, ge=1, le=16, description="Answer tokens to explain.")
    target: Optional[str] = Word
    foil: Optional[str] = Word


class LensRequest(BaseModel):
    input: str = InputId
    top_k: int = Field(5, ge=1, le=10)


class TraceRequest(BaseModel):
    input: str = InputId
    noise: float = Field(3.0, gt=0, le=20)
    components: list[Component] = Field(default_factory=lambda: list(COMPONENTS), min_length=1,  # type: ignore
                                        max_length=len(COMPONENTS))


class CircuitRequest(BaseModel):
    input: str = InputId
    methods: list[Literal["cdt", "eap"]] = Field(default_factory=lambda: ["cdt", "eap"], min_length=1, max_length=2)
    source: Literal[tuple(SOURCES)] = Field(  # type: ignore[valid-type]
        "object", description="CD-T's source: the asked object's image tokens (all image tokens when no box is "
                              "known), or all image tokens.")
    box: Optional[list[float]] = Field(None, min_length=4, max_length=4, description="The object's box in the "
                                       "first image's pixels, x0 y0 x1 y1 (default: a shipped example's own).")
    target: Optional[str] = Word
    foil: Optional[str] = Field(None, min_length=1, max_length=200, description="CD-T follows logit(target) - "
                                "logit(foil); EAP contrasts with the corrupted image's answer.")
    reference: Literal["mean", "zero"] = "mean"
    activation: Literal["marginal", "shapley"] = "marginal"
    norms: Literal["frozen", "marginal", "shapley"] = Field("frozen", description="CD-T's RMSNorm split: frozen "
                                                            "(published), or marginal (with rest 'replaced': the "
                                                            "variant that agrees with path patching; docs/circuits.md)")
    rest: Literal["propagated", "replaced"] = Field("propagated", description="CD-T's rest: propagated (published) "
                                                    "or the model's own run with the source replaced")
    noise: float = Field(3.0, gt=0, le=20, description="EAP: pixel-noise standard deviation.")
    keep: float = Field(0.8, gt=0, le=1, description="EAP: the share of the clean-corrupt gap the circuit keeps.")


class NeuronsRequest(BaseModel):
    samples: int = Field(8, ge=1, le=40, description="Shapes-world samples per question type.")
    ratio: float = Field(0.02, gt=0, le=0.2, description="Share of the decoder's neurons to select.")
    domains: bool = Field(True, description="Also domain-specific neurons (MMNeuron's entropy over question types "
                                             "as domains; decoder, vision tower and projector), as `mmlens neurons "
                                             "--domains`: counts per domain and tower, and the most specific.")


class NeuronTopRequest(BaseModel):
    site: str = Field(..., min_length=1, max_length=64, description="A decoder neuron site: lm.L{i}.neurons.")
    index: int = Field(..., ge=0, description="The neuron's index at that site.")
    samples: int = Field(8, ge=1, le=40, description="Shapes-world images per question type to rank.")
    top: int = Field(4, ge=1, le=12, description="How many of the top-activating images to show.")


def server_of(request: Request) -> Server:
    return request.app.state.server


def _input(server: Server, key: str) -> Input:
    found = server.inputs.get(key)
    if found is None:
        raise WebError(f"no input {key!r} (inputs are kept for the {server.settings.max_inputs} newest)", status=404)
    return found


@router.get("/model", summary="The loaded model: family, layers, sites; the methods and limits of this server")
def model_info(request: Request) -> dict[str, Any]:
    server = server_of(request)
    limits = server.settings
    return {**describe_input(server.model, None), "methods": list(METHODS), "default_methods": list(DEFAULT_METHODS),
            "components": list(COMPONENTS), "limits": {"max_upload_bytes": limits.max_upload_bytes,
                                                        "max_pixels": limits.max_pixels,
                                                        "max_waiting": limits.max_waiting}}


@router.get("/examples", summary="The shipped example images and their prompts")
def list_examples() -> list[dict[str, Any]]:
    return [{key: e[key] for key in ("name", "prompt", "answer")} for e in examples()]


@router.get("/examples/{name}/image", summary="A shipped example's image (PNG)", response_class=FileResponse)
def example_image(name: str) -> FileResponse:
    return FileResponse(example_path(name), media_type="image/png")


@router.post("/inputs", status_code=201, summary="Upload an image (or pick a shipped example) and a prompt")
async def create_input(request: Request, image: Optional[UploadFile] = File(None), example: Optional[str] = Form(None),
                       prompt: Optional[str] = Form(None)) -> dict[str, Any]:
    server = server_of(request)
    limits = server.settings
    if prompt is not None and len(prompt) > limits.max_prompt_chars:
        raise WebError(f"the prompt is {len(prompt):,} characters, over the limit of {limits.max_prompt_chars:,}")
    if prompt is not None:
        check_prompt(prompt)
    if image is not None and example:
        raise WebError("give an image or an example, not both")
    if example:
        given = example_input(example, prompt)
    else:
        data = await image.read(limits.max_upload_bytes + 1) if image is not None else b""
        if image is None and prompt is None:
            raise WebError("give an image (or an example) and a prompt")
        if prompt is None:  # never a question the user did not ask: the default would explain someone else's
            raise WebError("type a prompt: a question about the uploaded image")
        images = [read_image(data, image.filename, limits.max_pixels, limits.max_upload_bytes)] if image else []
        given = Input(prompt, images)
    given.prompt = server.model.place_images(given.prompt, len(given.images))
    server.model.prepare(given.prompt, given.images)  # slot and length errors now (422), not at explain time
    key = server.inputs.add(given)
    return {"id": key, "prompt": given.prompt, "example": given.example,
            "images": [{"width": im.width, "height": im.height, "url": f"/api/inputs/{key}/image/{i}"}
                       for i, im in enumerate(given.images)]}


@router.get("/inputs/{key}/image/{index}", summary="One image of an input (PNG)", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def input_image(request: Request, key: str, index: int) -> Response:
    given = _input(server_of(request), key)
    if not 0 <= index < len(given.images):
        raise WebError(f"input {key!r} has {len(given.images)} image(s)", status=404)
    buffer = io.BytesIO()
    given.images[index].save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")


@router.get("/inputs/{key}/layout", summary="The token layout of an input: which positions are image, tile, row, column")
def input_layout(request: Request, key: str) -> dict[str, Any]:
    server = server_of(request)
    return describe_input(server.model, _input(server, key))


@router.post("/explain", summary="Explain each answer token with the chosen methods",
             response_model=dict[str, Any])
async def explain(request: Request, body: ExplainRequest) -> Response:
    server = server_of(request)
    given = _input(server, body.input)
    methods = list(body.methods)

    def work() -> Response:  # the JSON is written on the worker thread: the event loop only sends it
        return JSONResponse(explain_input(server.model, given, methods, body.max_new_tokens, body.target, body.foil))

    return await server.queue.run(work, request.is_disconnected)


@router.post("/lens", summary="Logit lens per layer, attention flow between modalities, knockout of the image")
async def lens(request: Request, body: LensRequest) -> dict[str, Any]:
    server = server_of(request)
    given = _input(server, body.input)
    return await server.queue.run(lambda: lens_input(server.model, given, body.top_k), request.is_disconnected)


@router.post("/neurons", status_code=202, summary="Start finding modality-specific neurons (optionally "
             "domain-specific ones too; and the top patches "
             "of the strongest image neuron) in the background; poll GET /api/jobs/{id}")
async def start_neurons(request: Request, body: NeuronsRequest) -> dict[str, Any]:
    server = server_of(request)
    samples, ratio, domains = body.samples, body.ratio, body.domains
    return server.start_job("neurons", lambda progress: neurons_json(server.model, samples, ratio, domains),
                            cache_key=("neurons", samples, round(ratio, 6), domains))


@router.post("/neurons/top", summary="One decoder neuron's top-activating images, each with its strongest patch")
async def neuron_top(request: Request, body: NeuronTopRequest) -> dict[str, Any]:
    server = server_of(request)
    check_top_neuron(server.model, body.site, body.index)  # 422 now, not after the jobs ahead of it
    return await server.queue.run(lambda: neuron_top_json(server.model, body.site, body.index, body.samples, body.top),
                                  request.is_disconnected)


@router.post("/trace", status_code=202, summary="Start causal tracing in the background; poll GET /api/jobs/{id}")
async def start_trace(request: Request, body: TraceRequest) -> dict[str, Any]:
    server = server_of(request)
    given = _input(server, body.input)
    if not given.images:
        raise WebError("causal tracing corrupts the image: this input has none")
    return server.start_job("trace", lambda progress: trace_input(server.model, given, body.noise,
                                                                  list(body.components), progress))


@router.post("/circuit", status_code=202, summary="Start CD-T and edge attribution patching in the background "
             "(a decoder circuits cannot split: 422 now); poll GET /api/jobs/{id}")
async def start_circuit(request: Request, body: CircuitRequest) -> dict[str, Any]:
    server = server_of(request)
    given = _input(server, body.input)
    options = CircuitOptions(tuple(body.methods), body.source, None if body.box is None else tuple(body.box),
                             body.target, body.foil, body.reference, body.activation, body.norms, body.rest,
                             body.noise, body.keep)
    check_circuit_input(server.model, given, options)
    return server.start_job("circuit", lambda progress: circuit_input(server.model, given, options, progress))


@router.get("/jobs/{key}", summary="A background job's state, progress and (when done) result")
def job_state(request: Request, key: str) -> dict[str, Any]:
    job = server_of(request).jobs.get(key)
    if job is None:
        raise WebError(f"no job {key!r}", status=404)
    job.polled = time.monotonic()
    return job.to_json()


@router.delete("/jobs/{key}", summary="Cancel a background job")
def cancel_job(request: Request, key: str) -> dict[str, Any]:
    job = server_of(request).jobs.get(key)
    if job is None:
        raise WebError(f"no job {key!r}", status=404)
    job.cancelled.set()
    return job.to_json()
