"""Audits of training data and models: backdoor filtering after BYE (:mod:`mmlens.audit.backdoor`).

Example:
    >>> from mmlens.audit import bye_filter
    >>> import numpy as np
    >>> bye_filter(np.full((20, 2), 3.0), [f"s{i}" for i in range(20)]).removed
    []
"""

from mmlens.audit.backdoor import (ByeResult, EntropyTable, MixtureFit, attention_entropies, bye_filter,
                                   fit_mixture, label_scores)

__all__ = ["ByeResult", "EntropyTable", "MixtureFit", "attention_entropies", "bye_filter", "fit_mixture",
           "label_scores"]
