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

import aiohttp

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
# Not forwarded: hop-by-hop headers, the length (set from the spooled body), and `expect` (the body is already here).
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length", "expect"}
# Set by the gateway itself, never taken from a client.
OWN_HEADERS = HOP_HEADERS | {REQUEST_ID, WARM_UP}
# An idle pooled connection is dropped before the upstream's uvicorn drops it (its keep-alive timeout is 5 s).
KEEPALIVE_S = 4.0
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
        self._client: aiohttp.ClientSession | None = None

    @property
    def client(self) -> aiohttp.ClientSession:
        """The pooled upstream client (created in the server's event loop).

        aiohttp, not httpx: the profile in bench/serve.py showed httpx's connection pool costing more CPU per
        forwarded request than the rest of the gateway together. Bodies are not decompressed, no header of the
        client's own is added, and no cookie is kept (one client's cookies never reach another's requests).
        """
        if self._client is None:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=KEEPALIVE_S),
                timeout=aiohttp.ClientTimeout(total=self.upstream_timeout_s),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
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
            headers = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in scope["headers"]
                if k.decode("latin-1").lower() not in OWN_HEADERS
            ]
            headers.append((REQUEST_ID, rid))
            if body.size:
                headers.append(("content-length", str(body.size)))
            query = scope["query_string"].decode("latin-1")
            target = url + scope["path"] + (f"?{query}" if query else "")
            try:
                response = await self._send(scope["method"], target, headers, body)
            except aiohttp.ClientConnectorError:
                await send_json(send, 503, {"error": "no model server is up; retry shortly"}, RETRY_AFTER)
                return
            except TimeoutError as exc:
                await send_json(send, 504, {"error": f"the model server did not answer: {type(exc).__name__}"})
                return
            except aiohttp.ClientError as exc:
                await send_json(send, 502, {"error": f"upstream failed: {type(exc).__name__}"})
                return
            await self._relay(response, send)
        finally:
            body.close()

    async def _send(self, method: str, target: str, headers: list, body: Body) -> aiohttp.ClientResponse:
        """Send the spooled request; once more when a pooled keep-alive connection turns out closed upstream."""
        for attempt in (1, 2):
            try:
                return await self.client.request(
                    method, target, headers=headers, data=body.chunks() if body.size else None, allow_redirects=False
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientConnectionResetError) as exc:
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise
        raise AssertionError("unreachable")

    async def _relay(self, response: aiohttp.ClientResponse, send: Send) -> None:
        """Read the upstream's answer (small JSON) and send it back; a failure mid-answer is a 502.

        BentoML answers 429 past its `max_concurrency`; that is shed load, so clients get the batcher's 503.
        """
        skip = HOP_HEADERS | {"content-encoding"}
        out = [(k, v) for k, v in response.raw_headers if k.decode("latin-1").lower() not in skip]
        try:
            data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            await send_json(send, 502, {"error": f"upstream failed mid-answer: {type(exc).__name__}"})
            return
        finally:
            response.release()
        if response.status == 429:  # BentoML's concurrency cap shed it: the same answer as the batcher's
            body = {"error": "the model service is overloaded; retry shortly", "reason": "overloaded"}
            await send_json(send, 503, body, RETRY_AFTER)
            return
        out.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        await send({"type": "http.response.body", "body": data})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.close()
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
