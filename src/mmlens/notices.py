"""One-line notices: what mmlens decided for the user without being asked.

A notice is not an error: the run goes on, but the user should know what was
done on their behalf (images placed where a prompt had no slot, a vision model
run text-only, an image resized). Every notice is one line, logged at
``WARNING`` on the ``"mmlens"`` logger, so that

- a script that configures no logging sees the line on stderr (Python's
  last-resort handler prints the bare message);
- an application routes or silences it like any other library's logs
  (``logging.getLogger("mmlens").setLevel(logging.ERROR)``);
- the command line prints it as ``mmlens: <message>`` on stderr
  (:func:`show_on_stderr`), never on stdout, so ``--json`` output stays JSON.

Example:
    >>> import logging
    >>> records = []
    >>> class Keep(logging.Handler):
    ...     def emit(self, record): records.append(record.getMessage())
    >>> LOGGER.addHandler(keep := Keep())
    >>> notice("the prompt has no <image> slot: placed 1 image before the text")
    >>> LOGGER.removeHandler(keep)
    >>> records
    ['the prompt has no <image> slot: placed 1 image before the text']
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("mmlens")


def notice(message: str) -> None:
    """Tell the user, in one line, what mmlens did on their behalf.

    Example:
        >>> notice("no image given: tiny-llava runs text-only")  # doctest: +SKIP
    """
    LOGGER.warning(" ".join(message.split()))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (tests swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores that
        pass


def show_on_stderr(prefix: str = "mmlens: ") -> None:
    """Print notices as ``<prefix><message>`` on stderr (the command line calls this once).

    Idempotent: calling it again adds no second handler. Records still
    propagate, so a test's log capture sees them too.

    Example:
        >>> show_on_stderr()  # doctest: +SKIP
        >>> notice("resized")  # doctest: +SKIP
        mmlens: resized
    """
    if any(isinstance(handler, _StderrHandler) for handler in LOGGER.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    handler.setLevel(logging.WARNING)
    LOGGER.addHandler(handler)
