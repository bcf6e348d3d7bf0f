"""Neurons: modality-specific (MINER), domain-specific (MMNeuron) and coupled (DEAN).

Example:
    >>> import mmlens
    >>> from mmlens.data.shapes import make_dataset
    >>> from mmlens.neurons import modality_scores, select_modality_neurons
    >>> model = mmlens.load("tiny-llava")
    >>> chosen = select_modality_neurons(modality_scores(model, make_dataset("val", 4), progress=False))
    >>> with chosen.where(label="image").deactivate(model):
    ...     _ = model.forward(model.prepare("<image> hi", [make_dataset("val", 1)[0].image]))
"""

from mmlens.neurons.coupled import WeightSet, coupled_indices, coupled_weights, select_coupled, weight_importance
from mmlens.neurons.domain import DomainScores, domain_scores, select_domain_neurons
from mmlens.neurons.modality import (
    BUDGETS,
    STATISTICS,
    ModalityScores,
    modality_scores,
    parse_weights,
    random_neurons,
    select_modality_neurons,
)
from mmlens.neurons.neuron_set import NeuronSet
from mmlens.neurons.sites import neuron_sites, neuron_width
from mmlens.neurons.top import TopActivations, top_activations

__all__ = [
    "BUDGETS",
    "STATISTICS",
    "DomainScores",
    "ModalityScores",
    "NeuronSet",
    "TopActivations",
    "WeightSet",
    "coupled_indices",
    "coupled_weights",
    "domain_scores",
    "modality_scores",
    "neuron_sites",
    "neuron_width",
    "parse_weights",
    "random_neurons",
    "select_coupled",
    "select_domain_neurons",
    "select_modality_neurons",
    "top_activations",
    "weight_importance",
]
