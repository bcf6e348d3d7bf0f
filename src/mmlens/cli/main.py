"""Entry point of the ``mmlens`` command: the command groups, and how every run ends.

The command line never shows a traceback unless asked to. Each way a run can
end has one exit code and at most three lines on stderr:

- success, or ``--help``: exit 0.
- a usage error (unknown option or command, a bad value, a bare ``mmlens``):
  exit 2; ``Usage: ...``, ``Try 'mmlens ... --help' for help.`` and
  ``mmlens: error: <message>``.
- a user mistake (:class:`~mmlens.errors.MmlensError`, a missing file, any
  other click error): exit 1; ``mmlens: error: <message>``.
- any other exception (a bug): exit 1;
  ``mmlens: error: <Type>: <message> (run with --debug for the traceback)``.
- Ctrl-C: exit 130; ``mmlens: interrupted``.

``mmlens --debug <command> ...`` (or ``MMLENS_DEBUG=1``) prints the full
traceback instead of the one-line message (usage errors stay short).

Usage errors are recognised whichever copy of click raised them, the standalone
``click`` package or the copy typer >= 0.29 bundles, by duck typing (see
:func:`classify`).

Example:
    >>> main(["info", "--model", "tiny-llama", "--json"])  # doctest: +SKIP
    0
    >>> classify(KeyboardInterrupt()).exit_code
    130
"""

from __future__ import annotations

import enum
import os
import sys
import traceback
from typing import Any, Optional

import typer

from mmlens.cli import demo, explain, harvest, info, lens, neurons, serve, trace
from mmlens.cli import fingerprint as fingerprint_command, probe as probe_command
from mmlens.cli import sae as sae_command
from mmlens.cli import audit as audit_command
from mmlens.cli import crosscoder as crosscoder_command
from mmlens.cli import steer as steer_command
from mmlens.cli import circuit as circuit_command
from mmlens.cli import heads as heads_command
from mmlens.errors import MmlensError
from mmlens.notices import show_on_stderr

PROG = "mmlens"
DEBUG_ENV = "MMLENS_DEBUG"
DEBUG_HINT = "(run with --debug for the traceback)"

app = typer.Typer(
    name=PROG,
    help="Explain and interpret multimodal language models.",
    no_args_is_help=False,  # a bare ``mmlens`` is a usage error ("Missing command."), not 40 lines of help
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help=f"Show the full traceback of an error (or set {DEBUG_ENV}=1)."),
) -> None:
    """Explain and interpret multimodal language models."""
    # --debug is read back from the context's params by main(), which reports every error.


app.command("info")(info.info)
app.command("demo")(demo.demo)
app.command("explain")(explain.explain)
app.command("lens")(lens.lens)
app.command("trace")(trace.trace)
app.command("circuit")(circuit_command.circuit)
app.command("heads")(heads_command.heads)
app.command("neurons")(neurons.neurons)
app.command("harvest")(harvest.harvest)
app.command("steer")(steer_command.steer)
app.command("serve")(serve.serve)
app.command("fingerprint")(fingerprint_command.fingerprint)
app.command("probe")(probe_command.probe)
app.add_typer(sae_command.app, name="sae")
app.add_typer(audit_command.app, name="audit")
app.add_typer(crosscoder_command.app, name="crosscoder")


class Outcome(enum.Enum):
    """How a run ended, and the exit code that says so (``EXIT`` carries its own code)."""

    EXIT = "exit"
    USAGE_ERROR = "usage error"
    USER_ERROR = "user error"
    BUG = "bug"
    INTERRUPTED = "interrupted"

    @property
    def exit_code(self) -> int:
        """2 for usage errors, 130 for Ctrl-C, 1 for every other error (and 0 for ``EXIT``; use its own code)."""
        return {"exit": 0, "usage error": 2, "interrupted": 130}.get(self.value, 1)


def _class_names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def _is_click_exception(error: BaseException) -> bool:
    """True for a ``ClickException`` of any click copy: it can ``show()`` and ``format_message()`` itself."""
    return (callable(getattr(error, "format_message", None)) and callable(getattr(error, "show", None))
            and isinstance(getattr(error, "exit_code", None), int))


