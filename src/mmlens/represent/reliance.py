"""Modality reliance per layer, after MoReS (Modality Rebalancing Steering).

Per layer (``-1`` is the decoder's input, ``lm.embed``), the residual of
every image token is replaced by the mean image-token residual of the batch at
that layer, and the drop in P(answer) at the answer position is measured; the
same for the text tokens (every text position except the last one, which
reads the answer out, and except padding). A large image drop at a layer
means the answer still needs what individual image tokens hold there.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_dataset
    >>> model = mmlens.load("shapes-llava")
    >>> result = modality_reliance(model, make_dataset("val", 8))
    >>> len(result.image_drop) == model.n_layers + 1
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from mmlens.errors import MmlensError
from mmlens.hooks import intervene
from mmlens.models import runtime
from mmlens.represent.concepts import EMBED, prepare_samples, site_of


@dataclass
class ModalityReliance:
    """Mean P(answer) drop per layer when image (or text) token residuals are replaced by their mean."""

    layers: list[int]
    base_probability: float
    image_drop: list[float]
    text_drop: list[float]
    n_samples: int

    def summary(self) -> dict[str, Any]:
        """Plain numbers for JSON."""
        return {"layers": self.layers, "base_probability": round(self.base_probability, 4),
                "image_drop": [round(x, 4) for x in self.image_drop],
                "text_drop": [round(x, 4) for x in self.text_drop], "n_samples": self.n_samples}


def _masks(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, seq)`` masks of image positions and of text positions but the last (padding excluded)."""
    rows, seq = batch.input_ids.shape
    image = torch.zeros(rows, seq, dtype=torch.bool)
    text = torch.zeros(rows, seq, dtype=torch.bool)
    real = batch.inputs.get("attention_mask", torch.ones(rows, seq)).bool().cpu()
    for r in range(rows):
        image[r, batch.layout.image_positions(r).cpu()] = True
        text[r, batch.layout.text_positions(r).cpu()] = True
    text[:, -1] = False
    return image & real, text & real


def _to_mean(mask: torch.Tensor):
    def edit(x: torch.Tensor) -> torch.Tensor:
        m = mask.to(x.device)
        if not m.any():
            return x
        out = x.clone()
        out[m] = x[m].mean(0)
        return out
    return edit


def _answer_ids(model: Any, samples: Sequence[Any]) -> torch.Tensor:
    ids = []
    for s in samples:
        if getattr(s, "answer", None) is None:
            raise MmlensError(f"sample {getattr(s, 'id', '?')} has no answer to measure P(answer) of")
        tokens = model.tokenizer(s.answer, add_special_tokens=False)["input_ids"]
        ids.append(tokens[0])  # the first answer token
    return torch.tensor(ids)


@torch.no_grad()
def modality_reliance(model: Any, samples: Sequence[Any], layers: Sequence[int] | None = None,
                      batch_size: int = 64) -> ModalityReliance:
    """P(answer) drop per layer when image / text token residuals are replaced by their batch mean.

    Example:
        >>> modality_reliance(model, samples, layers=[-1, 0]).summary()["layers"]  # doctest: +SKIP
        [-1, 0]
    """
    if not samples:
        raise MmlensError("no samples to measure modality reliance on")
    layers = list(layers) if layers is not None else [EMBED, *range(model.n_layers)]
    answer = _answer_ids(model, samples)
    base, image, text = [], {l: [] for l in layers}, {l: [] for l in layers}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = prepare_samples(model, chunk)
        target = answer[start:start + len(chunk)].to(batch.input_ids.device)
        if not batch.layout.image_positions(0).numel():
            raise MmlensError("the samples have no image tokens; modality reliance needs images")
        image_mask, text_mask = _masks(batch)

        def probability() -> torch.Tensor:
            probs = model.forward(batch, use_cache=False, **runtime.last_logits_only(model.hf)).logits[:, -1]
            probs = probs.float().softmax(-1)
            return probs.gather(1, target[:, None])[:, 0].cpu()

        base.append(probability())
        for layer in layers:
            for mask, into in ((image_mask, image), (text_mask, text)):
                with intervene(model, {site_of(layer): _to_mean(mask)}):
                    into[layer].append(probability())
    p0 = torch.cat(base)
    return ModalityReliance(layers, float(p0.mean()),
                            [float((p0 - torch.cat(image[l])).mean()) for l in layers],
                            [float((p0 - torch.cat(text[l])).mean()) for l in layers], len(samples))
