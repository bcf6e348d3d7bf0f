"""The decoder as a graph of nodes: embeddings, attention heads, MLPs, read by the logits.

Circuit methods need what a layer-level forward cannot give: every head's own
output in the residual stream, an input per node (so that a gradient, or an
ablation, reaches one node through one edge), frozen attention probabilities
and norm scales. :class:`DecoderGraph` runs a LLaMA-style decoder (pre-norm
RMSNorm, rotary attention, gated MLP, sequential attention then MLP) from the
model's own modules and weights, node by node; it checks on every model that
its logits match the model's own, and refuses other decoders in one line.
Tested on LLaMA (LLaVA, shapes-llava), Idefics3/SmolVLM's LLaMA text model,
Qwen2-VL / Qwen2.5-VL (q/k/v biases; M-RoPE positions, which the model's own
rotary embedding turns into cos/sin from the recorded 3-row position ids) and
PaliGemma (Gemma's ``1 + w`` norms; the recorded 4-D mask, bidirectional over
the prefix).

Nodes, in order: ``embed``, then per layer ``L{i}.H{j}`` for each head and
``L{i}.MLP``. Readers: each head, each MLP, and ``logits``. A reader reads
every node before its own group (heads of one layer run in parallel).

Example:
    >>> import mmlens
    >>> from mmlens.models.decoder import record_decoder_call
    >>> model = mmlens.load("tiny-llama")
    >>> graph = DecoderGraph(model)
    >>> run = graph.run(record_decoder_call(model, model.prepare("a red circle")))
    >>> graph.nodes[:2], run.outputs.shape[0] == len(graph.nodes)
    (['embed', 'L0.H0'], True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mmlens.errors import MmlensError
from mmlens.model import Model
from mmlens.models.decoder import DecoderCall, stack_copies
from mmlens.models.llama_parts import LayerParts, additive_mask, decoder_parts, norm_weight, rms_scale

#: What a run can take from another run instead of computing it.
FREEZABLE = ("probs", "norms")
#: An edit of node outputs: ``(node index, output (rows, seq, hidden)) -> output``.
NodeEdit = Callable[[int, torch.Tensor], torch.Tensor]
#: A reader's input from the stacked outputs so far ``(nodes, rows, seq, hidden)`` and the reader's index.
InputRule = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass
class GraphRun:
    """One pass of the graph: node outputs and what CD-T freezes (norm scales, attention probabilities)."""

    outputs: torch.Tensor  # (nodes, rows, seq, hidden): each node's write into the residual stream
    probs: list[torch.Tensor]  # per layer (rows, heads, seq, seq)
    attn_scale: list[torch.Tensor]  # per layer (rows, seq, 1): 1 / rms of the attention's input
    mlp_scale: list[torch.Tensor]  # per layer (rows, seq, 1): 1 / rms of the MLP's input
    mlp_inputs: list[torch.Tensor]  # per layer (rows, seq, hidden): the normed input of the MLP
    final: torch.Tensor  # (rows, seq, hidden): the residual stream the final norm reads
    final_scale: torch.Tensor  # (rows, seq, 1)
    logits: torch.Tensor  # (rows, vocab) at the last position


class DecoderGraph:
    """A LLaMA-style decoder of ``model`` as nodes and readers (see the module docstring)."""

    def __init__(self, model: Model):
        self.model = model
        parts = decoder_parts(model)  # refuses, in one line, a decoder that is not LLaMA-style
        self.parts = parts
        self.layers = parts.layers
        self.final_norm, self.unembed = parts.final_norm, parts.unembed
        self.n_heads, self.head_dim, self.groups = parts.n_heads, parts.head_dim, parts.groups
        self.scaling = parts.scaling
        self.nodes = ["embed"] + [name for i in range(len(self.layers))
                                  for name in [f"L{i}.H{j}" for j in range(self.n_heads)] + [f"L{i}.MLP"]]
        self.readers = [n for n in self.nodes[1:]] + ["logits"]
        # Reader r reads nodes [0, upstream[r]).
        self.upstream = [self._first_of_group(i) for i in range(1, len(self.nodes))] + [len(self.nodes)]
        self.edges = [(u, r) for r, stop in enumerate(self.upstream) for u in range(stop)]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def node_index(self, layer: int, head: int | None) -> int:
        """Index of head ``head`` (or the MLP when None) of ``layer`` in :attr:`nodes`."""
        return 1 + layer * (self.n_heads + 1) + (self.n_heads if head is None else head)

    def _first_of_group(self, node: int) -> int:
        layer, slot = divmod(node - 1, self.n_heads + 1)
        return 1 + layer * (self.n_heads + 1) + (0 if slot < self.n_heads else self.n_heads)

    def edge_names(self) -> list[str]:
        """``"upstream -> reader"`` for every edge, in :attr:`edges` order."""
        return [f"{self.nodes[u]} -> {self.readers[r]}" for u, r in self.edges]

    # -- the forward pass -------------------------------------------------------------------------------------

    def run(self, call: DecoderCall, embeds: torch.Tensor | None = None, *, edit: NodeEdit | None = None,
            inputs: InputRule | None = None, keep_inputs: list[torch.Tensor] | None = None,
            frozen: GraphRun | None = None, freeze: tuple[str, ...] = FREEZABLE) -> GraphRun:
        """Run the graph on ``embeds`` (default: the call's), a stack of copies of the call's rows.

        ``edit`` changes node outputs as they are computed (patching);
        ``inputs`` builds each reader's input from the outputs so far (edge
        ablation; default: their sum, the residual stream); reader inputs are
        appended to ``keep_inputs`` with ``retain_grad`` (edge gradients).
        With ``frozen`` (a one-row run), what ``freeze`` names ("probs":
        attention probabilities, "norms": norm scales) is that run's instead
        of computed (what CD-T linearises).
        """
        probs_from = frozen if "probs" in freeze else None
        frozen = frozen if "norms" in freeze else None  # from here on: the run whose norm scales are used
        embeds = (call.embeds if embeds is None else embeds).float()
        copies = embeds.shape[0] // call.batch_size
        kwargs = stack_copies(call.kwargs, call.batch_size, copies)
        cos, sin = self.parts.rotary(embeds, kwargs)
        mask = additive_mask(embeds, kwargs)
        outputs: list[torch.Tensor] = [edit(0, embeds) if edit else embeds]
        probs, attn_scale, mlp_scale, mlp_inputs = [], [], [], []
        reader = 0
        for i, layer in enumerate(self.layers):
            x = self._read(outputs, reader, inputs, keep_inputs, heads=True)  # (rows, heads, seq, hidden)
            scale = rms_scale(x, layer.attn_norm) if frozen is None else frozen.attn_scale[i][:, None]
            attn_scale.append(scale[:, 0])
            heads, p = self.heads(layer, x * scale * norm_weight(layer.attn_norm), cos, sin, mask,
                                  None if probs_from is None else probs_from.probs[i].expand(x.shape[0], -1, -1, -1))
            probs.append(p)
            for j in range(self.n_heads):
                node = len(outputs)
                outputs.append(edit(node, heads[:, j]) if edit else heads[:, j])
            reader += self.n_heads
            x = self._read(outputs, reader, inputs, keep_inputs, heads=False)
            scale = rms_scale(x, layer.mlp_norm) if frozen is None else frozen.mlp_scale[i]
            normed = x * scale * norm_weight(layer.mlp_norm)
            mlp_scale.append(scale)
            mlp_inputs.append(normed)
            out = layer.mlp(normed.to(_dtype(layer.mlp))).float()
            outputs.append(edit(len(outputs), out) if edit else out)
            reader += 1
        final = self._read(outputs, reader, inputs, keep_inputs, heads=False)
        final_scale = rms_scale(final, self.final_norm) if frozen is None else frozen.final_scale
        last = final[:, -1] * final_scale[:, -1] * norm_weight(self.final_norm)
        logits = self.unembed(last.to(_dtype(self.unembed))).float()
        return GraphRun(torch.stack(outputs), probs, attn_scale, mlp_scale, mlp_inputs, final, final_scale, logits)

    def residual(self, run: GraphRun, reader: int) -> torch.Tensor:
        """The residual stream reader ``reader`` reads in ``run`` ``(rows, seq, hidden)``: its upstream nodes plus biases.

        Example:
            >>> graph.residual(run, len(graph.readers) - 1).shape == run.final.shape  # doctest: +SKIP
            True
        """
        return run.outputs[:self.upstream[reader]].sum(0) + self._biases(reader)

    def _read(self, outputs: list[torch.Tensor], reader: int, rule: InputRule | None,
              keep: list[torch.Tensor] | None, heads: bool) -> torch.Tensor:
        count = self.n_heads if heads else 1
        stacked = torch.stack(outputs)
        if rule is None:
            x = stacked.sum(0) + self._biases(reader)
            x = x.unsqueeze(1).repeat(1, count, 1, 1) if heads else x
        else:
            parts = [rule(stacked, reader + k) + self._biases(reader + k) for k in range(count)]
            x = torch.stack(parts, 1) if heads else parts[0]
        if keep is not None and x.requires_grad:
            x.retain_grad()
            keep.append(x)
        return x

    def _biases(self, reader: int) -> torch.Tensor | float:
        """The output-projection biases written before reader ``reader`` (none in LLaMA): constants, not nodes."""
        if reader == len(self.readers) - 1:
            done = self.n_layers
        else:
            layer, slot = divmod(reader, self.n_heads + 1)
            done = layer + (slot == self.n_heads)  # an MLP reads its own layer's attention
        biases = [part.o.bias for part in self.layers[:done] if part.o.bias is not None]
        return torch.stack(biases).float().sum(0) if biases else 0.0

    def heads(self, layer: LayerParts, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              mask: torch.Tensor, probs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each head's write into the residual stream ``(rows, heads, seq, hidden)`` and its probabilities.

        ``normed`` is ``(rows, heads, seq, hidden)``: each head reads its own input; ``probs`` given are used as they are.
        """
        v = self._project(layer.v, normed, True)
        if probs is None:
            q = self._project(layer.q, normed, False)
            k = self._project(layer.k, normed, True)
            q, k = self.parts.rotate(q, k, cos, sin)
            probs = (torch.einsum("bhqe,bhke->bhqk", q, k) * self.scaling + mask).softmax(-1)
        return self.write(layer, torch.einsum("bhqk,bhke->bhqe", probs, v)), probs

    def values(self, layer: LayerParts, normed: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """Per-head values ``(rows, heads, seq, head_dim)`` of a shared input ``(rows, seq, hidden)``."""
        return self._project(layer.v, normed.unsqueeze(1).expand(-1, self.n_heads, -1, -1), True,
                             bias=bias)

    def write(self, layer: LayerParts, mixed: torch.Tensor) -> torch.Tensor:
        """Per-head mixed values ``(rows, heads, seq, head_dim)`` through the head's slice of ``o_proj``."""
        weight = layer.o.weight.float().view(-1, self.n_heads, self.head_dim)  # (hidden, heads, head_dim)
        return torch.einsum("bhse,dhe->bhsd", mixed, weight)

    def _project(self, linear: torch.nn.Linear, normed: torch.Tensor, shared_kv: bool,
                 bias: bool = True) -> torch.Tensor:
        weight = linear.weight.float().view(-1, self.head_dim, linear.in_features)
        if shared_kv:
            weight = weight.repeat_interleave(self.groups, 0)
        out = torch.einsum("bhsd,hed->bhse", normed, weight)
        if bias and linear.bias is not None:
            b = linear.bias.float().view(-1, self.head_dim)
            out = out + (b.repeat_interleave(self.groups, 0) if shared_kv else b)[None, :, None]
        return out

    def check(self, call: DecoderCall, run: GraphRun, tolerance: float = 1e-3) -> None:
        """Raise one line unless the graph's last-position logits match the model's own."""
        with torch.no_grad():
            expected = call.logits(call.embeds, positions=[-1])[:, 0].float()
        error = (run.logits - expected).abs().max() / expected.abs().max().clamp_min(1e-6)
        if not torch.isfinite(error) or error > tolerance:
            raise MmlensError(f"{self.model.adapter.family}: this decoder ({type(self.model.decoder_layers[0]).__name__}) does not "
                              f"compute like a LLaMA-style decoder (relative logit error {float(error):.2g}); "
                              "circuits cannot decompose it")


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
