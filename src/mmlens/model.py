"""The handle users hold: a Hugging Face model, its processor and its family adapter.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llava")
    >>> from PIL import Image
    >>> batch = model.prepare("<image> what colour is the circle ?", [Image.new("RGB", (64, 64))])
    >>> batch.layout.image_positions(0).numel() > 0
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from mmlens.data.images import open_image
from mmlens.errors import MmlensError
from mmlens.layout import TokenLayout
from mmlens.models.adapter import Adapter, tokenizer_of

ImageInput = str | Path | Image.Image


@dataclass
class Batch:
    """Model-ready tensors plus the :class:`TokenLayout` that says where each token comes from."""

    inputs: dict[str, torch.Tensor]
    layout: TokenLayout
    prompts: list[str]
    images: list[list[Image.Image]] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "Batch":
        """The same batch with its tensors on ``device``."""
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.inputs.items()}
        return Batch(moved, self.layout, self.prompts, self.images)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]


class Model:
    """A loaded model: ``hf`` (the unchanged Hugging Face model), ``processor`` and ``adapter``."""

    def __init__(self, hf: torch.nn.Module, processor: Any, adapter: Adapter, name: str) -> None:
        self.hf = hf
        self.processor = processor
        self.adapter = adapter
        self.name = name

    def __repr__(self) -> str:
        return f"Model({self.name!r}, family={self.adapter.family!r}, layers={self.n_layers})"

    # ---- architecture -------------------------------------------------
    def module(self, path: str) -> torch.nn.Module:
        """The submodule at a dotted path from the top model; ``a|b`` tries ``a`` then ``b``.

        Alternatives exist because transformers versions nest towers differently
        (``vision_tower.encoder`` against ``vision_tower.vision_model.encoder``).
        """
        candidates = path.split("|")
        for candidate in candidates:
            try:
                return self.hf.get_submodule(candidate)
            except AttributeError:
                continue
        raise MmlensError(f"{type(self.hf).__name__} has no module at {path!r}; is this the right adapter?")

    @cached_property
    def decoder_layers(self) -> torch.nn.ModuleList:
        return self.module(self.adapter.decoder_layers)

    @cached_property
    def vision_layers(self) -> torch.nn.ModuleList | None:
        return self.module(self.adapter.vision_layers) if self.adapter.vision_layers else None

    @property
    def n_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def n_vision_layers(self) -> int:
        return len(self.vision_layers) if self.vision_layers is not None else 0

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def tokenizer(self) -> Any:
        return tokenizer_of(self.processor)

    def sites(self) -> list[str]:
        """Every hookable site name of this model, language model first.

        Example:
            >>> mmlens.load("tiny-llama").sites()[:2]
            ['lm.L0.resid', 'lm.L0.attn']
        """
        from mmlens.hooks import site_names

        return site_names(self)

    # ---- inputs -------------------------------------------------------
    def prepare(
        self,
        prompts: str | Sequence[str],
        images: Sequence[ImageInput] | Sequence[Sequence[ImageInput]] | None = None,
        *,
        padding_side: str = "left",
    ) -> Batch:
        """Tokenise prompts (with ``<image>`` slots) and images into a :class:`Batch`.

        ``images`` is a list of images for one prompt, or one list per prompt.
        Left padding suits generation; right padding suits teacher forcing.
        """
        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        per_row = _images_per_row(images, len(prompt_list))
        texts = [self.adapter.format_prompt(p, len(imgs)) for p, imgs in zip(prompt_list, per_row)]
        tokenizer = self.tokenizer
        previous_side = tokenizer.padding_side
        tokenizer.padding_side = padding_side
        try:
            if self.adapter.multimodal and any(per_row):
                flat = [image for row in per_row for image in row]
                inputs = self.processor(images=_nest(per_row, flat), text=texts, return_tensors="pt", padding=True)
            elif self.adapter.multimodal:
                inputs = self.processor(text=texts, return_tensors="pt", padding=True)
            else:
                inputs = tokenizer(texts, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = previous_side
        inputs = self.adapter.model_inputs(dict(inputs))
        sizes = [[(img.height, img.width) for img in row] for row in per_row]
        layout = self.adapter.layout(inputs, sizes, self.processor)
        return Batch(inputs=inputs, layout=layout, prompts=prompt_list, images=per_row).to(self.device)

    def append_tokens(self, batch: Batch, token_ids: torch.Tensor, real: torch.Tensor | None = None) -> Batch:
        """``batch`` with ``token_ids`` (``(batch, n)``) appended to every row, for teacher forcing.

        ``real`` marks which appended tokens exist (rows may have shorter
        answers); the rest are padding. Per-token side inputs grow with the
        sequence, by the value the family's adapter gives appended tokens
        (:meth:`~mmlens.models.adapter.Adapter.appended_value`).
        """
        token_ids = token_ids.to(batch.input_ids.device)
        real = torch.ones_like(token_ids) if real is None else real.to(token_ids.device).long()
        rows, length = batch.input_ids.shape
        inputs = dict(batch.inputs)
        for key, value in batch.inputs.items():
            if key == "input_ids":
                inputs[key] = torch.cat([value, token_ids.to(value.dtype)], 1)
            elif key == "attention_mask":
                inputs[key] = torch.cat([value, real.to(value.dtype)], 1)
            elif isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape == (rows, length):
                fill = self.adapter.appended_value(key)
                inputs[key] = torch.cat([value, torch.full_like(token_ids, fill).to(value.dtype)], 1)
        return Batch(inputs, batch.layout.appended(real), batch.prompts, batch.images)

    # ---- running --------------------------------------------------------
    def forward(self, batch: Batch, **kwargs: Any) -> Any:
        """One forward pass of the unchanged model on ``batch``.

        Under left padding, positions count from each row's first real token
        (as ``generate`` does), so a padded row computes what it would alone.
        """
        inputs = dict(batch.inputs)
        if self.adapter.positions_from_mask and "position_ids" not in kwargs and "attention_mask" in inputs:
            inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp_min(0)
        return self.hf(**inputs, **kwargs)

    def generate(self, batch: Batch, max_new_tokens: int = 8, **kwargs: Any) -> torch.Tensor:
        """Greedy generation by default; returns only the new token ids, ``(batch, new)``."""
        kwargs.setdefault("do_sample", False)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.hf.generate(**batch.inputs, max_new_tokens=max_new_tokens, pad_token_id=pad, **kwargs)
        return out[:, batch.input_ids.shape[1]:]

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        """Token ids ``(batch, n)`` to strings, special tokens dropped."""
        return self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)


def _images_per_row(images: Any, n_rows: int) -> list[list[Image.Image]]:
    if images is None:
        return [[] for _ in range(n_rows)]
    images = list(images)
    nested = bool(images) and isinstance(images[0], (list, tuple))
    if not nested:
        if n_rows != 1:
            raise MmlensError(f"{n_rows} prompts need one list of images per prompt")
        images = [images]
    if len(images) != n_rows:
        raise MmlensError(f"{len(images)} image lists for {n_rows} prompts")
    return [[open_image(item) for item in row] for row in images]


def _nest(per_row: list[list[Image.Image]], flat: list[Image.Image]) -> list[list[Image.Image]] | list[Image.Image]:
    """Processors differ: most accept a nested list per prompt; pass that when any row has images."""
    return per_row if len(per_row) > 1 else flat
