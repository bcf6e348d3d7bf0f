"""Circuits: which heads and MLPs carry the answer, and along which edges.

- :func:`decompose`: contextual decomposition (CD-T): each head's and MLP's
  share of the answer logit that comes from a source (positions of the input).
- :func:`path_patch`: exhaustive path patching from the same source, the check.
- :func:`edge_scores` / :func:`faithfulness_curve`: edge attribution patching
  (EAP) on the graph of embeddings, heads, MLPs and logits, and how much of the
  clean-corrupt gap the top edges keep; :func:`find_circuit`, the fewest top
  edges that keep a target share of it, for one input and its corruption.

Example:
    >>> import mmlens
    >>> model = mmlens.load("tiny-llama")
    >>> decompose(model, model.prepare("a red circle"), [2]).components[0]
    'L0.H0'
"""

from mmlens.circuits.cdt import Decomposition, decompose
from mmlens.circuits.eap import Circuit, EdgeScores, FaithfulnessCurve, edge_scores, faithfulness_curve, find_circuit
from mmlens.circuits.graph import DecoderGraph
from mmlens.circuits.path_patching import PathPatching, path_patch

__all__ = ["Circuit", "DecoderGraph", "Decomposition", "EdgeScores", "FaithfulnessCurve", "PathPatching",
           "decompose", "edge_scores", "faithfulness_curve", "find_circuit", "path_patch"]
