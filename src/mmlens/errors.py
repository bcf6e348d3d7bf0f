"""User-facing errors.

An :class:`MmlensError` is a mistake in what the user asked for (a missing file,
an unknown model, a prompt without an image slot). The command line prints its
message on one line (``mmlens: error: <message>``) and exits with code 1, never
a traceback; exit code 2 is kept for usage errors (an unknown option or
command), as in click. See :mod:`mmlens.cli.main`.
"""

import operator


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


def check_position(position: int, length: int, noun: str = "position") -> int:
    """``position`` as a non-negative index into ``length`` tokens (negative ones count from the end), else one line.

    Example:
        >>> check_position(-1, 71)
        70
        >>> check_position(999, 71)
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: position 999 is out of range for a sequence of 71 tokens (use -71 to 70)
    """
    if not -length <= int(position) < length:
        raise MmlensError(f"{noun} {position} is out of range for a sequence of {length} tokens "
                          f"(use -{length} to {length - 1})")
    return int(position) % length


def check_enum(value, enum, noun: str):
    """The member of ``enum`` that ``value`` names, else one line naming the choices (enum's own error lists none).

    Example:
        >>> from enum import Enum
        >>> class Colour(str, Enum):
        ...     RED = "red"
        ...     BLUE = "blue"
        >>> check_enum("red", Colour, "colour") is Colour.RED
        True
        >>> check_enum("grey", Colour, "colour")
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: unknown colour 'grey'; choose one of red, blue
    """
    try:
        return enum(value)
    except ValueError:
        raise MmlensError(f"unknown {noun} {value!r}; choose one of {', '.join(str(m.value) for m in enum)}") from None


def check_count(value, noun: str, minimum: int = 1) -> int:
    """``value`` as an int if it is a whole number of at least ``minimum``, else one line saying so.

    Example:
        >>> check_count(4, "window")
        4
        >>> check_count(0, "window")
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: window must be a whole number of at least 1, got 0
    """
    try:
        number = None if isinstance(value, bool) else operator.index(value)  # ints and numpy ints, not 2.5 or True
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise MmlensError(f"{noun} must be a whole number of at least {minimum}, got {value!r}")
    return number
