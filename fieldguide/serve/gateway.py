"""The production endpoint: a small reverse proxy on a fixed port in front of the live BentoML server.

Blue/green promotion starts the new server on another port, checks it, then points this proxy at it (by
rewriting the upstream file) and stops the old server once every request forwarded to it has finished, so
clients never see the switch. A request counts as in flight from its first byte to the last byte of its answer.
Bodies are limited while they stream in (fieldguide.serve.edge). Run as
`python -m fieldguide.serve.gateway --port 3000 --upstream-file FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from fieldguide.serve.edge import (
    FRAMING,
    MAX_OTHER_BODY,
    RAW_UPLOADS,
    REQUEST_ID,
    UPLOADS,
    WARM_UP,
    Body,
    Receive,
    Scope,
    Send,
    raw_upload_limit,
    read_or_refuse,
    request_id,
    send_json,
)
from fieldguide.serve.edge import tagging as tag_answers

# The body limit when the upstream file does not name one (the release's upload limit plus framing does).
DEFAULT_MAX_BODY = 64 * 1024 * 1024
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}
RETRY_AFTER = {"retry-after": "1"}


class Upstream:
    """The upstream URL (and its body limit) from a JSON file, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] = (-1, -1)
        self.url = ""
        self.release = ""
        self.max_body = DEFAULT_MAX_BODY

    def current(self) -> str:
        """The URL to forward to now."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return self.url
        stamp = (stat.st_mtime_ns, stat.st_ino)  # each write_upstream is a new inode: no change goes unseen
        if stamp != self._stamp:
            data = json.loads(self.path.read_text())
            self.url, self.release, self._stamp = data["url"], data.get("release", ""), stamp
            self.max_body = int(data.get("max_body") or DEFAULT_MAX_BODY)
        return self.url


def write_upstream(path: Path, url: str, release: str, max_body: int = DEFAULT_MAX_BODY) -> None:
    """Atomically point the gateway at `url`, refusing bodies over `max_body` before they reach it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "release": release, "max_body": max_body}))
    os.replace(tmp, path)


class Gateway:
    """The proxy as a plain ASGI app: GET /_gateway reports the upstream and in-flight counts; the rest is forwarded.

    Args:
        upstream_file: the JSON file naming the upstream (written by the promotion routine).
        read_timeout_s: the longest wait for the next request bytes from a client.
        upstream_timeout_s: the longest wait for the upstream's answer.
    """

    def __init__(self, upstream_file: Path, read_timeout_s: float = 30.0, upstream_timeout_s: float = 60.0) -> None:
        self.upstream = Upstream(upstream_file)
        self.in_flight: Counter[str] = Counter()
        self.read_timeout_s = read_timeout_s
        self.upstream_timeout_s = upstream_timeout_s
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The pooled upstream client (created in the server's event loop)."""
        if self._client is None:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.upstream_timeout_s), limits=limits)
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve /_gateway, or forward the request to the upstream chosen when it arrived."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        rid = request_id(scope)
        send = tag_answers(send, rid)
        if scope["path"] == "/_gateway" and scope["method"] == "GET":
            url = self.upstream.current()
            info = {"upstream": url, "release": self.upstream.release, "in_flight": dict(self.in_flight)}
            await send_json(send, 200, info)
            return
        url = self.upstream.current()  # no await between choosing the upstream and counting the request on it
        self.in_flight[url] += 1
        try:
            await self._forward(scope, receive, send, url, rid)
        finally:
            self.in_flight[url] -= 1
            if not self.in_flight[url]:
                del self.in_flight[url]

    async def _forward(self, scope: Scope, receive: Receive, send: Send, url: str, rid: str) -> None:
        if not url:
            await send_json(send, 503, {"error": "no production release is being served"}, RETRY_AFTER)
            return
        post = scope["method"] == "POST"
        limit = min(self.upstream.max_body, MAX_OTHER_BODY)
        if post and scope["path"] in UPLOADS:
            limit = self.upstream.max_body
        elif post and scope["path"] in RAW_UPLOADS:  # the image's bytes, or base64 in JSON: the backend's own limit
            limit = raw_upload_limit(self.upstream.max_body - FRAMING)
        body = await read_or_refuse(scope, receive, send, rid, limit, self.read_timeout_s)
        if body is None:
            return
        try:
            headers = [(k, v) for k, v in scope["headers"] if k.decode("latin-1").lower() not in HOP_HEADERS]
            headers = [(k, v) for k, v in headers if k.lower() not in (REQUEST_ID.encode(), WARM_UP.encode())]
            headers.append((REQUEST_ID.encode(), rid.encode()))
            if body.size:
                headers.append((b"content-length", str(body.size).encode()))
            query = scope["query_string"].decode("latin-1")
            target = url + scope["path"] + (f"?{query}" if query else "")
            try:
                response = await self._send(scope["method"], target, headers, body)
            except httpx.ConnectError:
                await send_json(send, 503, {"error": "no model server is up; retry shortly"}, RETRY_AFTER)
                return
            except httpx.TimeoutException as exc:
                await send_json(send, 504, {"error": f"the model server did not answer: {type(exc).__name__}"})
                return
            except httpx.HTTPError as exc:
                await send_json(send, 502, {"error": f"upstream failed: {type(exc).__name__}"})
                return
            await self._relay(response, send)
        finally:
            body.close()

    async def _send(self, method: str, target: str, headers: list, body: Body) -> httpx.Response:
        """Send the spooled request; once more when a pooled keep-alive connection turns out closed upstream."""
        for attempt in (1, 2):
            request = self.client.build_request(
                method, target, headers=headers, content=body.chunks() if body.size else None
            )
            try:
                return await self.client.send(request, stream=True)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _relay(self, response: httpx.Response, send: Send) -> None:
        """Read the upstream's answer (small JSON) and send it back; a failure mid-answer is a 502.

        BentoML answers 429 past its `max_concurrency`; that is shed load, so clients get the batcher's 503.
        """
        skip = HOP_HEADERS | {"content-encoding"}
        out = [(k, v) for k, v in response.headers.raw if k.decode("latin-1").lower() not in skip]
        try:
            chunks = []
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            await send_json(send, 502, {"error": f"upstream failed mid-answer: {type(exc).__name__}"})
            return
        finally:
            await response.aclose()
        if response.status_code == 429:  # BentoML's concurrency cap shed it: the same answer as the batcher's
            body = {"error": "the model service is overloaded; retry shortly", "reason": "overloaded"}
            await send_json(send, 503, body, RETRY_AFTER)
            return
        data = b"".join(chunks)
        out.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        await send({"type": "http.response.body", "body": data})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main(argv: list[str] | None = None) -> None:
    """Serve the gateway with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream-file", type=Path, required=True)
    parser.add_argument("--read-timeout", type=float, default=30.0, help="seconds a client may pause mid-request")
    args = parser.parse_args(argv)
    app: Any = Gateway(args.upstream_file, read_timeout_s=args.read_timeout)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        server_header=False,  # the upstream's own Server and Date headers pass through
        date_header=False,
        limit_concurrency=512,  # connections beyond this get 503 instead of memory
    )


if __name__ == "__main__":
    main()
