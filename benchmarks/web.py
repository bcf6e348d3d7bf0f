"""The web app's cost: explain-endpoint latency against ``mmlens.explain``, and requests per second under load.

    python benchmarks/web.py [--model M] [--pairs 80] [--requests 100] [--latency-only] [--json]

A real uvicorn server on 127.0.0.1 (in this process, sharing the loaded
model) answers over loopback HTTP.

1. **Latency**, per method, one answer token of the shipped example:
   ``POST /api/explain`` (HTTP, queue, worker thread, JSON of the grids and
   words) against calling ``mmlens.explain`` directly, paired: after a
   warm-up, ``--pairs`` rounds of a direct call and a request from each
   client, the order reversed every other round, so a slow stretch of the
   machine hits both sides of a pair. Per client, the median of the pairs'
   ratios (endpoint / direct) with a 95% percentile-bootstrap interval over
   pairs (``scipy.stats.bootstrap``), and the geometric mean of the ratios
   with its interval (``mmlens.metrics.sanity.bootstrap_mean`` of the log
   ratios). The goal (within 1.2x) holds when the median's upper bound is
   under 1.2. Two clients: one in this process (it shares the server's
   interpreter lock and cores), and one in a process of its own, as a
   browser or ``curl`` would be (it times its own request, so the pipe that
   tells it to go is not counted). The load average is recorded before and
   after each method.
2. **Load**: a burst of 50 concurrent requests (how many ran, how many got
   429, wall time), then ``--requests`` requests from 5 clients (the queue's
   capacity) that retry on 429: requests per second, against the rate of
   direct ``mmlens.explain`` calls.

3. With ``--parts``: where the endpoint's fixed cost goes, for ``--parts-method``
   (rollout): the medians of five segments of one request timed inside the
   server (client to app, app to the worker thread, the job with its JSON,
   worker back to the response, response to the client), and the CPU time of
   the server's process per request (client in its own process) against a
   direct call's: the extra CPU is work, the rest of the extra wall time is waiting;
   the CPU of the result's JSON alone, repeated (warm caches) and right after an
   explain call (as the worker thread makes it); the round trip of an empty job to the
   queue's worker thread and back, against a one-thread executor.

With --json the last line is one JSON object of all figures.

Example (the figures of docs/web.md; the machine's other work shows in ``load``):

    HF_HUB_OFFLINE=1 python benchmarks/web.py --latency-only --pairs 80 --threads 1 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, median_seconds, paired_ratios  # noqa: E402

import mmlens  # noqa: E402
import mmlens.web.api as web_api  # noqa: E402
from mmlens.web import create_app  # noqa: E402
from mmlens.web.examples import example_input  # noqa: E402
from mmlens.web.live import LiveServer  # noqa: E402
from mmlens.web.queue import Worker  # noqa: E402
from mmlens.web.results import explanation_json  # noqa: E402

METHODS = ("attention", "rollout", "gradient_x_input", "integrated_gradients")
LOAD_METHOD = "rollout"
BURST = 50
CLIENTS = 5
GOAL = 1.2
#: A client in its own process: one POST per line read; it writes the seconds the POST took, timed by itself.
OUT_OF_PROCESS_CLIENT = """
import json, sys, time, httpx
with httpx.Client(base_url=sys.argv[1], timeout=300) as client:
    body = json.loads(sys.argv[2])
    for _ in sys.stdin:
        start = time.perf_counter()
        client.post("/api/explain", json=body).raise_for_status()
        print(time.perf_counter() - start, flush=True)
"""


class OtherProcessClient:
    """``POST /api/explain`` sent by a client process: calling it sends one request, waits, returns its seconds."""

    def __init__(self, url: str, body: dict) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", OUT_OF_PROCESS_CLIENT, url, json.dumps(body)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self) -> float:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline().strip()
        try:
            return float(line)
        except ValueError:
            raise RuntimeError(f"the client process failed: {line!r}") from None

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def timed(function) -> float:
    """Seconds ``function()`` took."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def latency_calls(model, given, client: httpx.Client, other: OtherProcessClient, body: dict) -> dict:
    """The three timed calls of one method: ``mmlens.explain``, the POST from this process, from the client process."""
    def direct() -> float:
        return timed(lambda: mmlens.explain(model, given.prompt, given.images, methods=body["methods"],
                                            max_new_tokens=body["max_new_tokens"]))

    def endpoint() -> float:
        return timed(lambda: client.post("/api/explain", json=body).raise_for_status())

    return {"direct": direct, "endpoint": endpoint, "other_process": other}


