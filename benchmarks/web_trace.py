"""Where one explain request's fixed cost goes: a stamped trace, and the transport alone.

    python benchmarks/web_trace.py [--method attention] [--client httpx|http.client] [--rounds 160] [--json]
    python benchmarks/web_trace.py --browser [--method attention] [--rounds 160] [--json]
    python benchmarks/web_trace.py --canned --http httptools --loop uvloop [--rounds 600] [--json]

1. **Trace** (default): ``POST /api/explain`` to a real uvicorn on 127.0.0.1 in
   this process, alternating with direct ``mmlens.explain`` calls. Each step
   of a request is stamped (the client sends, the app is called, the handler
   runs, the worker thread starts, the explain call, its JSON, the
   ``JSONResponse``, the handler resumes, the first byte leaves, the client
   has the answer); medians per step after 20 rounds. The explain call inside
   the server against the direct call shows whether the model's work itself
   costs more there.
2. ``--browser``: the client a user has. Headless Chromium (``/usr/bin/chromium``,
   driven by Playwright) times ``fetch`` + ``response.json()`` with
   ``performance.now()`` inside the page; it alternates with direct calls and
   httpx requests. Medians, and the median of the per-round ratios to the
   direct call.
3. ``--canned``: the same endpoint with the model's work replaced by a
   precomputed result, so only the HTTP exchange, the app and the handoffs
   are timed; httpx and the standard library's ``http.client`` alternate.
   ``--http`` and ``--loop`` pick uvicorn's parser and event loop.

The stamps patch ``mmlens.web.work.explain``, ``mmlens.web.api.explain_input``
and the server's queue for the run (trace only); the library is unchanged.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

import mmlens  # noqa: E402
import mmlens.web.api as web_api  # noqa: E402
import mmlens.web.work as web_work  # noqa: E402
from mmlens.web import create_app  # noqa: E402
from mmlens.web.examples import example_input  # noqa: E402
from mmlens.web.live import LiveServer  # noqa: E402

STEPS = ("client_to_app", "app_to_handler", "handler_to_worker", "worker_to_explain", "explain", "json",
         "response", "worker_to_resumed", "resumed_to_sent", "sent_to_client")
SKIP = 20  # rounds left out of the medians (warm-up)


class Poster:
    """``POST /api/explain`` with httpx or with ``http.client``, on one kept-alive connection."""

    def __init__(self, url: str, body: dict, client: str) -> None:
        self.body, self.client = body, client
        self.httpx = httpx.Client(base_url=url, timeout=300)
        self.connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=300)
        self.raw = json.dumps(body)

    def __call__(self) -> None:
        if self.client == "httpx":
            self.httpx.post("/api/explain", json=self.body).raise_for_status()
            return
        self.connection.request("POST", "/api/explain", body=self.raw, headers={"content-type": "application/json"})
        response = self.connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"POST /api/explain answered {response.status}")

    def close(self) -> None:
        self.httpx.close()
        self.connection.close()


def stamped_app(app, stamps: dict):
    """``app`` with stamps where it is called and where the response starts; the handler's queue stamped too."""
    queue = app.state.server.queue
    run = queue.run

    async def stamped_run(job, gone=None):
        stamps["handler"] = time.perf_counter()

        def stamped_job():
            stamps["worker"] = time.perf_counter()
            response = job()
            stamps["response"] = time.perf_counter()
            return response

        result = await run(stamped_job, gone)
        stamps["resumed"] = time.perf_counter()
        return result

    queue.run = stamped_run

    async def wrapped(scope, receive, send):
        stamps["app"] = time.perf_counter()

        async def stamping(message):
            if message["type"] == "http.response.start":
                stamps["sent"] = time.perf_counter()
            await send(message)

        await app(scope, receive, stamping)

    return wrapped


def stamp_the_job(stamps: dict) -> None:
    """Stamp the explain call and the end of its JSON inside the server."""
    explain, explain_input = web_work.explain, web_api.explain_input

    def stamped_explain(*args, **kwargs):
        stamps["explain"] = time.perf_counter()
        result = explain(*args, **kwargs)
        stamps["explained"] = time.perf_counter()
        return result

    def stamped_input(*args, **kwargs):
        result = explain_input(*args, **kwargs)
        stamps["json"] = time.perf_counter()
        return result

    web_work.explain, web_api.explain_input = stamped_explain, stamped_input


