"""What each attribution method's numbers are, in words, for colour-bar labels and titles.

Methods that differentiate or perturb the answer's score say which score:
the answer's own, or ``logit('red') - logit('purple')`` in a contrast run
(``foil``). Attention-based maps do not depend on the score and say so by
naming only the attention they read.

Example:
    >>> score_label("attention")
    'attention weight (mean over heads, layers)'
    >>> score_label("occlusion", "red", "purple")
    "score drop when hidden: logit('red') − logit('purple')"
    >>> target_title("red", "purple")
    "'red' vs 'purple'"
"""

from __future__ import annotations

# method -> (what the number is, whether it is read from the answer's score)
SCORE_NAMES: dict[str, tuple[str, bool]] = {
    "attention": ("attention weight (mean over heads, layers)", False),
    "rollout": ("rolled-out attention", False),
    "relevancy": ("relevancy (gradient-weighted attention)", True),
    "gradient_x_input": ("gradient × input", True),
    "integrated_gradients": ("integrated gradients", True),
    "occlusion": ("score drop when hidden", True),
    "rise": ("RISE: mean score when kept", True),
    "logit_lens": ("logit-lens logit (ReLU)", True),
    "logit_lens_arc": ("logit-lens logit, context removed", True),
    "logit_lens_msea": ("logit-lens logit, multi-scale", True),
    "grad_eclip": ("Grad-ECLIP (gradient-weighted tower attention)", True),
    "mmel": ("MMEL (weighted Grad-ECLIP layers)", True),
}


def score_label(method: str, answer: str | None = None, foil: str | None = None) -> str:
    """The colour-bar label of ``method``'s heatmap; a contrast run names both tokens.

    Example:
        >>> score_label("gradient_x_input", "red")
        "gradient × input: score of 'red'"
        >>> score_label("my_method")
        'my method score'
    """
    name, reads_score = SCORE_NAMES.get(method, (f"{method.replace('_', ' ')} score", False))
    if not reads_score or answer is None:
        return name
    if foil is not None:
        return f"{name}: logit({answer!r}) − logit({foil!r})"
    return f"{name}: score of {answer!r}"


def target_title(answer: str, foil: str | None = None) -> str:
    """How a title names the explained token: ``'red'``, or ``'red' vs 'purple'`` in a contrast run.

    Example:
        >>> target_title("red")
        "'red'"
    """
    return repr(answer) if foil is None else f"{answer!r} vs {foil!r}"
