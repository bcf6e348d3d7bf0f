"""How every run of ``mmlens`` ends: exit codes, at most three lines on stderr, no traceback unless ``--debug``."""

import os
import signal
import subprocess
import sys
import time

import click
import pytest
import typer

import mmlens.cli.main as cli_main
from mmlens.cli.main import Outcome, classify, error_line, main, usage_lines
from mmlens.errors import MmlensError


def environment(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MMLENS_DEBUG"}
    env.update(HF_HUB_OFFLINE="1", **extra)
    return env


def mmlens(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmlens.cli.main", *args], capture_output=True, text=True,
                          env=environment(**env), timeout=300)


def lines_of(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


# --- the real command, as a subprocess -------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["explain", "--metod", "x"], "--metod"),  # click's wording differs between releases
    (["nosuchcmd"], "No such command 'nosuchcmd'"),
    ([], "Missing command"),
    (["neurons", "--samples", "abc"], "--samples"),
])
def test_usage_errors_are_short_with_exit_code_2(args, words):
    result = mmlens(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = lines_of(result)
    assert 1 <= len(lines) <= 3, result.stderr
    assert lines[-1].startswith("mmlens: error:") and words in lines[-1], result.stderr
    assert lines[0].startswith("Usage: mmlens") and "--help" in lines[1]


def test_user_mistake_is_one_error_line_with_exit_code_1():
    result = mmlens("info", "--image", "/no/such.png")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mmlens: error:") and "/no/such.png" in last, result.stderr
    assert "--debug" not in last  # a user mistake, not a bug: no hint


def test_debug_option_shows_the_traceback():
    result = mmlens("--debug", "info", "--model", "not-a-model")  # MMLENS_DEBUG=1: test_main_debug_shows_traceback
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("mmlens.errors.MmlensError: unknown model"), result.stderr


# What a shell sees as 130 either way. mmlens returns 130, but once in CI the interpreter still ended by
# SIGINT (-2 here) after mmlens had caught the interrupt and printed "mmlens: interrupted" (neurons, Ctrl-C at
# its first batch); CPython does so when it flags a KeyboardInterrupt as unhandled.
CTRL_C_EXIT_CODES = (130, -signal.SIGINT)


def ctrl_c_reaches_the_child() -> None:
    """``preexec_fn`` for the Ctrl-C tests: a shell starts background jobs (``make test &``) with SIGINT
    ignored, children inherit that, and Python then never installs its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# The command line exactly as the ``mmlens`` entry point runs it, saying "ready" once the imports are done,
# so that the signal lands in mmlens' own code and not in ``import torch``.
READY_THEN_MAIN = ("import sys; from mmlens.cli.main import main; print('ready', file=sys.stderr, flush=True); "
                   "sys.exit(main(sys.argv[1:]))")


def test_ctrl_c_says_interrupted_with_exit_code_130(tmp_path):
    # explain on the shipped model takes tens of seconds: interrupt it while it loads the model.
    process = subprocess.Popen([sys.executable, "-c", READY_THEN_MAIN, "explain", "--out", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(),
                               preexec_fn=ctrl_c_reaches_the_child)
    try:
        assert process.stderr.readline() == b"ready\n"
        time.sleep(1.5)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        _, stderr_bytes = process.communicate(timeout=300)
    finally:
        process.kill()
    stderr = stderr_bytes.decode(errors="replace")
    assert process.returncode in CTRL_C_EXIT_CODES, stderr
    assert "mmlens: interrupted" in stderr and "Traceback" not in stderr, stderr


# --- in process --------------------------------------------------------------------------------------------------

class FakeContext:
    """Just enough of a click ``Context`` from some other copy of click."""

    command_path = "mmlens explain"
    help_option_names = ["--help", "-h"]

    def get_usage(self) -> str:
        return "Usage: mmlens explain\n       [OPTIONS]"


class FakeUsageError(Exception):
    """A usage error from a click copy mmlens has never heard of: no common base class, only the protocol."""

    exit_code = 2

    def __init__(self, message: str, ctx=None) -> None:
        super().__init__(message)
        self.message, self.ctx = message, ctx

    def format_message(self) -> str:
        return self.message

    def show(self, file=None) -> None:
        raise AssertionError("mmlens formats usage errors itself")


class FakeClickException(FakeUsageError):
    exit_code = 1


class Exit(RuntimeError):
    def __init__(self, code: int) -> None:
        self.exit_code = code


class Abort(RuntimeError):
    pass


def test_classify_recognises_click_exceptions_by_duck_typing():
    assert classify(FakeUsageError("No such option: --metod")) is Outcome.USAGE_ERROR
    assert classify(FakeClickException("Could not open file")) is Outcome.USER_ERROR
    assert classify(Exit(3)) is Outcome.EXIT
    assert classify(Abort()) is Outcome.INTERRUPTED
    assert classify(KeyboardInterrupt()) is Outcome.INTERRUPTED
    assert classify(MmlensError("unknown model")) is Outcome.USER_ERROR
    assert classify(FileNotFoundError(2, "No such file or directory", "x.json")) is Outcome.USER_ERROR
    assert classify(KeyError(0)) is Outcome.BUG
    assert [o.exit_code for o in (Outcome.USAGE_ERROR, Outcome.USER_ERROR, Outcome.BUG, Outcome.INTERRUPTED)] == \
        [2, 1, 1, 130]


def test_classify_recognises_both_real_click_copies():
    copies = [click.exceptions]
    try:
        from typer._click import exceptions as bundled  # typer >= 0.29 bundles click; older typer does not
        copies.append(bundled)
    except ImportError:
        pass
    for copy in copies:
        assert classify(copy.NoSuchOption("--metod")) is Outcome.USAGE_ERROR
        assert classify(copy.BadParameter("not a number")) is Outcome.USAGE_ERROR
        assert classify(copy.FileError("x.png")) is Outcome.USER_ERROR
    assert classify(click.exceptions.Exit(0)) is Outcome.EXIT and classify(typer.Exit(4)) is Outcome.EXIT
    assert classify(click.Abort()) is Outcome.INTERRUPTED and classify(typer.Abort()) is Outcome.INTERRUPTED


def test_usage_lines_are_three_lines_whatever_the_context():
    assert usage_lines(FakeUsageError("No such option: --metod", FakeContext())) == [
        "Usage: mmlens explain [OPTIONS]",
        "Try 'mmlens explain --help' for help.",
        "mmlens: error: No such option: --metod",
    ]
    assert usage_lines(FakeUsageError("Missing\ncommand.")) == ["Try 'mmlens --help' for help.",
                                                                "mmlens: error: Missing command."]


def test_error_lines():
    assert error_line(MmlensError("no such image: a.png"), Outcome.USER_ERROR) == "mmlens: error: no such image: a.png"
    assert error_line(FileNotFoundError(2, "No such file or directory", "a.json"), Outcome.USER_ERROR) == \
        "mmlens: error: No such file or directory: a.json"
    assert error_line(RuntimeError("boom\nmore"), Outcome.BUG) == \
        "mmlens: error: RuntimeError: boom (run with --debug for the traceback)"


@pytest.fixture
def toy_app(monkeypatch):
    """``main`` on an app whose commands fail in chosen ways."""
    app = typer.Typer(no_args_is_help=False, pretty_exceptions_enable=False, add_completion=False)
    app.callback()(cli_main.root)

    @app.command("boom")
    def boom() -> None:
        raise RuntimeError("boom")

    @app.command("mistake")
    def mistake() -> None:
        raise MmlensError("no such image: a.png")

    @app.command("interrupt")
    def interrupt() -> None:
        raise KeyboardInterrupt

    @app.command("quit")
    def quit_() -> None:
        raise typer.Exit(3)

    monkeypatch.setattr(cli_main, "app", app)
    monkeypatch.delenv("MMLENS_DEBUG", raising=False)
    return app


def test_main_reports_each_outcome(toy_app, capsys):
    assert main(["boom"]) == 1
    assert capsys.readouterr().err == "mmlens: error: RuntimeError: boom (run with --debug for the traceback)\n"
    assert main(["mistake"]) == 1
    assert capsys.readouterr().err == "mmlens: error: no such image: a.png\n"
    assert main(["interrupt"]) == 130
    assert capsys.readouterr().err == "mmlens: interrupted\n"
    assert main(["quit"]) == 3
    assert main(["boom", "--nope"]) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert "Traceback" not in err and last.startswith("mmlens: error: No such option") and "--nope" in last


def test_main_debug_shows_traceback(toy_app, capsys, monkeypatch):
    assert main(["--debug", "boom"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and err.strip().endswith("RuntimeError: boom")
    monkeypatch.setenv("MMLENS_DEBUG", "1")
    assert main(["mistake"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_wrapped_by_a_lazy_import_is_an_interrupt():
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as inner:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance") from inner
    except RuntimeError as wrapped:
        assert classify(wrapped) is Outcome.INTERRUPTED


def test_ctrl_c_while_the_command_line_loads_is_an_interrupt():
    import signal
    import subprocess
    import sys
    import time

    script = ("import sys; print('ready', flush=True); from mmlens.cli.entry import main; "
              "sys.exit(main(['info', '--model', 'tiny-llama', '--json']))")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ctrl_c_reaches_the_child)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.2)  # inside the imports of torch and transformers
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode in CTRL_C_EXIT_CODES, err
    assert err.strip().splitlines()[-1] == "mmlens: interrupted" and "Traceback" not in err


def test_the_command_line_starts_without_scipy_or_sklearn():
    # Each takes about a second to import; the commands that need them import them where they are used.
    code = "import sys, mmlens.cli.main; print(sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'sklearn'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    assert out.strip() == "[]"
