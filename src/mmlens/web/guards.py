"""ASGI middleware in front of every route: the access token, and the request-body limit.

Both answer before any route runs: a request without the token gets 401; a
body over the limit gets 413 as soon as its ``Content-Length`` (or, when it
streams, its byte count) passes the limit, before it is parsed or stored.

Example:
    >>> token_in({"authorization": "Bearer abc"}, {}, {})
    'abc'
"""

from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The cookie a page visit with ``?token=`` sets, so that the page's own API calls carry the token.
COOKIE = "mmlens_token"


def token_in(headers: dict[str, str], cookies: dict[str, str], query: dict[str, list[str]]) -> str | None:
    """The token a request carries: ``Authorization: Bearer``, ``X-Mmlens-Token``, the cookie or ``?token=``."""
    bearer = headers.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        return bearer[7:].strip()
    return headers.get("x-mmlens-token") or cookies.get(COOKIE) or (query.get("token") or [None])[0]


async def _answer(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class TokenGuard:
    """401 for every HTTP request without ``token``; a page visit with ``?token=`` also sets the cookie."""

    def __init__(self, app: App, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header carries no token
            pass
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = token_in(headers, {k: m.value for k, m in cookie.items()}, query)
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            return await _answer(send, 401, "this server needs its token: add ?token=... to the address, "
                                            "or send Authorization: Bearer ...",
                                 [(b"www-authenticate", b"Bearer")])
        if "token" not in query:
            return await self.app(scope, receive, send)

        async def with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                value = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", value.encode())]}
            await send(message)

        await self.app(scope, receive, with_cookie)


class BodyLimit:
    """413 for request bodies over ``limit`` bytes (with room for the multipart envelope around a file).

    A body that passes the limit while streaming is cut off (the app sees a
    disconnect) and whatever the app answers is replaced by the 413.
    """

    def __init__(self, app: App, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _answer(send, 413, f"the request is {int(length):,} bytes, over the {self.limit:,}-byte "
                                            "upload limit")
        seen, over, answered = 0, False, False

        async def counted() -> dict[str, Any]:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                over = True
                return {"type": "http.disconnect"}
            return message

        async def refuse() -> None:
            nonlocal answered
            if not answered:
                answered = True
                await _answer(send, 413, f"the request body is over the {self.limit:,}-byte upload limit")

        async def replaced(message: dict[str, Any]) -> None:
            if not over:
                await send(message)
            elif message["type"] == "http.response.start":
                await refuse()

        try:
            await self.app(scope, counted, replaced)
        except Exception:
            if not over:
                raise
        if over:
            await refuse()
