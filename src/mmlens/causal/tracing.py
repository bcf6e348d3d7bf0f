"""Causal tracing after FCCT: which component, at which layer and token group, carries the answer?

Three kinds of run, the answer probability read at the last position:

- **clean**: the original input;
- **corrupted**: Gaussian noise on the image pixels (default: ``noise`` = 3
  times the standard deviation of the batch's processed pixel values, the
  ROME choice for embeddings carried over to pixels), noise on the image
  tokens' decoder input embeddings (``corrupt="embeddings"``, 3 times their
  standard deviation), or a counterfactual image given as a prepared batch of
  the same token layout;
- **patched**: the corrupted run with one component (``resid`` hidden state,
  ``attn`` output, ``mlp`` output) at one layer (or a window of layers) restored
  to its clean value for one token group.

Recovery rate ``RR = (P_patched - P_corrupt) / (P_clean - P_corrupt)``.

Batched: the clean activations are recorded once; the corrupted language-model
call is recorded once (vision tower once) and replayed on stacked copies of
the batch (as many per pass as :func:`mmlens.budget.plan_passes` allows),
copy ``c`` restoring condition ``c`` through edits that touch only its rows.
Only the last position is unembedded, in every run.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("tiny-llava")
    >>> result = trace(model, make_sample("test", 0, "colour"))
    >>> result.recovery["resid"].shape  # (layers, groups)
    torch.Size([2, 6])
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from mmlens.budget import MemoryBudget, plan_passes
from mmlens.causal.groups import token_groups
from mmlens.causal.replay import LayerReplay, record_layers
from mmlens.causal.trace_result import CausalTrace
from mmlens.data.shapes_questions import object_region, object_words
from mmlens.errors import MmlensError, check_choices, check_count
from mmlens.hooks import Edit, capture, intervene
from mmlens.layout import Modality
from mmlens.model import Batch, Model
from mmlens.models.runtime import last_logits_only
from mmlens.readout import answer_token_ids, token_probabilities

COMPONENTS: tuple[str, ...] = ("resid", "attn", "mlp")
Condition = tuple[str, int, int]  # (component, layer, group index)


def trace(
    model: Model,
    inputs: Any,
    groups: dict[str, torch.Tensor] | None = None,
    *,
    answer: str | Sequence[str] | torch.Tensor | None = None,
    corrupt: str | Batch = "noise",
    noise: float = 3.0,
    components: Sequence[str] = COMPONENTS,
    window: int = 1,
    seed: int = 0,
    memory_budget: MemoryBudget = None,
    batched: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> CausalTrace:
    """Trace ``inputs`` (a prepared :class:`Batch` with ``groups``, or shapes samples) under ``corrupt``.

    ``groups`` maps names to ``(batch, seq)`` bool masks (see
    :func:`~mmlens.causal.groups.token_groups`); for shapes-world samples they
    come from the sample's target object and question words
    (:mod:`mmlens.data.shapes_questions`). ``answer`` is
    followed at the last position (default: the clean run's top token).
    ``batched=False`` runs one whole forward per condition, the slow reference.
    ``memory_budget`` (bytes or ``"2GB"``; :mod:`mmlens.budget`) sizes how many
    stacked conditions each replay holds; results do not depend on it.
    ``progress(done, total)`` is called after each pass.

    Example:
        >>> result = trace(model, batch, groups, corrupt="embeddings", components=["resid"])
        >>> sorted(result.recovery)
        ['resid']
    """
    window = check_count(window, "the tracing window (layers restored at once)")  # 0 would restore nothing
    batch, groups = _batch_and_groups(model, inputs, groups, seed)
    if not groups:
        raise MmlensError("tracing needs at least one token group to restore (see mmlens.causal.token_groups)")
    check_choices(components, COMPONENTS, "component")
    start = time.perf_counter()
    names = list(groups)
    n = model.n_layers
    # Too small a budget fails here, before any forward pass.
    plan_passes(model, 1, batch.input_ids.shape[1], memory_budget, rows=batch.input_ids.shape[0],
                what="causal tracing")
    sites = [f"lm.L{i}.{c}" for c in components for i in range(n)]
    with torch.no_grad():
        with capture(model, sites + ["lm.embed"]) as captured:
            # The last position's logits only: (seq, vocab) fp32 logits are 385 MB at 3,000 tokens.
            clean_logits = model.forward(batch, use_cache=False, **last_logits_only(model.hf)).logits[:, -1].float()
        clean = {site: captured[site] for site in sites}
        answer_ids = answer_token_ids(model, answer, clean_logits, batch.input_ids.shape[0]).to(clean_logits.device)
        corrupted, corruption, embed_edit = _corrupted(batch, captured["lm.embed"], corrupt, noise, seed)
        edits = {"lm.embed": embed_edit} if embed_edit is not None else {}
        conditions = [(c, layer, g) for c in components for layer in range(n) for g in range(len(names))]
        masks = torch.stack([groups[name].bool() for name in names])  # (groups, batch, seq)
        if batched:
            replay = record_layers(model, corrupted, edits)
            p_corrupt = token_probabilities(replay.logits(n, replay.inputs[n])[:, 0], answer_ids)
            p = _run_batched(model, replay, clean, masks, conditions, answer_ids, p_corrupt, window, memory_budget,
                             progress)
        else:
            with intervene(model, edits):
                p_corrupt = token_probabilities(
                    model.forward(corrupted, use_cache=False, **last_logits_only(model.hf)).logits[:, -1], answer_ids)
            p = _run_single(model, corrupted, edits, clean, masks, conditions, answer_ids, window, progress)
    p_clean = token_probabilities(clean_logits, answer_ids)
    rows = batch.input_ids.shape[0]
    p_patched = {c: torch.empty(rows, n, len(names)) for c in components}
    for (component, layer, g), values in zip(conditions, p):
        p_patched[component][:, layer, g] = values
    return CausalTrace(
        model=model.name, prompts=list(batch.prompts),
        answers=model.tokenizer.convert_ids_to_tokens(answer_ids.tolist()),
        answer_ids=answer_ids.cpu(), components=list(components), groups=names,
        group_sizes=masks.sum(-1).T.cpu(), p_clean=p_clean.cpu(), p_corrupt=p_corrupt.cpu(), p_patched=p_patched,
        corruption=corruption, window=window, seconds=time.perf_counter() - start,
    )


def _batch_and_groups(model: Model, inputs: Any, groups: dict[str, torch.Tensor] | None,
                      seed: int) -> tuple[Batch, dict[str, torch.Tensor]]:
    """A prepared batch and its groups; shapes samples bring their own ground truth."""
    if isinstance(inputs, Batch):
        if groups is None:
            raise MmlensError("tracing a prepared batch needs its token groups (see mmlens.causal.token_groups)")
        return inputs, groups
    samples = [inputs] if not isinstance(inputs, (list, tuple)) else list(inputs)
    batch = model.prepare([s.prompt for s in samples], [[s.image] for s in samples])
    if groups is None:
        regions = [object_region(s) for s in samples]
        words = [object_words(s) for s in samples]
        groups = token_groups(model, batch, regions, words, seed=seed)
    return batch, groups


def noisy_pixels(batch: Batch, noise: float = 3.0, seed: int = 0) -> tuple[Batch, float]:
    """``batch`` with Gaussian noise on its pixel values, and the noise's standard deviation.

    The standard deviation is ``noise`` times that of the batch's processed
    pixel values (the processor's normalisation makes it comparable across families).

    Example:
        >>> noisy, std = noisy_pixels(batch, noise=3.0)
        >>> noisy.inputs["pixel_values"].shape == batch.inputs["pixel_values"].shape
        True
    """
    pixels = batch.inputs.get("pixel_values")
    if pixels is None:
        raise MmlensError("noise on the image needs an image in the batch")
    generator = torch.Generator().manual_seed(seed)
    scale = noise * float(pixels.float().std())
    noisy = pixels + scale * torch.randn(pixels.shape, generator=generator).to(pixels.device, pixels.dtype)
    return Batch({**batch.inputs, "pixel_values": noisy}, batch.layout, batch.prompts, batch.images), scale


def _corrupted(batch: Batch, embeds: torch.Tensor, corrupt: str | Batch, noise: float,
               seed: int) -> tuple[Batch, dict[str, Any], Edit | None]:
    """The corrupted batch, a description of the corruption, and an edit of the decoder input (embedding noise)."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(corrupt, Batch):
        same = corrupt.input_ids.shape == batch.input_ids.shape
        if not same or not torch.equal(corrupt.layout.modality, batch.layout.modality):
            raise MmlensError("a counterfactual batch must have the clean batch's token layout "
                              "(same prompt, same image size)")
        return corrupt, {"kind": "counterfactual"}, None
    if corrupt == "noise":
        corrupted, scale = noisy_pixels(batch, noise, seed)
        return corrupted, {"kind": "noise", "on": "pixels", "noise": noise, "std": scale, "seed": seed}, None
    if corrupt == "embeddings":
        image = batch.layout.mask(Modality.IMAGE)
        if not image.any():
            raise MmlensError("noise on the image embeddings needs an image in the batch")
        scale = noise * float(embeds[image.to(embeds.device)].float().std())
        delta = scale * torch.randn(embeds.shape, generator=generator).to(embeds.device, embeds.dtype)
        delta = delta * image[..., None].to(delta.device, delta.dtype)

        def add_noise(value: torch.Tensor) -> torch.Tensor:
            copies = value.shape[0] // delta.shape[0]
            return value + delta.repeat(copies, 1, 1) if value.shape[1] == delta.shape[1] else value

        return batch, {"kind": "noise", "on": "embeddings", "noise": noise, "std": scale, "seed": seed}, add_noise
    raise MmlensError(f"unknown corruption {corrupt!r}: use 'noise', 'embeddings' or a counterfactual batch")


def _layers(layer: int, window: int, n: int) -> range:
    """The layers restored for a condition centred on ``layer``."""
    low = max(0, layer - window // 2)
    return range(low, min(n, low + window))


def _restore_edits(clean: dict[str, torch.Tensor], masks: torch.Tensor, conditions: Sequence[Condition],
                   window: int, n: int, offset: int = 0) -> dict[str, Edit]:
    """Edits restoring copy ``c`` of the stacked batch to clean values for condition ``c`` only.

    With ``offset``, the run holds positions ``offset ..`` only.
    """
    rows, seq = masks.shape[1:]
    where: dict[str, torch.Tensor] = {}
    for c, (component, layer, g) in enumerate(conditions):
        for restored in _layers(layer, window, n):
            site = f"lm.L{restored}.{component}"
            mask = where.setdefault(site, torch.zeros(len(conditions) * rows, seq, dtype=torch.bool))
            mask[c * rows:(c + 1) * rows] |= masks[g]

    def editor(site: str, mask: torch.Tensor) -> Edit:
        def edit(value: torch.Tensor) -> torch.Tensor:
            source = clean[site][:, offset:].to(value.device, value.dtype).repeat(len(conditions), 1, 1)
            return torch.where(mask[:, offset:].to(value.device)[..., None], source, value)

        return edit

    return {site: editor(site, mask) for site, mask in where.items()}


def _run_batched(model: Model, replay: LayerReplay, clean: dict[str, torch.Tensor], masks: torch.Tensor,
                 conditions: list[Condition], answer_ids: torch.Tensor, p_corrupt: torch.Tensor, window: int,
                 memory_budget: MemoryBudget, progress: Callable[[int, int], None] | None) -> list[torch.Tensor]:
    """P(answer) per condition: stacked copies resumed at the first restored layer, as many as the budget holds.

    Under a causal mask, positions before a group's first token never change:
    groups that start late in the sequence (question words, the last token)
    run on the positions from there on, the earlier keys and values as recorded.
    """
    n, rows, seq = model.n_layers, replay.batch_size, masks.shape[-1]
    out: dict[int, torch.Tensor] = {}
    plans: dict[tuple[int, int], list[int]] = {}
    offsets = _offsets(masks, seq)
    for index, (component, layer, g) in enumerate(conditions):
        restored = _layers(layer, window, n)
        # Exact shortcuts: an empty group, or a last-layer patch away from the last position, changes nothing.
        if not masks[g].any() or (restored.start == n - 1 and not masks[g][:, -1].any()):
            out[index] = p_corrupt
            continue
        # A hidden state restored at layer L is the input of layer L + 1: resume there.
        start = restored.start + 1 if component == "resid" else restored.start
        offset = offsets[g] if offsets[g] >= 2 and replay.suffix_allowed(offsets[g]) else 0  # BOS alone: not worth it
        plans.setdefault((start, offset), []).append(index)
    done = len(out)
    for (start, offset), indices in sorted(plans.items()):
        passes = plan_passes(model, len(indices), seq - offset, memory_budget, rows=rows, keys=seq,
                             what="causal tracing")

        def run_pass(first: int, stop: int, start: int = start, offset: int = offset,
                     indices: list[int] = indices) -> None:
            nonlocal done
            part = indices[first:stop]
            chosen = [conditions[i] for i in part]
            hidden = replay.inputs[start][:, offset:].repeat(len(part), 1, 1)
            for c, (component, layer, g) in enumerate(chosen):
                if component == "resid":
                    site = f"lm.L{start - 1}.resid"
                    where = masks[g][:, offset:].to(hidden.device)
                    source = clean[site][:, offset:].to(hidden.device, hidden.dtype)
                    hidden[c * rows:(c + 1) * rows][where] = source[where]
            if offset:
                replay.keys_values()  # recorded once, before any edit is in place
            with intervene(model, _restore_edits(clean, masks, chosen, window, n, offset)):
                logits = replay.logits(start, hidden, offset=offset)[:, 0]
            for i, values in zip(part, token_probabilities(logits, answer_ids).view(len(part), rows)):
                out[i] = values
            done += len(part)
            if progress is not None:
                progress(done, len(conditions))

        passes.run(run_pass)
    return [out[i] for i in range(len(conditions))]


def _offsets(masks: torch.Tensor, seq: int) -> dict[int, int]:
    """Per group, the first position its runs need; groups starting close together share one (fewer passes)."""
    firsts = {g: int(mask.any(0).nonzero()[0]) for g, mask in enumerate(masks) if mask.any()}
    chosen, anchor = {}, None
    for g, first in sorted(firsts.items(), key=lambda item: item[1]):
        if anchor is None or first - anchor >= seq // 4:
            anchor = first
        chosen[g] = anchor
    return chosen


def _run_single(model: Model, corrupted: Batch, edits: dict[str, Edit], clean: dict[str, torch.Tensor],
                masks: torch.Tensor, conditions: list[Condition], answer_ids: torch.Tensor, window: int,
                progress: Callable[[int, int], None] | None) -> list[torch.Tensor]:
    """P(answer) per condition, one whole forward (vision tower included) per condition."""
    out = []
    for index, condition in enumerate(conditions):
        with intervene(model, {**edits, **_restore_edits(clean, masks, [condition], window, model.n_layers)}):
            logits = model.forward(corrupted, use_cache=False, **last_logits_only(model.hf)).logits[:, -1]
            out.append(token_probabilities(logits, answer_ids))
        if progress is not None:
            progress(index + 1, len(conditions))
    return out
