"""What mmlens knows about transformers' runtime conventions, in one place (this package).

transformers renames its internals often (5.24 renamed the decoder layers'
``past_key_values`` keyword to ``cache``). Everything mmlens relies on at run
time lives here, and nothing outside this module touches it:

- the keyword under which a module takes its key/value cache, *read from the
  module's signature* (:func:`cache_keyword`), never assumed;
- cache stand-ins that record or prepend keys and values
  (:class:`KeyValueRecorder`, :class:`PrefixCache`);
- switching the attention implementation through the public
  ``set_attn_implementation`` (:func:`attention_implementation`);
- where attention probabilities come out of an attention module
  (:func:`attention_probabilities`), and the ``"mmlens"`` attention function
  registered with transformers' ``AttentionInterface`` that computes them only
  for the layers and query rows asked for (:func:`attention_rows`);
- edits of the additive attention mask (:func:`block_keys`);
- a decoder layer's recorded call and how to make it again (:class:`LayerCall`);
- computing a half-precision module in float32 one module at a time (:func:`compute_in_float32`).

The contract test (``tests/models/test_runtime.py``) checks every convention
on every tiny family, and on a stand-in layer whose cache keyword is a random
name, so a rename in transformers fails there first.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llama")
    >>> cache_keyword(model.decoder_layers[0]) in ("cache", "past_key_values")
    True
"""

from mmlens.models.runtime.precision import HALF, compute_in_float32, is_half  # noqa: F401
from mmlens.models.runtime.attention import (
    ATTENTION,
    RowRequest,
    additive_mask,
    attention_inputs,
    attention_probabilities,
    attention_rows,
    block_keys,
    blocked_keys,
    requested_rows,
    rows_of,
    with_probabilities,
)
from mmlens.models.runtime.implementation import (
    _all_equal,  # noqa: F401  (the contract test checks the switch with them)
    _implementations,  # noqa: F401
    attention_implementation,
    current_attention,
)
from mmlens.models.runtime.calls import (
    KeyValueRecorder,
    LayerCall,
    PrefixCache,
    blocks_later_keys,
    cache_keyword,
    causal_mask,
    replayable_kwargs,
)
from mmlens.models.runtime.devices import execution_device, last_logits_only, on_device_of

__all__ = [
    "ATTENTION", "HALF", "KeyValueRecorder", "LayerCall", "PrefixCache", "RowRequest", "additive_mask",
    "attention_implementation", "attention_inputs", "attention_probabilities", "attention_rows", "block_keys", "blocked_keys",
    "blocks_later_keys", "cache_keyword", "causal_mask", "compute_in_float32", "current_attention", "execution_device", "is_half",
    "last_logits_only", "on_device_of", "replayable_kwargs", "requested_rows", "rows_of", "with_probabilities",
]
