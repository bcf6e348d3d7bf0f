"""Where the command line writes, and how progress shows on a terminal and off one.

The rule for every command: results (tables, summaries, the report path) go to
stdout through :func:`result_console`; progress and status go to stderr through
:func:`progress_console`; with ``--json``, :func:`~mmlens.cli.options.stdout_for_json`
moves the results to stderr so that stdout holds the JSON alone.

On a terminal, progress is a transient rich bar. Elsewhere (a pipe, a log file,
CI) a rich bar shows nothing while it runs and leaves a blank line when it stops,
so :func:`progress_bar` gives a :class:`PlainProgress` instead: one plain line
every few seconds, and none at all for a run shorter than that.

Example:
    >>> from rich.console import Console
    >>> import io
    >>> with progress_bar(Console(file=io.StringIO())) as bar:  # not a terminal: plain lines, none this fast
    ...     task = bar.add_task("scoring", total=4)
    ...     bar.advance(task, 4)
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterable, Iterator

from rich.console import Console
from rich.progress import Progress, ProgressColumn
from rich.table import Table

#: Seconds between plain progress lines: often at first, then rarely, so that a long job's log stays short.
FIRST_EVERY, LATER_EVERY, LATER_AFTER = 5.0, 30.0, 60.0


def result_console() -> Console:
    """The console of results: stdout (stderr inside ``stdout_for_json(True)``, read when printing)."""
    return Console()


def progress_console() -> Console:
    """The console of progress, status lines and warnings: stderr."""
    return Console(stderr=True)


def progress_bar(console: Console, *columns: str | ProgressColumn, every: float | None = None) -> Any:
    """A transient rich :class:`~rich.progress.Progress` on a terminal, else a :class:`PlainProgress`.

    Both take ``add_task``, ``update`` and ``advance`` the same way; ``every``
    (seconds, default :data:`FIRST_EVERY` then :data:`LATER_EVERY`) sets the plain lines apart.
    """
    if console.is_terminal:
        return Progress(*columns, console=console, transient=True)
    return PlainProgress(console, every=every)


class PlainProgress:
    """What a rich progress bar says, as a plain line on ``console`` every few seconds while it is open.

    A background thread prints, so that a step that takes long (one attribution
    method, one model load) still shows the run is alive.
    """

    def __init__(self, console: Console, every: float | None = None) -> None:
        self.console, self.every = console, every
        self.tasks: dict[int, dict[str, Any]] = {}
        self._start = time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PlainProgress":
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="mmlens-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        """A new task; returns its id."""
        task = len(self.tasks)
        self.tasks[task] = {"description": description, "total": total, "completed": completed, "fields": fields}
        return task

    def update(self, task: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **fields: Any) -> None:
        """Change a task as :meth:`rich.progress.Progress.update` does."""
        state = self.tasks[task]
        if total is not None:
            state["total"] = total
        if completed is not None:
            state["completed"] = completed
        if advance is not None:
            state["completed"] += advance
        if description is not None:
            state["description"] = description
        state["fields"].update(fields)

    def advance(self, task: int, advance: float = 1) -> None:
        """Move a task forward by ``advance``."""
        self.update(task, advance=advance)

    def elapsed(self) -> float:
        """Seconds since the progress began."""
        return time.perf_counter() - self._start

    def line(self) -> str:
        """The line it prints now, of the task added last (the one running), e.g. ``train: 50/200 FVU 0.312 (10 s)``."""
        if not self.tasks:
            return f"working ({self.elapsed():.0f} s)"
        state = self.tasks[len(self.tasks) - 1]
        done = f"{state['completed']:g}" + (f"/{state['total']:g}" if state["total"] else "")
        extra = " ".join(str(v) for v in state["fields"].values() if isinstance(v, str) and v.strip(" -"))
        return " ".join(p for p in (f"{state['description']}:", done, extra) if p) + f" ({self.elapsed():.0f} s)"

    def _run(self) -> None:
        while not self._stop.wait(self._wait()):
            self.console.print(self.line(), highlight=False, markup=False, soft_wrap=True)

    def _wait(self) -> float:
        if self.every is not None:
            return self.every
        return FIRST_EVERY if self.elapsed() < LATER_AFTER else LATER_EVERY


@contextlib.contextmanager
def status(console: Console, text: str) -> Iterator[None]:
    """A spinner with ``text`` on a terminal; nothing elsewhere (a step of seconds needs no log line)."""
    if not console.is_terminal:
        yield
        return
    with console.status(text):
        yield


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own tqdm bars (``Writing model shards``) off inside a block, restored after it.

    Our own progress already says what runs; theirs would print carriage returns into logs.
    """
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def whole_column(table: Table, header: str, cells: Iterable[str], **options: Any) -> None:
    """Add a column whose cells (names: a model, a method, a site) are never cut or wrapped.

    Other columns wrap first when the table is too wide for the terminal.
    """
    width = max([len(header), *(len(cell) for cell in cells)])
    table.add_column(header, no_wrap=True, min_width=width, **options)


def drop_empty(columns: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """The columns (and row cells) that hold something: an empty column only takes width.

    Example:
        >>> drop_empty(["name", "group"], [["a", ""], ["b", ""]])
        (['name'], [['a'], ['b']])
    """
    if not rows:
        return columns, rows
    keep = [i for i in range(len(columns)) if any(row[i].strip() for row in rows)]
    return [columns[i] for i in keep], [[row[i] for i in keep] for row in rows]