async def burst(url: str, body: dict) -> dict:
    """50 requests at once: status counts and wall time."""
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=BURST)) as client:
        start = time.perf_counter()
        responses = await asyncio.gather(*(client.post("/api/explain", json=body) for _ in range(BURST)))
        seconds = time.perf_counter() - start
    codes = [r.status_code for r in responses]
    return {"ok": codes.count(200), "refused_429": codes.count(429), "other": len(codes) - codes.count(200)
            - codes.count(429), "seconds": round(seconds, 3)}


async def sustained(url: str, body: dict, requests: int) -> dict:
    """``requests`` answered requests from 5 clients that retry on 429: requests per second."""
    done, refused = 0, 0
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        async def worker() -> None:
            nonlocal done, refused
            while done < requests:
                response = await client.post("/api/explain", json=body)
                if response.status_code == 429:
                    refused += 1
                    await asyncio.sleep(0.05)
                    continue
                response.raise_for_status()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        seconds = time.perf_counter() - start
    return {"requests": done, "seconds": round(seconds, 3), "per_second": round(done / seconds, 3),
            "refused_429": refused}


class Stamped:
    """ASGI wrapper that stamps when a request reaches the app and when its answer is sent, and when its job runs."""

    def __init__(self, app) -> None:
        self.app, self.marks = app, {}
        explain_input = web_api.explain_input

        def stamped(*args, **kwargs):
            self.marks["work"] = time.perf_counter()
            result = explain_input(*args, **kwargs)
            self.marks["worked"] = time.perf_counter()
            return result

        web_api.explain_input = stamped

    async def __call__(self, scope, receive, send) -> None:
        self.marks["app"] = time.perf_counter()

        async def stamping(message) -> None:
            if message["type"] == "http.response.start":
                self.marks["answer"] = time.perf_counter()
            await send(message)

        await self.app(scope, receive, stamping)
        self.marks["sent"] = time.perf_counter()


def parts(model, url: str, stamped: Stamped, key: str, method: str, repeats: int) -> dict:
    """Medians of the segments of one request (ms); CPU per request of the server's process and of a direct call."""
    given = example_input("colour_question")
    body = {"input": key, "methods": [method], "max_new_tokens": 1}
    segments: dict[str, list[float]] = {name: [] for name in ("client_to_app", "app_to_worker", "job_with_json",
                                                             "worker_to_answer", "answer_to_client", "request")}
    cpu: dict[str, list[float]] = {"direct": [], "server": []}
    cold_json: list[float] = []  # the JSON right after an explain call, as the worker thread makes it
    other = OtherProcessClient(url, body)
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            for i in range(repeats + 2):
                start = time.perf_counter()
                client.post("/api/explain", json=body).raise_for_status()
                done, m = time.perf_counter(), dict(stamped.marks)  # copied: the next requests stamp again
                spent = {"direct": time.process_time()}
                explanation = mmlens.explain(model, given.prompt, given.images, methods=[method], max_new_tokens=1)
                spent["server"] = time.process_time()
                cold_json.append(timed(lambda: explanation_json(explanation)))
                other()  # only the server works in this process meanwhile
                spent["end"] = time.process_time()
                if i < 2:
                    continue
                cpu["direct"].append(spent["server"] - spent["direct"])
                cpu["server"].append(spent["end"] - spent["server"])
                for name, value in (("client_to_app", m["app"] - start), ("app_to_worker", m["work"] - m["app"]),
                                    ("job_with_json", m["worked"] - m["work"]),
                                    ("worker_to_answer", m["answer"] - m["worked"]),
                                    ("answer_to_client", done - m["answer"]), ("request", done - start)):
                    segments[name].append(value)
    finally:
        other.close()
    out = {name: round(statistics.median(values) * 1e3, 2) for name, values in segments.items()}
    out.update({f"cpu_{name}_ms": round(statistics.median(values) * 1e3, 2) for name, values in cpu.items()})
    explanation = mmlens.explain(model, given.prompt, given.images, methods=[method], max_new_tokens=1)
    out["cpu_json_ms"] = round(median_cpu(lambda: explanation_json(explanation), 200) * 1e3, 3)
    out["json_after_explain_ms"] = round(statistics.median(cold_json[2:]) * 1e3, 3)
    return {"method": method, **out, **asyncio.run(handoffs(3000))}


def serving(live: LiveServer) -> dict:
    """What uvicorn serves with: its HTTP parser (httptools or h11) and event loop (uvloop or asyncio)."""
    return {"http": live.server.config.http_protocol_class.__name__,
            "loop": type(live.server.servers[0].get_loop()).__module__.split(".")[0]}


