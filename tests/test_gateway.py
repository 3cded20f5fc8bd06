"""The production gateway against small in-process upstreams: what it forwards and how upstream failures answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from aiohttp import web

from fieldguide.ports import free_port
from fieldguide.serve.edge import REQUEST_ID, WARM_UP
from fieldguide.serve.gateway import Gateway, write_upstream


async def echo(request: web.Request) -> web.Response:
    """The headers and body length the upstream received."""
    body = await request.read()
    return web.json_response({"headers": {k.lower(): v for k, v in request.headers.items()}, "size": len(body)})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(1.5)  # past the gateway's 1 s upstream timeout
    return web.json_response({})


async def busy(request: web.Request) -> web.Response:
    return web.json_response({"error": "too many requests"}, status=429)


async def cut(request: web.Request) -> web.StreamResponse:
    """Promises 1,000 bytes, sends 10, then drops the connection."""
    response = web.StreamResponse(headers={"Content-Length": "1000", "Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"species"')
    request.transport.close()
    return response


def forward(tmp_path: Path, handler, method: str = "POST", path: str = "/classify", **kwargs) -> httpx.Response:
    """One request through a Gateway whose upstream answers with `handler` (None: nothing listens upstream)."""

    async def run() -> httpx.Response:
        port = free_port()
        runner = None
        if handler is not None:
            app = web.Application()
            app.router.add_route("*", path, handler)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        upstream = tmp_path / "upstream.json"
        write_upstream(upstream, f"http://127.0.0.1:{port}", "r1", 1_000_000)
        gateway = Gateway(upstream, upstream_timeout_s=1.0)
        try:
            transport = httpx.ASGITransport(app=gateway)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                return await client.request(method, path, **kwargs)
        finally:
            if gateway._client is not None:
                await gateway._client.close()
            if runner is not None:
                await runner.cleanup()

    return asyncio.run(run())


def test_forwarded_request_carries_the_request_id_and_none_of_the_clients_hop_headers(tmp_path):
    headers = {REQUEST_ID: "caller-1", WARM_UP: "1", "Expect": "100-continue", "X-Other": "kept"}
    response = forward(tmp_path, echo, content=b"x" * 5000, headers=headers)
    assert response.status_code == 200 and response.headers[REQUEST_ID] == "caller-1"
    seen = response.json()
    assert seen["size"] == 5000 and seen["headers"]["content-length"] == "5000"
    assert seen["headers"][REQUEST_ID] == "caller-1" and seen["headers"]["x-other"] == "kept"
    assert WARM_UP not in seen["headers"] and "expect" not in seen["headers"]  # warm-up is the gateway's own
    assert seen["headers"]["user-agent"].startswith("python-httpx")  # the caller's, not one aiohttp adds
    assert "transfer-encoding" not in seen["headers"]


def test_nothing_listening_upstream_is_503_with_retry_after(tmp_path):
    response = forward(tmp_path, None, files={"file": ("x.jpg", b"jpeg", "image/jpeg")})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "no model server" in response.json()["error"] and response.json()["request_id"]


def test_an_upstream_slower_than_the_timeout_is_504(tmp_path):
    response = forward(tmp_path, slow, files={"file": ("x.jpg", b"jpeg", "image/jpeg")})
    assert response.status_code == 504 and "did not answer" in response.json()["error"]


def test_an_answer_cut_short_is_502(tmp_path):
    response = forward(tmp_path, cut, files={"file": ("x.jpg", b"jpeg", "image/jpeg")})
    assert response.status_code == 502 and "mid-answer" in response.json()["error"]


def test_bentomls_concurrency_cap_answers_like_the_batcher_503(tmp_path):
    response = forward(tmp_path, busy, files={"file": ("x.jpg", b"jpeg", "image/jpeg")})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert json.loads(response.content)["reason"] == "overloaded"
