"""``explain``: run attribution methods on a prompt with images and gather an :class:`Explanation`.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-llava")
    >>> explanation = explain(model, "<image> what colour ?", [Image.new("RGB", (64, 64))],
    ...                       methods=["attention", "integrated_gradients"], max_new_tokens=2)
    >>> explanation.methods
    ['attention', 'integrated_gradients']
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from mmlens.attribution.attention import attention
from mmlens.attribution.base import IMAGE_METHODS, Attribution, has_image_tokens, require_images
from mmlens.attribution.explanation import Explanation
from mmlens.attribution.grad_eclip import grad_eclip
from mmlens.attribution.gradients import gradient_x_input, integrated_gradients
from mmlens.attribution.logit_lens_map import logit_lens_arc, logit_lens_map, logit_lens_msea
from mmlens.attribution.mmel import mmel
from mmlens.attribution.occlusion import occlusion, rise
from mmlens.attribution.options import method_list, method_options
from mmlens.attribution.relevancy import relevancy
from mmlens.attribution.rollout import rollout
from mmlens.data.images import image_list
from mmlens.errors import MmlensError
from mmlens.layout import TokenLayout
from mmlens.model import Batch, Model
from mmlens.notices import notice
from mmlens.readout import Targets, build_targets
from mmlens.readout.targets import greedy_answers

METHODS: dict[str, Callable[..., Attribution]] = {
    "attention": attention,
    "rollout": rollout,
    "relevancy": relevancy,
    "gradient_x_input": gradient_x_input,
    "integrated_gradients": integrated_gradients,
    "occlusion": occlusion,
    "rise": rise,
    "logit_lens": logit_lens_map,
    "logit_lens_arc": logit_lens_arc,
    "logit_lens_msea": logit_lens_msea,
    "grad_eclip": grad_eclip,
    "mmel": mmel,
}
DEFAULT_METHODS = ("attention", "rollout", "relevancy", "integrated_gradients", "occlusion", "logit_lens")


def explain(
    model: Model,
    prompt: str,
    images: Sequence[Any] | Any | None = None,
    methods: str | Sequence[str] | None = None,
    answer: str | None = None,
    foil: str | None = None,
    max_new_tokens: int | None = None,
    score: str = "logit",
    options: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Explanation:
    """Explain each answer token of one prompt; see :func:`explain_batch` for several.

    Arguments come in :meth:`Model.prepare <mmlens.model.Model.prepare>`'s
    order: the prompt, then its images (paths, PIL images or arrays; one image
    alone stands for a list of one; none for text).
    """
    if not isinstance(prompt, str) and isinstance(images, str):
        raise MmlensError("explain takes (model, prompt, images): the prompt comes before the images")
    return explain_batch(model, [prompt], [image_list(images)], methods, None if answer is None else [answer],
                         None if foil is None else [foil], max_new_tokens, score, options, progress)[0]


def explain_batch(
    model: Model,
    prompts: Sequence[str],
    images: Sequence[Sequence[Any]] | None = None,
    methods: str | Sequence[str] | None = None,
    answers: Sequence[str] | None = None,
    foils: Sequence[str] | None = None,
    max_new_tokens: int | None = None,
    score: str = "logit",
    options: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Explanation]:
    """Explain a batch of prompts: each method runs once over the whole (padded) batch.

    ``answers`` teacher-forces given answers (else the model's greedy answers
    are explained); ``foils`` turns each target into a contrast, answer
    against foil. Generated answers end at the model's end token or after
    ``max_new_tokens`` (default: the length the model records, see
    :func:`~mmlens.readout.targets.answer_length`; one word for shapes-llava).
    Each explanation records the model's own answer, the target, the foil and
    whether the answer was teacher-forced. ``options`` passes per-method
    keyword arguments, e.g. ``{"integrated_gradients": {"steps": 64}}``.
    ``progress`` is called with each method's name as it starts. ``images``
    holds one list of images per prompt (None: text only). ``methods`` may be
    one name; None runs :data:`DEFAULT_METHODS`, without the image-only ones
    when no prompt has an image (with a notice). Unknown methods, options keys that name no method, options a
    method does not take, and image-only methods (:data:`~mmlens.attribution.base.IMAGE_METHODS`)
    on prompts without images are refused before the model runs.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise MmlensError("explain_batch takes (model, prompts, images): a list of prompt strings, then one list "
                          "of images per prompt")
    default = methods is None
    methods = method_list(DEFAULT_METHODS if methods is None else methods, METHODS)
    batch = model.prepare(list(prompts), images, padding_side="left")  # it checks one image list per prompt
    if default:
        methods = _defaults_for(batch, methods)
    options = method_options(options, methods, METHODS)  # a skipped default's options (occlusion's window) go aside
    require_images(model, batch, [m for m in methods if m in IMAGE_METHODS])  # else they would score all zeros
    targets = build_targets(model, batch, None if answers is None else list(answers),
                            None if foils is None else list(foils), max_new_tokens, score)
    own = None if answers is None else greedy_answers(model, batch, max_new_tokens)
    given = {"target": answers, "foil": foils, "model_answer": own}
    results: dict[str, Attribution] = {}
    milliseconds: dict[str, float] = {}
    for method in methods:
        if progress is not None:
            progress(method)
        start = time.perf_counter()
        results[method] = METHODS[method](model, targets, **options.get(method, {}))
        milliseconds[method] = (time.perf_counter() - start) * 1e3 / len(prompts)
    return [_one(model, targets, results, milliseconds, row, given) for row in range(len(prompts))]


