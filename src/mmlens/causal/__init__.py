"""Which components carry the answer: activation patching, causal tracing (FCCT) and injection (IRI).

- :func:`patch`: copy activations from a source run into a target run at sites and positions.
- :func:`trace`: clean, corrupted and patched runs; recovery rates per component,
  layer and token group, as a :class:`CausalTrace`. Batched: many patch
  conditions per pass, the vision tower once.
- :func:`plan_injection` / :func:`inject`: add the most causal layers'
  last-token outputs into later layers, also during generation.
- :func:`knockout_heads` / :func:`patch_heads` / :func:`attribution_patching`:
  layer x head grids (:class:`HeadGrid`) of ablating, patching or estimating every head.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("tiny-llava")
    >>> trace(model, make_sample("test", 0, "colour")).groups[-1]
    'last'
"""

from mmlens.causal.attribution_patching import attribution_patching
from mmlens.causal.groups import GROUPS, object_positions, token_groups, word_positions
from mmlens.causal.head_grid import HeadGrid
from mmlens.causal.heads import knockout_heads, patch_heads
from mmlens.causal.injection import DEFAULT_LAMBDAS, InjectionPlan, inject, injection_edits, plan_injection
from mmlens.causal.patching import patch, patch_edits, position_mask, record
from mmlens.causal.replay import LayerReplay, record_layers
from mmlens.causal.tracing import COMPONENTS, CausalTrace, noisy_pixels, trace

__all__ = [
    "COMPONENTS",
    "DEFAULT_LAMBDAS",
    "GROUPS",
    "CausalTrace",
    "HeadGrid",
    "InjectionPlan",
    "LayerReplay",
    "attribution_patching",
    "inject",
    "injection_edits",
    "knockout_heads",
    "noisy_pixels",
    "object_positions",
    "patch",
    "patch_edits",
    "patch_heads",
    "plan_injection",
    "position_mask",
    "record",
    "record_layers",
    "token_groups",
    "trace",
    "word_positions",
]
