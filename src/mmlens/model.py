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

from mmlens.data.images import image_list, open_image
from mmlens.errors import MmlensError, check_count
from mmlens.layout import TokenLayout
from mmlens.models.adapter import IMAGE_SLOT, Adapter, tokenizer_of
from mmlens.models.slots import place_images
from mmlens.notices import notice

ImageInput = str | Path | Image.Image  # numpy arrays and torch tensors are read too (image_from_array)


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
        """Where inputs go: the execution device of the model (accelerate's main device when it dispatched it)."""
        from mmlens.models.runtime import execution_device

        return execution_device(self.hf)

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

    @property
    def max_positions(self) -> int | None:
        """How many positions the language model takes (``max_position_embeddings`` of its text config), if known.

        Example:
            >>> mmlens.load("shapes-llava").max_positions
            256
        """
        config = self.hf.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(text, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    # ---- inputs -------------------------------------------------------
    def place_images(self, prompt: str, n_images: int) -> str:
        """``prompt`` with ``<image>`` slots for ``n_images`` images where it has none, saying so in one line.

        A prompt with slots, no images or a text-only model is returned as it
        is. Otherwise the slots go where the model's chat template puts images
        (see :mod:`mmlens.models.slots`) and a notice (:mod:`mmlens.notices`)
        says where.

        Example:
            >>> mmlens.load("tiny-llava").place_images("what colour ?", 1)
            '<image>\\nwhat colour ?'
        """
        placed, message = self._placed([prompt], [n_images])
        if message:
            notice(message)
        return placed[0]

    def prepare(
        self,
        prompts: str | Sequence[str],
        images: Sequence[ImageInput] | Sequence[Sequence[ImageInput]] | None = None,
        *,
        padding_side: str = "left",
    ) -> Batch:
        """Tokenise prompts (with ``<image>`` slots) and images into a :class:`Batch`.

        ``images`` is a list of images for one prompt, or one list per prompt;
        one image alone (a path, a PIL image, an array) stands for a list of one.
        Left padding suits generation; right padding suits teacher forcing.
        A prompt without slots gets them where the chat template puts images
        (:meth:`place_images`); ``Batch.prompts`` holds the prompts with their
        slots. Empty prompts and prompts longer than the model's positions
        (:attr:`max_positions`) are refused before the model runs; a vision
        model given no images runs text-only and says so in one line.
        """
        if not isinstance(prompts, (str, list, tuple)):
            raise MmlensError(f"prompts are a string or a list of strings, got {type(prompts).__name__}")
        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        for prompt in prompt_list:
            check_prompt(prompt)
        per_row = _images_per_row(images, len(prompt_list))
        if any(per_row) and not self.adapter.multimodal:
            raise MmlensError(f"{self.name} is a text-only model: it takes no images")
        prompt_list, placed = self._placed(prompt_list, [len(row) for row in per_row])
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
        self._check_length(inputs["input_ids"])
        if placed:
            notice(placed)
        if self.adapter.multimodal and not all(per_row):
            bare = sum(1 for row in per_row if not row)
            rows = "no image given" if len(per_row) == 1 else f"{bare} of {len(per_row)} prompts have no image"
            notice(f"{rows}: {self.name} runs text-only")
        inputs = self.adapter.model_inputs(dict(inputs))
        sizes = [[(img.height, img.width) for img in row] for row in per_row]
        layout = self.adapter.layout(inputs, sizes, self.processor)
        return Batch(inputs=inputs, layout=layout, prompts=prompt_list, images=per_row).to(self.device)

    def _placed(self, prompts: list[str], n_images: list[int]) -> tuple[list[str], str | None]:
        """Prompts with slots written where they have none, and the one notice that says so (None if none)."""
        if not self.adapter.multimodal:
            return prompts, None
        out, moved, where = [], [], ""
        for prompt, n in zip(prompts, n_images):
            if n and IMAGE_SLOT not in prompt and self.adapter.processor_slot not in prompt:
                prompt, where = place_images(prompt, n, self.processor, self.adapter)
                moved.append((n, prompt))
            out.append(prompt)
        if len(moved) == 1:
            n, prompt = moved[0]
            shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
            return out, f"the prompt has no {IMAGE_SLOT} slot: put {n} image{'s' if n > 1 else ''} {where}: {shown!r}"
        if moved:
            return out, f"{len(moved)} prompts have no {IMAGE_SLOT} slot: put their images {where}"
        return out, None

    def _check_length(self, input_ids: torch.Tensor, extra: str = "") -> None:
        """Refuse a sequence longer than the model's positions, before any forward pass."""
        limit, length = self.max_positions, int(input_ids.shape[-1])
        if limit is None or length <= limit:
            return
        token_id = (self.tokenizer.convert_tokens_to_ids(self.adapter.image_token)
                    if self.adapter.image_token else None)
        n_image = int((input_ids == token_id).sum(-1).max()) if isinstance(token_id, int) else 0
        image = f" ({n_image} of them image tokens)" if n_image else ""
        raise MmlensError(f"the prompt{extra} is {length} tokens long{image}, over {self.name}'s limit of "
                          f"{limit} positions; shorten it")

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
        self._check_length(torch.zeros(1, length + token_ids.shape[1]), " with its answer")
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
        """Greedy generation by default; returns only the new token ids, ``(batch, new)``.

        An answer that would run past the model's positions is cut where they
        end, with a notice.
        """
        max_new_tokens = check_count(max_new_tokens, "max_new_tokens")
        kwargs.setdefault("do_sample", False)
        length, limit = batch.input_ids.shape[1], self.max_positions
        if limit is not None and length + max_new_tokens > limit:
            self._check_length(batch.input_ids)
            if length >= limit:
                raise MmlensError(f"the prompt is {length} tokens long: {self.name}'s {limit} positions leave no "
                                  "room for an answer; shorten it")
            notice(f"the answer is cut to {limit - length} tokens: {self.name} has {limit} positions "
                   f"and the prompt takes {length}")
            max_new_tokens = limit - length
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.hf.generate(**batch.inputs, max_new_tokens=max_new_tokens, pad_token_id=pad, **kwargs)
        return out[:, batch.input_ids.shape[1]:]

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        """Token ids ``(batch, n)`` to strings, special tokens dropped."""
        return self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)


def check_prompt(prompt: Any) -> None:
    """Refuse what cannot be a prompt: a non-string, or an empty one (the command line and the web app use it too).

    Example:
        >>> check_prompt("<image> what colour ?")
        >>> check_prompt("  ")
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: the prompt is empty: write a question or an instruction
    """
    if not isinstance(prompt, str):
        raise MmlensError(f"a prompt is a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise MmlensError("the prompt is empty: write a question or an instruction")


def _images_per_row(images: Any, n_rows: int) -> list[list[Image.Image]]:
    if images is None:
        return [[] for _ in range(n_rows)]
    images = image_list(images)
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
