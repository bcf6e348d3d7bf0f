"""The architecture facts of one model family, in one small declarative object.

Everything above ``models/`` asks an :class:`Adapter` where things are (decoder
layers, MLP activation, final norm, unembedding, vision tower, projector) and
how a prepared batch is laid out (:meth:`Adapter.layout`); nothing above it
knows a family.

Module paths are dotted attribute paths from the top Hugging Face model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from mmlens.errors import MmlensError
from mmlens.layout import ImageInfo, TokenLayout

#: The image slot users write in prompts, whatever the family.
IMAGE_SLOT = "<image>"


@dataclass(frozen=True)
class Adapter:
    """Where a family keeps its parts, relative to the top model.

    Subclasses override :meth:`layout` (and :meth:`format_prompt` where the
    family's processor wants other slot text than ``<image>``;
    :meth:`model_inputs` and :meth:`appended_value` where the family's
    processor or model has its own per-token inputs).
    """

    family: str
    model_types: tuple[str, ...]
    decoder_layers: str
    final_norm: str
    unembed: str = "lm_head"
    embed_tokens: str | None = None
    attn: str = "self_attn"  # relative to a decoder layer
    attn_out: str | None = "o_proj"  # relative to ``attn``: its input is the heads' outputs, concatenated
    mlp: str = "mlp"
    neurons: str = "mlp.down_proj"  # the MLP activation is this module's input
    mlp_gate: str | None = "mlp.gate_proj"  # gated MLPs: act(gate(x)) * up(x); None where ungated
    mlp_act: str | None = "mlp.act_fn"
    vision_layers: str | None = None
    vision_attn: str = "self_attn"
    vision_attn_out: str | None = "out_proj"  # relative to ``vision_attn``; None where heads are fused
    vision_mlp: str = "mlp"
    vision_neurons: str | None = "mlp.fc2"  # relative to a vision layer; its input is the MLP activation
    vision_probs: bool = True  # False where the tower's attention never forms probabilities (packed varlen kernels)
    projector: str | None = None
    projector_output: str = "last_hidden_state"  # which field, when the projector returns a ModelOutput
    projector_neurons: str | None = None  # relative to the projector; its input is the hidden activation
    image_token: str | None = None  # the token the processor repeats per image feature
    processor_slot: str = IMAGE_SLOT  # what the family's processor expects per image
    positions_from_mask: bool = True  # False where the model derives positions itself (M-RoPE)

    @property
    def multimodal(self) -> bool:
        return self.vision_layers is not None

    # ---- prompts ------------------------------------------------------
    def format_prompt(self, prompt: str, n_images: int) -> str:
        """Check the prompt's image slots against ``n_images`` and write them the family's way.

        Example:
            >>> adapter = Adapter("llava", ("llava",), "model.language_model.layers", "model.language_model.norm",
            ...                   vision_layers="model.vision_tower.vision_model.encoder.layers")
            >>> adapter.format_prompt("<image> what colour is the circle ?", 1)
            '<image> what colour is the circle ?'
        """
        slots = prompt.count(IMAGE_SLOT)
        if n_images and not self.multimodal:
            raise MmlensError(f"{self.family} is a text-only model: it takes no images")
        if n_images and slots == 0:
            raise MmlensError(f"the prompt has no image slot: write {IMAGE_SLOT} where the image goes")
        if n_images > slots:
            raise MmlensError(f"{n_images} images but only {slots} {IMAGE_SLOT} slot(s) in the prompt")
        if slots > n_images:
            raise MmlensError(f"the prompt has {slots} {IMAGE_SLOT} slot(s) but {n_images} image(s) were given")
        return prompt.replace(IMAGE_SLOT, self.processor_slot) if n_images else prompt

    # ---- inputs -------------------------------------------------------
    def model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The processor's output as the model's forward should take it. The base class keeps everything.

        Example:
            >>> Adapter("llama", ("llama",), "model.layers", "model.norm").model_inputs({"input_ids": 1})
            {'input_ids': 1}
        """
        return dict(inputs)

    def appended_value(self, key: str) -> int:
        """The value a per-token input ``key`` (other than ids and mask) takes at tokens appended for teacher forcing.

        The base class writes 0 (e.g. ``token_type_ids`` of ordinary text).

        Example:
            >>> Adapter("llama", ("llama",), "model.layers", "model.norm").appended_value("token_type_ids")
            0
        """
        return 0

    # ---- layout -------------------------------------------------------
    def layout(self, inputs: dict[str, Any], image_sizes: list[list[tuple[int, int]]], processor: Any) -> TokenLayout:
        """Where every token of ``inputs`` comes from. The base class knows only text."""
        special = _special_positions(inputs["input_ids"], processor, self.image_token)
        return TokenLayout.build(
            seq_len=inputs["input_ids"].shape[1],
            images=[[] for _ in image_sizes],
            image_tokens=[[] for _ in image_sizes],
            special=special,
            pad=_pad_positions(inputs),
        )