def trace(model, method: str, client: str, rounds: int) -> dict:
    """Medians (ms) of each step of a request, of the request and of a direct call, alternating."""
    given = example_input("colour_question")
    stamps: dict = {}
    stamp_the_job(stamps)
    app = create_app(model)
    steps: dict[str, list[float]] = {name: [] for name in STEPS}
    direct, request = [], []
    with LiveServer(stamped_app(app, stamps)) as live:
        key = httpx.post(f"{live.url}/api/inputs", data={"example": "colour_question"}).json()["id"]
        post = Poster(live.url, {"input": key, "methods": [method], "max_new_tokens": 1}, client)
        try:
            for k in range(rounds):
                for which in ("direct", "post") if k % 2 == 0 else ("post", "direct"):
                    start = time.perf_counter()
                    if which == "direct":
                        mmlens.explain(model, given.prompt, given.images, methods=[method], max_new_tokens=1)
                        direct.append(time.perf_counter() - start)
                        continue
                    post()
                    end = time.perf_counter()
                    request.append(end - start)
                    marks = [start, *(stamps[n] for n in ("app", "handler", "worker", "explain", "explained",
                                                          "json", "response", "resumed", "sent")), end]
                    for name, a, b in zip(STEPS, marks, marks[1:]):
                        steps[name].append(b - a)
        finally:
            post.close()
    extra = [r - d for r, d in zip(request[SKIP:], direct[SKIP:])]
    return {"method": method, "client": client, "rounds": rounds, "direct_ms": _median_ms(direct),
            "request_ms": _median_ms(request), "extra_ms": round(statistics.median(extra) * 1e3, 3),
            "steps_ms": {name: _median_ms(values) for name, values in steps.items()}}


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]
#: Timed inside the page: the request and reading its JSON, as the Ask page does.
FETCH = """async (body) => { const start = performance.now();
  const answer = await fetch('/api/explain', {method: 'POST', headers: {'content-type': 'application/json'},
                                              body: JSON.stringify(body)});
  if (!answer.ok) throw new Error('POST /api/explain answered ' + answer.status);
  await answer.json(); return performance.now() - start; }"""


def browser(model, method: str, rounds: int) -> dict:
    """Direct calls, a browser's ``fetch`` and httpx requests alternating: medians (ms) and median ratios."""
    from playwright.sync_api import sync_playwright

    given = example_input("colour_question")
    times: dict[str, list[float]] = {"direct": [], "browser": [], "httpx": []}
    with LiveServer(create_app(model)) as live, sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=BROWSER_ARGS)
        try:
            page = launched.new_page()
            page.goto(f"{live.url}/api/model")  # the page's origin is the server's: fetch needs no CORS
            key = httpx.post(f"{live.url}/api/inputs", data={"example": "colour_question"}).json()["id"]
            body = {"input": key, "methods": [method], "max_new_tokens": 1}
            post = Poster(live.url, body, "httpx")
            calls = {"direct": lambda: mmlens.explain(model, given.prompt, given.images, methods=[method],
                                                      max_new_tokens=1),
                     "browser": lambda: page.evaluate(FETCH, body) / 1e3, "httpx": post}
            for k in range(rounds):
                for name in list(calls) if k % 2 == 0 else list(calls)[::-1]:
                    start = time.perf_counter()
                    inside = calls[name]()
                    times[name].append(inside if name == "browser" else time.perf_counter() - start)
            post.close()
        finally:
            launched.close()
    ratios = {name: round(statistics.median([a / b for a, b in zip(times[name][SKIP:], times["direct"][SKIP:])]), 4)
              for name in ("browser", "httpx")}
    return {"method": method, "rounds": rounds, "ms": {name: _median_ms(values) for name, values in times.items()},
            "ratio": ratios}


def canned(model, http_parser: str, loop: str, rounds: int) -> dict:
    """Round trip (ms) of the endpoint with a precomputed result: httpx and ``http.client`` alternating."""
    import uvicorn

    result = web_api.explain_input(model, example_input("colour_question"), ["attention"], max_new_tokens=1)
    web_api.explain_input = lambda *args, **kwargs: result
    config = uvicorn.Config
    uvicorn.Config = lambda app, **kwargs: config(app, http=http_parser, loop=loop, **kwargs)
    try:
        live_server = LiveServer(create_app(model))
    finally:
        uvicorn.Config = config
    times: dict[str, list[float]] = {"httpx": [], "http.client": []}
    with live_server as live:
        key = httpx.post(f"{live.url}/api/inputs", data={"example": "colour_question"}).json()["id"]
        body = {"input": key, "methods": ["attention"], "max_new_tokens": 1}
        posts = {name: Poster(live.url, body, name) for name in times}
        try:
            for _ in range(rounds):
                for name, post in posts.items():
                    start = time.perf_counter()
                    post()
                    times[name].append(time.perf_counter() - start)
        finally:
            for post in posts.values():
                post.close()
    return {"http": http_parser, "loop": loop, "rounds": rounds,
            "round_trip_ms": {name: _median_ms(values) for name, values in times.items()}}


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values[SKIP:]) * 1e3, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--method", default="attention")
    parser.add_argument("--client", choices=("httpx", "http.client"), default="httpx")
    parser.add_argument("--rounds", type=int, default=None, help="Default: 160 (trace), 600 (--canned).")
    parser.add_argument("--canned", action="store_true", help="Time the transport alone (no model work).")
    parser.add_argument("--browser", action="store_true", help="Time a headless Chromium's fetch, paired.")
    parser.add_argument("--http", default="auto", help="uvicorn's parser with --canned: auto, h11, httptools.")
    parser.add_argument("--loop", default="auto", help="uvicorn's event loop with --canned: auto, asyncio, uvloop.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = mmlens.load(args.model)
    if args.canned:
        figures = canned(model, args.http, args.loop, args.rounds or 600)
    elif args.browser:
        figures = browser(model, args.method, args.rounds or 160)
    else:
        figures = trace(model, args.method, args.client, args.rounds or 160)
    print(figures, file=sys.stderr)
    emit({"model": model.name, "threads": args.threads, **figures}, args.json)


if __name__ == "__main__":
    main()
