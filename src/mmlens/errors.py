"""User-facing errors.

An :class:`MmlensError` is a mistake in what the user asked for (a missing file,
an unknown model, a prompt without an image slot). The command line prints its
message on one line (``mmlens: error: <message>``) and exits with code 1, never
a traceback; exit code 2 is kept for usage errors (an unknown option or
command), as in click. See :mod:`mmlens.cli.main`.
"""


class MmlensError(Exception):
    """A problem with the user's input, reported as one clear line.

    Example:
        >>> raise MmlensError("no such image: cat.png")
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: no such image: cat.png
    """


def check_choice(value, known, noun: str):
    """``value`` if it is one of ``known``, else one line naming the choices.

    Example:
        >>> check_choice("zero", ("zero", "mean"), "ablation")
        'zero'
        >>> check_choice("half", ("zero", "mean"), "ablation")
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: unknown ablation 'half'; choose one of zero, mean
    """
    if value not in known:
        raise MmlensError(f"unknown {noun} {value!r}; choose one of {', '.join(map(str, known))}")
    return value


def check_choices(values, known, noun: str, *, at_least_one: bool = False) -> list:
    """``values`` as a list if every entry is one of ``known``, else one line naming the strays.

    With ``at_least_one``, an empty ``values`` is an error too.

    Example:
        >>> check_choices(["resid"], ("resid", "attn"), "component")
        ['resid']
        >>> check_choices(["resid", "x"], ("resid", "attn"), "component")
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: unknown component(s) 'x'; choose from resid, attn
    """
    values = list(values)
    unknown = [v for v in values if v not in known]
    if unknown or (at_least_one and not values):
        strays = ", ".join(map(repr, unknown)) or "(none)"
        raise MmlensError(f"unknown {noun}(s) {strays}; choose from {', '.join(map(str, known))}")
    return values