# ---- helpers shared by the family adapters --------------------------------
def tokenizer_of(processor: Any) -> Any:
    """The tokenizer inside a processor (or the processor itself for text-only models)."""
    return getattr(processor, "tokenizer", processor)


def _pad_positions(inputs: dict[str, Any]) -> list[list[int]]:
    mask = inputs.get("attention_mask")
    if mask is None:
        return [[] for _ in range(inputs["input_ids"].shape[0])]
    return [(row == 0).nonzero().flatten().tolist() for row in mask]


def _special_positions(input_ids: torch.Tensor, processor: Any, image_token: str | None) -> list[list[int]]:
    """Positions of the tokenizer's special tokens (BOS, EOS, image markers, ...), image patches excluded."""
    tokenizer = tokenizer_of(processor)
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(token, "special", False):
            special_ids.add(tokenizer.convert_tokens_to_ids(str(token)))
    if image_token is not None:
        special_ids.discard(tokenizer.convert_tokens_to_ids(image_token))
    ids = torch.tensor(sorted(special_ids), dtype=input_ids.dtype)
    return [torch.isin(row, ids).nonzero().flatten().tolist() for row in input_ids]


def runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of True in a 1-D boolean mask, end exclusive.

    Example:
        >>> runs(torch.tensor([0, 1, 1, 0, 1], dtype=torch.bool))
        [(1, 3), (4, 5)]
    """
    flags = torch.cat([torch.zeros(1, dtype=torch.int8), mask.to(torch.int8), torch.zeros(1, dtype=torch.int8)])
    edges = (flags[1:] - flags[:-1]).nonzero().flatten().tolist()
    return list(zip(edges[0::2], edges[1::2]))


def grid_tokens(
    positions: Sequence[int], image: int, view: int, rows: int, cols: int
) -> list[tuple[int, int, int, int, int]]:
    """Row-major ``(position, image, view, row, col)`` tuples for a rows x cols grid."""
    if len(positions) != rows * cols:
        raise ValueError(f"{len(positions)} image tokens for a {rows}x{cols} grid")
    return [(p, image, view, k // cols, k % cols) for k, p in enumerate(positions)]


def layout_from_images(
    inputs: dict[str, Any],
    processor: Any,
    image_token: str,
    images: list[list[ImageInfo]],
    tokens: list[list[tuple[int, int, int, int, int]]],
    extra_special: list[list[int]] | None = None,
) -> TokenLayout:
    """Finish a family's layout: add special and padding positions to its image tokens."""
    special = _special_positions(inputs["input_ids"], processor, image_token)
    if extra_special is not None:
        special = [s + e for s, e in zip(special, extra_special)]
    return TokenLayout.build(
        seq_len=inputs["input_ids"].shape[1], images=images, image_tokens=tokens, special=special,
        pad=_pad_positions(inputs),
    )


def image_token_runs(input_ids: torch.Tensor, token_id: int) -> list[list[tuple[int, int]]]:
    """Per batch row, the runs of ``token_id`` positions."""
    return [runs(row == token_id) for row in input_ids]

