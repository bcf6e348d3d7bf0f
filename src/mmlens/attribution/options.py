"""What ``explain`` accepts as methods and per-method options, checked before any model runs.

A typo must not pass silently: an options key that names no method, or an
option a method does not take, is refused with the choices named. Options of
known methods that are not run are checked and kept, so that one options
mapping can serve calls with different methods.

Example:
    >>> from mmlens.attribution.api import METHODS
    >>> method_list("relevancy", METHODS)
    ['relevancy']
    >>> method_options({"rise": {"masks": 8}}, ["rise"], METHODS)
    {'rise': {'masks': 8}}
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

from mmlens.errors import MmlensError, check_choices

#: Parameters every method takes positionally; they are not options.
_FIXED = ("model", "targets")


def method_list(methods: str | Sequence[str], known: Mapping[str, Callable]) -> list[str]:
    """``methods`` as a list of known names; one name alone is a list of one.

    Example:
        >>> method_list(["attention", "rollout"], {"attention": None, "rollout": None})
        ['attention', 'rollout']
    """
    names = [methods] if isinstance(methods, str) else list(methods)
    return check_choices(names, known, "method")


def method_options(options: Mapping[str, Any] | None, methods: Sequence[str],
                   known: Mapping[str, Callable]) -> dict[str, dict[str, Any]]:
    """``options`` checked, those of ``methods`` kept: each key a ``known`` method, each value the options it takes.

    Example:
        >>> method_options({"rsie": {}}, ["rise"], {"rise": lambda model, targets, masks=1: None})
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: options for 'rsie', which is no method; choose from rise
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise MmlensError(f"options map method names to their options, e.g. {{'rise': {{'masks': 64}}}}; got "
                          f"{type(options).__name__}")
    checked = {}
    for method, chosen in options.items():
        if method not in known:
            raise MmlensError(f"options for {method!r}, which is no method; choose from {', '.join(known)}")
        if not isinstance(chosen, Mapping):
            raise MmlensError(f"the options of {method} must be a mapping of option names to values, e.g. "
                              f"{{{method!r}: {{{next(iter(accepted(known[method])), 'name')!r}: ...}}}}; got "
                              f"{type(chosen).__name__}")
        names = accepted(known[method])
        strays = [name for name in chosen if name not in names]
        if strays:
            raise MmlensError(f"{method} takes no option {', '.join(map(repr, strays))}; its options: "
                              f"{', '.join(names) or '(none)'}")
        if method in methods:
            checked[method] = dict(chosen)
    return checked


def accepted(method: Callable) -> list[str]:
    """The keyword options ``method`` takes (its parameters after model and targets).

    Example:
        >>> accepted(lambda model, targets, steps=32, rule="gausslegendre": None)
        ['steps', 'rule']
    """
    return [name for name, parameter in inspect.signature(method).parameters.items()
            if name not in _FIXED and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]
