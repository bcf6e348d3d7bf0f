"""Entry point of the ``mmlens`` command.

User mistakes (:class:`~mmlens.errors.MmlensError`) print one line on stderr and
exit with code 2; nothing the user did wrong ends in a traceback.
"""

from __future__ import annotations

import sys

import typer

from mmlens.cli import demo, explain, info, lens, neurons, trace
from mmlens.errors import MmlensError

app = typer.Typer(
    name="mmlens",
    help="Explain and interpret multimodal language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("info")(info.info)
app.command("demo")(demo.demo)
app.command("explain")(explain.explain)
app.command("lens")(lens.lens)
app.command("trace")(trace.trace)
app.command("neurons")(neurons.neurons)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Example:
        >>> main(["info", "--model", "tiny-llama", "--json"])  # doctest: +SKIP
        0
    """
    try:
        app(args=argv, standalone_mode=False)
    except MmlensError as error:
        print(f"mmlens: error: {error}", file=sys.stderr)
        return 2
    except typer.Exit as done:
        return done.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("mmlens: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # click usage errors arrive here in non-standalone mode
        from click import ClickException

        if isinstance(error, ClickException):
            error.show()
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