def _defaults_for(batch: Batch, methods: list[str]) -> list[str]:
    """The default methods that can score ``batch``: the image-only ones go, with a notice, when it has no image."""
    if has_image_tokens(batch):
        return methods
    skipped = [m for m in methods if m in IMAGE_METHODS]
    if skipped:
        notice(f"no image to explain: {', '.join(skipped)} skipped (image tokens only)")
    return [m for m in methods if m not in IMAGE_METHODS]


def _one(model: Model, targets: Targets, results: dict[str, Attribution], ms: dict[str, float], row: int,
         given: dict[str, Sequence[str] | None]) -> Explanation:
    """The explanation of one batch row, padding and absent targets dropped."""
    batch = targets.batch
    layout = batch.layout
    n = int(targets.real[row].sum())
    one_row = TokenLayout(layout.modality[row : row + 1], layout.image[row : row + 1], layout.view[row : row + 1],
                          layout.row[row : row + 1], layout.col[row : row + 1], layout.images[row : row + 1])
    tokens = model.tokenizer.convert_ids_to_tokens(batch.input_ids[row].tolist())
    answer = model.tokenizer.decode(targets.tokens[row, :n].tolist(), skip_special_tokens=True)
    recorded = {key: None if values is None else values[row] for key, values in given.items()}
    return Explanation(
        model=model.name,
        prompt=batch.prompts[row],
        answer=answer,
        answer_tokens=targets.texts[row],
        tokens=[str(t) for t in tokens],
        positions=targets.positions[:n].tolist(),
        layout=one_row,
        images=batch.images[row],
        scores={m: r.scores[row, :n].clone() for m, r in results.items()},
        extras={m: _row_extras(r.extras, row, n) for m, r in results.items()},
        milliseconds=dict(ms),
        model_answer=recorded["model_answer"] if recorded["model_answer"] is not None else answer,
        target=recorded["target"],
        foil=recorded["foil"],
    )


def _row_extras(extras: dict[str, Any], row: int, n: int) -> dict[str, Any]:
    out = {}
    for key, value in extras.items():
        out[key] = value[row, :n] if isinstance(value, torch.Tensor) and value.ndim >= 2 else value
    return out
