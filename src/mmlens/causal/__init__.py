"""Which components carry the answer: activation patching, causal tracing (FCCT) and injection (IRI).

- :func:`patch`: copy activations from a source run into a target run at sites and positions.
- :func:`trace`: clean, corrupted and patched runs; recovery rates per component,
  layer and token group, as a :class:`CausalTrace`. Batched: many patch
  conditions per pass, the vision tower once.
- :func:`plan_injection` / :func:`inject`: add the most causal layers'
  last-token outputs into later layers, also during generation.

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_sample
    >>> model = mmlens.load("tiny-llava")
    >>> trace(model, make_sample("test", 0, "colour")).groups[-1]
    'last'
"""

from mmlens.causal.groups import GROUPS, object_positions, token_groups, word_positions
from mmlens.causal.injection import DEFAULT_LAMBDAS, InjectionPlan, inject, injection_edits, plan_injection
from mmlens.causal.patching import patch, patch_edits, position_mask, record
from mmlens.causal.replay import LayerReplay, record_layers
from mmlens.causal.tracing import COMPONENTS, CausalTrace, noisy_pixels, trace

__all__ = [
    "COMPONENTS",
    "DEFAULT_LAMBDAS",
    "GROUPS",
    "CausalTrace",
    "InjectionPlan",
    "LayerReplay",
    "inject",
    "injection_edits",
    "noisy_pixels",
    "object_positions",
    "patch",
    "patch_edits",
    "plan_injection",
    "position_mask",
    "record",
    "record_layers",
    "token_groups",
    "trace",
    "word_positions",
]
