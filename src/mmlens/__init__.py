"""mmlens: explain and interpret multimodal large language models.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llava")
    >>> with mmlens.capture(model, ["lm.L0.resid"]) as captured:
    ...     _ = model.forward(model.prepare("hello"))
    >>> captured["lm.L0.resid"].shape[-1] == model.hf.config.text_config.hidden_size
    True
"""

from mmlens.attribution import Explanation, explain, explain_batch
from mmlens.box import Box
from mmlens.causal import CausalTrace, patch, trace
from mmlens.errors import MmlensError
from mmlens.hooks import Captured, capture, intervene
from mmlens.layout import ImageInfo, Modality, TokenLayout, View
from mmlens.model import Batch, Model
from mmlens.models.loading import load, wrap
from mmlens.neurons import NeuronSet
from mmlens.report.files import load_result

__all__ = [
    "Batch",
    "Box",
    "Captured",
    "CausalTrace",
    "Explanation",
    "ImageInfo",
    "MmlensError",
    "Modality",
    "Model",
    "NeuronSet",
    "TokenLayout",
    "View",
    "capture",
    "explain",
    "explain_batch",
    "intervene",
    "load",
    "load_result",
    "patch",
    "trace",
    "wrap",
]
__version__ = "0.1.0"
