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
