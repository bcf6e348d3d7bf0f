"""The ``mmlens`` console script: imports the command line inside ``main`` so Ctrl-C while torch loads is handled too.

Example:
    >>> from mmlens.cli.entry import main
    >>> main(["info", "--model", "tiny-llama", "--json"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``mmlens`` with ``argv``; exit code 130 when interrupted before the command line has loaded."""
    try:
        from mmlens.cli.main import main as run
    except KeyboardInterrupt:
        print("mmlens: interrupted", file=sys.stderr)
        return 130
    return run(argv)
