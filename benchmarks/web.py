"""The web app's cost: explain-endpoint latency against ``mmlens.explain``, and requests per second under load.

    nice -n 10 python benchmarks/web.py [--model M] [--repeats 15] [--requests 100] [--json]

A real uvicorn server on 127.0.0.1 (in this process, sharing the loaded
model) answers over loopback HTTP.

1. **Latency**, per method, one answer token of the shipped example:
   ``POST /api/explain`` (HTTP, queue, worker thread, JSON of the grids and
   words) against calling ``mmlens.explain`` directly; medians of interleaved
   repeats and their ratio (goal: within 1.2x). Two clients: one in this
   process (it shares the server's interpreter lock and cores), and one in a
   process of its own, as a browser or ``curl`` would be.
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
   the CPU of the result's JSON alone; the round trip of an empty job to the
   queue's worker thread and back, against a one-thread executor.

With --json the last line is one JSON object of all figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from _common import emit, median_seconds  # noqa: E402

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
#: A client in its own process: one POST per line read, "ok" written when it is answered.
OUT_OF_PROCESS_CLIENT = """
import json, sys, httpx
with httpx.Client(base_url=sys.argv[1], timeout=300) as client:
    for _ in sys.stdin:
        client.post("/api/explain", json=json.loads(sys.argv[2])).raise_for_status()
        print("ok", flush=True)
"""


class OtherProcessClient:
    """``POST /api/explain`` sent by a client process: calling it sends one request and waits for its answer."""

    def __init__(self, url: str, body: dict) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", OUT_OF_PROCESS_CLIENT, url, json.dumps(body)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        if self.process.stdout.readline().strip() != "ok":
            raise RuntimeError("the client process failed")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


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
    other = OtherProcessClient(url, body)
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            for i in range(repeats + 2):
                start = time.perf_counter()
                client.post("/api/explain", json=body).raise_for_status()
                done, m = time.perf_counter(), dict(stamped.marks)  # copied: the next requests stamp again
                spent = {"direct": time.process_time()}
                mmlens.explain(model, given.prompt, given.images, methods=[method], max_new_tokens=1)
                spent["server"] = time.process_time()
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
    return {"method": method, **out, **asyncio.run(handoffs(3000))}


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
    parser.add_argument("--repeats", type=int, default=15)
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
    figures: dict = {"model": model.name, "threads": args.threads, "repeats": args.repeats, "latency": {}}
    app = create_app(model)
    stamped = Stamped(app) if args.parts or args.parts_only else None  # the plain app unless asked: no stamps timed
    with LiveServer(stamped or app) as live, httpx.Client(base_url=live.url, timeout=300) as client:
        key = client.post("/api/inputs", data={"example": "colour_question"}).json()["id"]
        if args.parts or args.parts_only:
            figures["parts"] = parts(model, live.url, stamped, key, args.parts_method, max(args.repeats, 30))
            console.print(f"where a request's time goes (ms, medians): {figures['parts']}")
            if args.parts_only:
                emit(figures, args.json)
                return
        table = Table(title=f"explain, one answer token ({model.name}, medians of {args.repeats})")
        for column in ("method", "mmlens.explain ms", "POST ms (client in process)", "ratio",
                       "POST ms (client process)", "ratio"):
            table.add_column(column)
        for method in METHODS:
            body = {"input": key, "methods": [method], "max_new_tokens": 1}

            def endpoint() -> None:
                client.post("/api/explain", json=body).raise_for_status()

            def direct() -> None:
                mmlens.explain(model, given.prompt, given.images, methods=[method], max_new_tokens=1)

            other = OtherProcessClient(live.url, body)
            try:
                times = median_seconds({"direct": direct, "endpoint": endpoint, "other_process": other},
                                       args.repeats, warmup=2)
            finally:
                other.close()
            ratio, apart = times["endpoint"] / times["direct"], times["other_process"] / times["direct"]
            figures["latency"][method] = {"direct_ms": round(times["direct"] * 1e3, 1),
                                          "endpoint_ms": round(times["endpoint"] * 1e3, 1), "ratio": round(ratio, 3),
                                          "other_process_ms": round(times["other_process"] * 1e3, 1),
                                          "other_process_ratio": round(apart, 3)}
            table.add_row(method, f"{times['direct'] * 1e3:.0f}", f"{times['endpoint'] * 1e3:.0f}", f"{ratio:.2f}",
                          f"{times['other_process'] * 1e3:.0f}", f"{apart:.2f}")
        console.print(table)
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
