"""``mmlens serve``: the web app over one model, on this machine only unless asked otherwise.

Binds 127.0.0.1 by default. Any other ``--host`` prints a warning and needs
``--token``; every request must then carry that token (a first page visit as
``http://host:port/?token=...`` sets a cookie for the rest).

Example:
    >>> serve_settings(host="127.0.0.1", token=None, max_upload_mb=20, max_pixels=None, max_waiting=4).max_waiting
    4
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from mmlens.cli.options import ModelOption
from mmlens.errors import MmlensError


def serve(
    model: Optional[str] = ModelOption,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to bind (0: any free port)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="MMLENS_TOKEN",
                                        help="Secret every request must carry (or set MMLENS_TOKEN)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest upload, in MB (10^6 bytes); "
                                        "larger ones get 413."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Largest image, in pixels (default "
                                             "64,000,000); larger ones (decompression bombs) get 422."),
    max_waiting: int = typer.Option(4, "--max-waiting", min=0, help="Jobs that may wait while one runs; "
                                    "more get 429 with Retry-After."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's)."),
) -> None:
    """Serve the web app: ask and explain, look inside, neurons, the model; JSON API under /api/."""
    settings = serve_settings(host=host, token=token, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                              max_waiting=max_waiting)
    console = Console(stderr=True)
    try:
        import uvicorn

        from mmlens.web import create_app
    except ImportError as error:
        raise MmlensError(f"mmlens serve needs the web extra: pip install 'mmlens[web]' ({error.name} is missing)")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with console.status("loading model"):
        app = create_app(model, settings)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    console.print(f"mmlens: serving {app.state.server.model.name} at http://{shown}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def serve_settings(*, host: str, token: str | None, max_upload_mb: float, max_pixels: int | None,
                   max_waiting: int):
    """The server's :class:`~mmlens.web.settings.Settings`, after the host check (warning on stderr)."""
    from mmlens.web.settings import Settings, check_host

    warning = check_host(host, token)
    if warning is not None:
        Console(stderr=True).print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if max_upload_mb <= 0:
        raise MmlensError("--max-upload-mb must be positive")
    options = {"max_upload_bytes": int(max_upload_mb * 1_000_000), "max_waiting": max_waiting, "token": token}
    if max_pixels is not None:
        options["max_pixels"] = max_pixels
    return Settings(**options)
