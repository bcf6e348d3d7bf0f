"""PaliGemma (1 and 2): SigLIP tower, linear projector, Gemma decoder with a bidirectional prefix.

Every image is resized to the tower's fixed square (no crop, no aspect
preservation), so one view covers the whole original image. The prompt is a
prefix: ``<image>`` x ``image_seq_length`` per image, then ``<bos>``, the
text and a newline; several images make one contiguous run, image after image.

``PaliGemmaProcessor`` treats prompts two ways. Without ``<image>`` it warns,
then builds ``<image>... <bos>prompt\\n`` itself. With ``<image>`` it puts
``<bos>`` right after the *last* slot and keeps everything else in place, so
``"<image> what ..."`` keeps its space and a mid-prompt slot leaves text
before the image run. :meth:`PaliGemmaAdapter.format_prompt` therefore
checks the slots as every family does, then moves them all to the front with
no space, which is the canonical form the processor would build.

Attention: ``token_type_ids`` are 0 over the whole prefix (image tokens, BOS,
prompt, newline), which attends *bidirectionally*; only suffix and generated
tokens are causal. Attention probabilities over the prefix are therefore not
lower-triangular, and a prefix position's residual depends on later prompt
tokens: causal-only reasoning (e.g. "position i sees only tokens <= i") holds
from the first generated token on. The processor also returns ``labels``
(all -100 without a suffix), which make the model compute a NaN loss.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-paligemma")
    >>> model.adapter.format_prompt("<image> what colour is the circle ?", 1)
    '<image>what colour is the circle ?'
    >>> batch = model.prepare("<image> what colour is the circle ?", [Image.new("RGB", (200, 120))])
    >>> view = batch.layout.images[0][0].views[0]
    >>> (view.rows, view.cols, view.box)
    (4, 4, Box(x0=0.0, y0=0.0, x1=200.0, y1=120.0))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from mmlens.box import Box
from mmlens.errors import MmlensError
from mmlens.layout import ImageInfo, TokenLayout, View
from mmlens.models.adapter import (
    IMAGE_SLOT, Adapter, grid_tokens, image_token_runs, layout_from_images, tokenizer_of,
)
from mmlens.models.llava import LLAVA_STYLE_PATHS

_SLOT = re.compile(r"\s*" + re.escape(IMAGE_SLOT) + r"\s*")


@dataclass(frozen=True)
class PaliGemmaAdapter(Adapter):
    """PaliGemma: a prefix of square patch grids, one per image, each covering the whole image."""

    def format_prompt(self, prompt: str, n_images: int) -> str:
        """Check the slots, then put one ``<image>`` per image in front of the text, as PaliGemma expects.

        Example:
            >>> PALIGEMMA.format_prompt("compare <image> and <image> please", 2)
            '<image><image>compare and please'
        """
        super().format_prompt(prompt, n_images)
        if not n_images:
            # The processor refuses text without images; say so in one line.
            raise MmlensError("PaliGemma needs an image: write <image> in the prompt and pass one")
        return self.processor_slot * n_images + _SLOT.sub(" ", prompt).strip()

    def model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The processor's inputs without its ``labels`` (all -100 without a suffix: a NaN loss on every forward).

        Example:
            >>> sorted(PALIGEMMA.model_inputs({"input_ids": 1, "labels": -100}))
            ['input_ids']
        """
        return {key: value for key, value in inputs.items() if key != "labels"}

    def appended_value(self, key: str) -> int:
        """Appended tokens are the causal suffix: ``token_type_ids`` 1 there (0 marks the bidirectional prefix).

        Example:
            >>> PALIGEMMA.appended_value("token_type_ids"), PALIGEMMA.appended_value("other")
            (1, 0)
        """
        return 1 if key == "token_type_ids" else 0

    def layout(self, inputs: dict[str, Any], image_sizes: list[list[tuple[int, int]]], processor: Any) -> TokenLayout:
        image_token = getattr(processor, "image_token", None) or self.image_token
        token_id = tokenizer_of(processor).convert_tokens_to_ids(image_token)
        per_image = int(processor.image_seq_length)
        side = math.isqrt(per_image)
        if side * side != per_image:
            raise MmlensError(f"image_seq_length {per_image} is not a square patch grid")
        images, tokens = [], []
        for b, (sizes, row_runs) in enumerate(zip(image_sizes, image_token_runs(inputs["input_ids"], token_id))):
            # Images follow each other in one run: cut it into image_seq_length chunks.
            positions = [p for start, end in row_runs for p in range(start, end)]
            if len(positions) != per_image * len(sizes):
                raise MmlensError(f"row {b}: {len(positions)} image tokens for {len(sizes)} image(s) of {per_image}")
            row_images, row_tokens = [], []
            for index, (height, width) in enumerate(sizes):
                box = Box(0.0, 0.0, float(width), float(height))  # a plain resize to the square: nothing cropped
                row_images.append(ImageInfo(size=(height, width), views=[View(side, side, box)]))
                row_tokens += grid_tokens(positions[index * per_image:(index + 1) * per_image], index, 0, side, side)
            images.append(row_images)
            tokens.append(row_tokens)
        return layout_from_images(inputs, processor, image_token, images, tokens)


# PaliGemma's projector is a single linear: no hidden activation to call neurons.
PALIGEMMA = PaliGemmaAdapter(family="paligemma", model_types=("paligemma",),
                             **{**LLAVA_STYLE_PATHS, "projector_neurons": None})
