"""The loopback server of the tests and benchmarks answers like ``mmlens serve``: no Nagle stall on kept-alive connections."""

from __future__ import annotations

import socket
import statistics
import time

import httpx


def test_kept_alive_requests_are_not_held_for_the_delayed_ack(live):
    # Without TCP_NODELAY every response's body waits behind its headers for the client's
    # delayed ACK: at least 40 ms on each request after the first of a connection.
    with httpx.Client(base_url=live.url) as client:
        client.get("/api/examples").raise_for_status()
        seconds = []
        for _ in range(9):
            start = time.perf_counter()
            client.get("/api/examples").raise_for_status()
            seconds.append(time.perf_counter() - start)
    assert statistics.median(seconds) < 0.035, seconds
    assert live.socket.proto == socket.IPPROTO_TCP


def test_uvicorn_serves_with_the_web_extras_c_parser_and_loop(live):
    # The web extra brings httptools and uvloop; uvicorn's "auto" must pick both (about 1 ms a request).
    with httpx.Client(base_url=live.url) as client:
        client.get("/api/examples").raise_for_status()
    assert live.server.config.http_protocol_class.__name__ == "HttpToolsProtocol"
    assert type(live.server.servers[0].get_loop()).__module__.startswith("uvloop")
