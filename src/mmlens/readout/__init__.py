"""What every method reads off a model, in one place: methods share these and never import each other.

- :mod:`~mmlens.readout.targets`: which answer tokens to explain, teacher-forced
  (:class:`Targets`, :func:`build_targets`, :func:`same_targets`);
- :mod:`~mmlens.readout.logits`: unembedding hidden states (:func:`unembed`,
  a block of positions at a time: :func:`unembed_blocks`), the model's logits
  at some positions only (:func:`logits_at`), the answer's token id
  (:func:`answer_token_ids`), a token's probability (:func:`token_probabilities`);
- :mod:`~mmlens.readout.baselines`: what a hidden image token becomes
  (:class:`Baseline`, :func:`image_baseline`, :func:`hidden_images`);
- :mod:`~mmlens.readout.probabilities`: P(answer) with chosen image tokens
  hidden (:func:`answer_probabilities`).

Example:
    >>> import mmlens
    >>> from mmlens.readout import answer_token_ids, build_targets
    >>> model = mmlens.load("tiny-llama")
    >>> build_targets(model, model.prepare("a red circle"), answer="red").count
    1
    >>> answer_token_ids(model, "red", None, rows=2).shape
    torch.Size([2])
"""

from mmlens.readout.baselines import Baseline, embedding_baseline, hidden_images, image_baseline
from mmlens.readout.logits import answer_token_ids, logits_at, token_probabilities, unembed, unembed_blocks
from mmlens.readout.probabilities import answer_probabilities
from mmlens.readout.targets import SCORES, Targets, build_targets, same_targets

__all__ = [
    "SCORES",
    "Baseline",
    "Targets",
    "answer_probabilities",
    "answer_token_ids",
    "build_targets",
    "embedding_baseline",
    "hidden_images",
    "image_baseline",
    "logits_at",
    "same_targets",
    "token_probabilities",
    "unembed",
    "unembed_blocks",
]