def _interrupted(error: BaseException | None) -> bool:
    """Whether Ctrl-C caused ``error``: Python wraps a KeyboardInterrupt raised inside
    a class body's ``__set_name__`` (a lazy import in transformers) in a RuntimeError."""
    seen = 0
    while error is not None and seen < 16:
        if isinstance(error, KeyboardInterrupt):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def classify(error: BaseException) -> Outcome:
    """How the command line reports ``error``, without importing any particular click.

    typer >= 0.29 bundles its own copy of click, so ``isinstance`` checks against
    ``click`` miss its exceptions; this looks at what the exception can do and at
    the names of its classes instead.

    Example:
        >>> class UsageError(Exception):  # a usage error from some other copy of click
        ...     exit_code = 2
        ...     def format_message(self): return "No such option: --metod"
        ...     def show(self, file=None): pass
        >>> classify(UsageError())
        <Outcome.USAGE_ERROR: 'usage error'>
        >>> classify(MmlensError("no such image: cat.png"))
        <Outcome.USER_ERROR: 'user error'>
        >>> classify(KeyError(0))
        <Outcome.BUG: 'bug'>
    """
    names = _class_names(error)
    if _interrupted(error) or "Abort" in names:
        return Outcome.INTERRUPTED
    if isinstance(error, MmlensError):
        return Outcome.USER_ERROR
    if _is_click_exception(error):
        return Outcome.USAGE_ERROR if error.exit_code == 2 or "UsageError" in names else Outcome.USER_ERROR
    if "Exit" in names and isinstance(getattr(error, "exit_code", None), int):
        return Outcome.EXIT
    if isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return Outcome.USER_ERROR  # a path the user gave that is not there, or not readable
    return Outcome.BUG


def _one_line(text: str) -> str:
    return " ".join(text.split())


def usage_lines(error: Any) -> list[str]:
    """The three lines of a usage error: the usage, where to get help, and the message.

    Example:
        >>> class NoContext(Exception):
        ...     exit_code = 2
        ...     def format_message(self): return "Missing command."
        >>> usage_lines(NoContext())
        ["Try 'mmlens --help' for help.", 'mmlens: error: Missing command.']
    """
    lines = []
    ctx = getattr(error, "ctx", None)
    command_path, help_option = PROG, "--help"
    if ctx is not None:
        try:
            lines.append(_one_line(ctx.get_usage()))
            command_path = ctx.command_path or PROG
            help_option = (getattr(ctx, "help_option_names", None) or [help_option])[0]
        except Exception:  # a context of an unexpected shape: the message alone will do
            lines = []
    lines.append(f"Try '{command_path} {help_option}' for help.")
    lines.append(f"{PROG}: error: {_one_line(error.format_message())}")
    return lines


def error_line(error: BaseException, outcome: Outcome) -> str:
    """The one line a user mistake or a bug prints on stderr.

    Example:
        >>> error_line(MmlensError("no such image: cat.png"), Outcome.USER_ERROR)
        'mmlens: error: no such image: cat.png'
        >>> error_line(KeyError(0), Outcome.BUG)
        'mmlens: error: KeyError: 0 (run with --debug for the traceback)'
    """
    if outcome is Outcome.BUG:
        lines = str(error).strip().splitlines()
        message = type(error).__name__ + (f": {lines[0]}" if lines else "")
        return f"{PROG}: error: {message} {DEBUG_HINT}"
    format_message = getattr(error, "format_message", None)
    if not isinstance(error, MmlensError) and callable(format_message):
        message = format_message()
    elif isinstance(error, OSError) and error.strerror and error.filename is not None:
        message = f"{error.strerror}: {error.filename}"
    else:
        message = str(error) or type(error).__name__
    return f"{PROG}: error: {_one_line(message)}"


def _env_debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Example:
        >>> main(["info", "--model", "tiny-llama", "--json"])  # doctest: +SKIP
        0
    """
    args = list(sys.argv[1:] if argv is None else argv)
    show_on_stderr()  # one-line notices (images placed, text-only runs, resizes) as "mmlens: ..." on stderr
    command = typer.main.get_command(app)
    ctx = None
    try:
        ctx = command.make_context(PROG, args)
        with ctx:
            command.invoke(ctx)
    except (Exception, KeyboardInterrupt) as error:
        return report(error, debug=_env_debug() or bool(ctx is not None and ctx.params.get("debug")))
    return 0


def report(error: BaseException, debug: bool = False) -> int:
    """Print what ``error`` means for the user on stderr and return the exit code.

    Example:
        >>> report(MmlensError("unknown model nope"))  # doctest: +SKIP
        mmlens: error: unknown model nope
        1
    """
    outcome = classify(error)
    if outcome is Outcome.EXIT:
        return int(getattr(error, "exit_code"))
    if outcome is Outcome.INTERRUPTED:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return outcome.exit_code
    if outcome is Outcome.USAGE_ERROR:
        print("\n".join(usage_lines(error)), file=sys.stderr)
        return outcome.exit_code
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    else:
        print(error_line(error, outcome), file=sys.stderr)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
