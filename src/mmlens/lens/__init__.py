"""Look inside: what hidden states mean layer by layer, and where the modalities meet.

- :func:`logit_lens`: top-k tokens and entropy of every layer and position,
  image tokens included; the answer's rank and probability per layer.
- :func:`attention_flow`: attention mass from the answer position to image,
  text and special tokens, per layer and head.
- :func:`knockout` / :func:`block_attention`: block attention from the answer
  position to chosen tokens within a window of layers.

Example:
    >>> import mmlens
    >>> from PIL import Image
    >>> model = mmlens.load("tiny-llava")
    >>> batch = model.prepare("<image> what colour ?", [Image.new("RGB", (64, 64))])
    >>> logit_lens(model, batch).layer_names[-1]
    'L1'
"""

from mmlens.lens.attention_flow import MODALITIES, AttentionFlow, Knockout, attention_flow, block_attention, knockout
from mmlens.lens.logit_lens import LogitLens, logit_lens

__all__ = [
    "MODALITIES",
    "AttentionFlow",
    "Knockout",
    "LogitLens",
    "attention_flow",
    "block_attention",
    "knockout",
    "logit_lens",
]
