"""Where the modalities meet: attention mass from the answer position, and attention knockout.

**Flow**: per layer and head, the share of the answer position's attention
that lands on image, text and special tokens (padding gets none), read from
the eager attention probabilities.

**Knockout** (after Geva et al.'s attention knockout): block attention from
the answer position to chosen key positions (all image tokens, or only the
object's) in a window of layers, and watch the answer probability. Blocking
edits the 4-D additive mask each attention module receives under eager
attention: the blocked ``[query, key]`` entries get the dtype's minimum, so
their probability after the softmax is exactly zero and nothing else moves.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-llava")
    >>> batch = model.prepare("<image> what colour ?", [Image.new("RGB", (64, 64))])
    >>> flow = attention_flow(model, batch)
    >>> bool(torch.allclose(flow.fractions.sum(-1), torch.ones(())))
    True
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from mmlens.errors import MmlensError
from mmlens.hooks import eager_attention, resolve
from mmlens.layout import Modality
from mmlens.readout import answer_token_ids
from mmlens.model import Batch, Model
from mmlens.models.decoder import record_decoder_call

MODALITIES: tuple[str, ...] = ("image", "text", "special")


@dataclass
class AttentionFlow:
    """``fractions[layer, row, head, m]``: share of the query's attention on modality ``MODALITIES[m]``."""

    model: str
    fractions: torch.Tensor  # (layers, batch, heads, 3)
    position: int
    modalities: tuple[str, ...] = MODALITIES

    def by_layer(self, row: int = 0) -> torch.Tensor:
        """Mean over heads: ``(layers, 3)``."""
        return self.fractions[:, row].mean(1)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: per row, layer and head the three fractions."""
        return {"model": self.model, "position": self.position, "modalities": list(self.modalities),
                "fractions": [[[[round(float(v), 6) for v in head] for head in layer[b]] for layer in self.fractions]
                              for b in range(self.fractions.shape[1])]}


@dataclass
class Knockout:
    """Answer probability with attention from the answer position blocked, per layer window and key group.

    ``probability[w, g, row]`` for the window starting at ``window_starts[w]``
    and key group ``groups[g]``; ``baseline[row]`` with nothing blocked.
    """

    model: str
    groups: list[str]
    window: int
    window_starts: list[int]
    probability: torch.Tensor  # (windows, groups, batch)
    baseline: torch.Tensor  # (batch,)
    answer_ids: torch.Tensor  # (batch,)

    @property
    def change(self) -> torch.Tensor:
        """``probability - baseline``, ``(windows, groups, batch)``."""
        return self.probability - self.baseline

    def to_json(self) -> dict[str, Any]:
        """Plain JSON of the sweep."""
        return {"model": self.model, "groups": self.groups, "window": self.window,
                "window_starts": self.window_starts, "baseline": self.baseline.tolist(),
                "probability": self.probability.tolist(), "answer_ids": self.answer_ids.tolist()}


def attention_flow(model: Model, batch: Batch, position: int = -1) -> AttentionFlow:
    """Per layer and head, the attention mass from ``position`` to image, text and special tokens.

    Only the query row is kept inside the hook: full attention maps of a real
    model take gigabytes.

    Example:
        >>> attention_flow(model, batch).fractions.shape[-1]
        3
    """
    seq = batch.input_ids.shape[1]
    index = position % seq
    modality = batch.layout.modality.to(model.device)
    onehot = torch.stack([modality == int(Modality.IMAGE), modality == int(Modality.TEXT),
                          modality == int(Modality.SPECIAL)], -1).float()  # (batch, seq, 3)
    rows: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            if not isinstance(output, tuple) or len(output) < 2 or output[1] is None:
                raise MmlensError(f"layer {layer}: the attention module returned no probabilities in eager mode")
            rows[layer] = output[1][:, :, index].detach().float()  # (batch, heads, keys)
        return hook

    with ExitStack() as stack, torch.no_grad():
        stack.enter_context(eager_attention(model))
        for layer in range(model.n_layers):
            module = resolve(model, f"lm.L{layer}.attn_probs").module
            handle = module.register_forward_hook(keep(layer))
            stack.callback(handle.remove)
        model.forward(batch, use_cache=False)
    fractions = torch.stack([torch.einsum("bhk,bkm->bhm", rows[i], onehot) for i in range(model.n_layers)])
    return AttentionFlow(model.name, fractions.cpu(), index)


@contextmanager
def block_attention(model: Model, blocked: Mapping[int, torch.Tensor], query: int = -1) -> Iterator[None]:
    """Inside the block, queries at ``query`` cannot attend to the keys ``blocked[layer]`` (``(rows, seq)`` bool).

    Works for whole forwards, recorded decoder replays (rows may be stacked
    copies of a batch) and generation (the query is then the newest token).
    Attention runs eagerly inside the block, so the mask is a 4-D float tensor.

    Example:
        >>> keys = batch.layout.mask(Modality.IMAGE)
        >>> with block_attention(model, {0: keys, 1: keys}):
        ...     out = model.forward(batch)
    """
    with ExitStack() as stack:
        stack.enter_context(eager_attention(model))
        for layer, keys in blocked.items():
            module = resolve(model, f"lm.L{layer}.attn").module
            handle = module.register_forward_pre_hook(_mask_editor(keys, query, layer), with_kwargs=True)
            stack.callback(handle.remove)
        yield


def _mask_editor(keys: torch.Tensor, query: int, layer: int):
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        mask = kwargs.get("attention_mask")
        if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or not mask.is_floating_point():
            raise MmlensError(f"layer {layer}: expected a 4-D float attention mask under eager attention, got "
                              f"{type(mask).__name__}")
        rows, key_len = mask.shape[0], mask.shape[-1]
        block = keys.to(mask.device).bool()
        if block.shape[-1] != key_len:  # generation with a cache: keys of the prompt only
            block = torch.nn.functional.pad(block, (0, key_len - block.shape[-1]))
        block = block.expand(rows, key_len) if block.shape[0] == 1 else block
        if block.shape[0] != rows:
            raise MmlensError(f"layer {layer}: a block mask for {block.shape[0]} rows, the pass has {rows}")
        # A copy: transformers shares one mask tensor between all layers.
        edited = mask.expand(rows, *mask.shape[1:]).clone()
        row_view = edited[:, :, query, :]  # (rows, heads-or-1, keys)
        row_view.masked_fill_(block[:, None, :], torch.finfo(edited.dtype).min)
        return args, {**kwargs, "attention_mask": edited}

    return hook


def knockout(
    model: Model,
    batch: Batch,
    groups: Mapping[str, torch.Tensor],
    window: int = 1,
    answer: str | Sequence[str] | torch.Tensor | None = None,
    chunk: int = 64,
) -> Knockout:
    """Block attention from the last position to each key group, for each window of ``window`` layers.

    ``groups`` maps a name to a ``(batch, seq)`` bool mask of key positions.
    The (window, group) conditions run as stacked copies of the batch through
    replays of the language model (the vision tower runs once), ``chunk`` rows per pass.

    Example:
        >>> result = knockout(model, batch, {"image": batch.layout.mask(Modality.IMAGE)}, window=1)
        >>> result.probability.shape  # (windows, groups, batch)
        torch.Size([2, 1, 1])
    """
    call = record_decoder_call(model, batch)
    rows, seq = call.batch_size, call.embeds.shape[1]
    with torch.no_grad():
        logits = call.logits(call.embeds, positions=[-1])[:, 0]
    answer_ids = answer_token_ids(model, answer, logits, rows).to(logits.device)
    baseline = torch.softmax(logits.float(), -1).gather(-1, answer_ids[:, None])[:, 0]
    starts = list(range(0, max(1, model.n_layers - window + 1)))
    names = list(groups)
    conditions = [(start, name) for start in starts for name in names]
    per_pass = max(1, chunk // rows)
    probs = []
    for first in range(0, len(conditions), per_pass):
        part = conditions[first:first + per_pass]
        blocked: dict[int, torch.Tensor] = {}
        for c, (start, name) in enumerate(part):
            for layer in range(start, min(model.n_layers, start + window)):
                keys = blocked.setdefault(layer, torch.zeros(len(part) * rows, seq, dtype=torch.bool))
                keys[c * rows:(c + 1) * rows] = groups[name].bool()
        with torch.no_grad(), block_attention(model, blocked):
            out = call.logits(call.embeds.repeat(len(part), 1, 1), positions=[-1])[:, 0]
        probs.append(torch.softmax(out.float(), -1).gather(-1, answer_ids.repeat(len(part))[:, None])[:, 0])
    probability = torch.cat(probs).view(len(starts), len(names), rows)
    return Knockout(model.name, names, window, starts, probability.cpu(), baseline.cpu(), answer_ids.cpu())
