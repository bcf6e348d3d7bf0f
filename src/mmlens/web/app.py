"""The web app: FastAPI over one loaded model, its JSON API and its pages.

Example:
    >>> from fastapi.testclient import TestClient
    >>> client = TestClient(create_app("tiny-llava"))
    >>> client.get("/ask").status_code, client.get("/api/openapi.json").status_code
    (200, 200)
"""

from __future__ import annotations

import contextlib
import logging
from importlib import resources
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from mmlens.errors import MmlensError
from mmlens.model import Model
from mmlens.web.api import router as api_router
from mmlens.web.guards import BodyLimit, TokenGuard
from mmlens.web.pages import page_router
from mmlens.web.queue import ClientGone
from mmlens.web.server import Server
from mmlens.web.settings import Settings

#: Room for the multipart envelope (field names, boundaries, the prompt) around an uploaded file.
ENVELOPE_BYTES = 64_000

log = logging.getLogger("mmlens.web")


def create_app(model: str | Model | None = None, settings: Settings | None = None) -> FastAPI:
    """The app for ``model`` (a loaded :class:`~mmlens.model.Model`, a name for :func:`mmlens.load`, None: the shipped one).

    The model is loaded here, once; model names never come from requests.
    """
    from mmlens.models.loading import load

    settings = settings or Settings()
    loaded = model if isinstance(model, Model) else load(model)
    server = Server(loaded, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.close()

    app = FastAPI(title="mmlens", version=_version(), lifespan=lifespan, openapi_url="/api/openapi.json",
                  docs_url="/api/docs", redoc_url=None,
                  description=f"Explain and look inside {loaded.name}: every page's data comes from this API.")
    app.state.server = server
    app.include_router(api_router)
    app.include_router(page_router())
    app.mount("/static", StaticFiles(directory=str(resources.files("mmlens.web") / "static")), name="static")
    app.add_exception_handler(MmlensError, _refused)
    app.add_exception_handler(ClientGone, _gone)
    app.add_exception_handler(Exception, _bug)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + ENVELOPE_BYTES)
    if settings.token:
        app.add_middleware(TokenGuard, token=settings.token)  # added last: it runs first
    return app


async def _refused(request: Request, error: MmlensError) -> JSONResponse:
    """A user mistake: its status (422 unless it says otherwise) and one line."""
    return JSONResponse({"detail": " ".join(str(error).split())}, status_code=getattr(error, "status", 422),
                        headers=getattr(error, "headers", None))


async def _gone(request: Request, error: ClientGone) -> JSONResponse:
    """Nobody is listening; 499 (the client closed the request) shows in the access log."""
    return JSONResponse({"detail": "the client disconnected; its job was dropped"}, status_code=499)


async def _bug(request: Request, error: Exception) -> JSONResponse:
    """A bug: 500 with one line; the traceback goes to the server's log, not to the client."""
    log.exception("error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error: {type(error).__name__}"}, status_code=500)


def _version() -> str:
    from mmlens.provenance import mmlens_version

    return mmlens_version()