def median_cpu(function, repeats: int) -> float:
    """Median CPU seconds of ``function()`` in this thread."""
    spent = []
    for _ in range(repeats):
        start = time.thread_time()
        function()
        spent.append(time.thread_time() - start)
    return statistics.median(spent)


async def handoffs(repeats: int) -> dict:
    """Round trip of an empty job from the event loop to a thread and back: the queue's Worker, an executor."""
    loop, pool, worker = asyncio.get_running_loop(), ThreadPoolExecutor(1), Worker()
    times: dict[str, list[float]] = {"worker": [], "executor": []}
    for _ in range(repeats):
        for name, call in (("worker", lambda: worker.run(int)), ("executor", lambda: loop.run_in_executor(pool, int))):
            start = time.perf_counter()
            await call()
            times[name].append(time.perf_counter() - start)
    worker.stop()
    pool.shutdown()
    return {f"handoff_{name}_us": round(statistics.median(values) * 1e6, 1) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=15, help="Repeats of --parts and of the direct rate.")
    parser.add_argument("--pairs", type=int, default=80, help="Paired rounds per method after the warm-up.")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--latency-only", action="store_true", help="No load test (burst, sustained requests).")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--parts", action="store_true", help="Also time where the endpoint's fixed cost goes.")
    parser.add_argument("--parts-method", default="rollout")
    parser.add_argument("--parts-only", action="store_true", help="Only --parts: no latency table, no load.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    model = mmlens.load(args.model)
    given = example_input("colour_question")
    figures: dict = {"model": model.name, "threads": args.threads, "pairs": args.pairs, "warmup": args.warmup,
                     "load_start": [round(v, 2) for v in os.getloadavg()], "latency": {}}
    app = create_app(model)
    stamped = Stamped(app) if args.parts or args.parts_only else None  # the plain app unless asked: no stamps timed
    with LiveServer(stamped or app) as live, httpx.Client(base_url=live.url, timeout=300) as client:
        key = client.post("/api/inputs", data={"example": "colour_question"}).json()["id"]
        figures["server"] = serving(live)
        if args.parts or args.parts_only:
            figures["parts"] = parts(model, live.url, stamped, key, args.parts_method, max(args.repeats, 30))
            console.print(f"where a request's time goes (ms, medians): {figures['parts']}")
            if args.parts_only:
                emit(figures, args.json)
                return
        table = Table(title=f"explain, one answer token ({model.name}; medians of {args.pairs} paired rounds; "
                            f"ratio: median of the rounds' ratios [95% bootstrap interval])")
        for column in ("method", "load", "mmlens.explain ms", "POST ms (client in process)", "ratio",
                       "POST ms (client process)", "ratio"):
            table.add_column(column)
        for method in args.methods.split(","):
            body = {"input": key, "methods": [method], "max_new_tokens": 1}
            other = OtherProcessClient(live.url, body)
            try:
                result = paired_ratios(latency_calls(model, given, client, other, body), args.pairs, args.warmup, GOAL)
            finally:
                other.close()
            figures["latency"][method] = result
            shown = [f"{result[c]['ms']:.1f}|{result[c]['ratio']:.3f} [{result[c]['ratio_low']:.3f}, "
                     f"{result[c]['ratio_high']:.3f}]" for c in ("endpoint", "other_process")]
            table.add_row(method, f"{result['load'][0]:.1f}-{result['load'][1]:.1f}", f"{result['direct_ms']:.1f}",
                          *(part for cell in shown for part in cell.split("|")))
        console.print(table)
        figures["load_end"] = [round(v, 2) for v in os.getloadavg()]
        if args.latency_only:
            emit(figures, args.json)
            return
        body = {"input": key, "methods": [LOAD_METHOD]}
        direct_rate = 1 / median_seconds({"direct": lambda: mmlens.explain(model, given.prompt, given.images,
                                                                           methods=[LOAD_METHOD])},
                                         args.repeats, warmup=1)["direct"]
        figures["burst"] = asyncio.run(burst(live.url, body))
        figures["sustained"] = {**asyncio.run(sustained(live.url, body, args.requests)),
                                "direct_per_second": round(direct_rate, 3), "method": LOAD_METHOD}
        figures["queue_peak"] = app.state.server.queue.peak
    console.print(f"burst of {BURST}: {figures['burst']}; queue peak {figures['queue_peak']} "
                  f"(bound {1 + app.state.server.queue.max_waiting})")
    console.print(f"sustained ({CLIENTS} clients, {LOAD_METHOD}): {figures['sustained']['per_second']:.2f} requests/s, "
                  f"direct mmlens.explain {direct_rate:.2f} calls/s")
    emit(figures, args.json)


if __name__ == "__main__":
    main()
