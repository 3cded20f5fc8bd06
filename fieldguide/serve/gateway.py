"""The production endpoint: a small reverse proxy on a fixed port in front of the live BentoML server.

Blue/green promotion starts the new server on another port, checks it, then points this proxy at it (by
rewriting the upstream file) and stops the old server once its in-flight requests have drained, so clients
never see the switch. Run as `python -m fieldguide.serve.gateway --port 3000 --upstream-file FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# Bodies above this are refused here, before they reach a model server.
MAX_BODY = 64 * 1024 * 1024
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}


class Upstream:
    """The upstream URL from a JSON file, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self.url = ""
        self.release = ""

    def current(self) -> str:
        """The URL to forward to now."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return self.url
        if mtime != self._mtime:
            data = json.loads(self.path.read_text())
            self.url, self.release, self._mtime = data["url"], data.get("release", ""), mtime
        return self.url


def write_upstream(path: Path, url: str, release: str) -> None:
    """Atomically point the gateway at `url`."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "release": release}))
    os.replace(tmp, path)


def create_app(upstream_file: Path) -> Starlette:
    """The proxy app: /_gateway reports the upstream and in-flight counts; everything else is forwarded."""
    upstream = Upstream(upstream_file)
    in_flight: Counter[str] = Counter()
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=httpx.Limits(max_connections=256))

    async def info(_: Request) -> JSONResponse:
        url = upstream.current()
        return JSONResponse({"upstream": url, "release": upstream.release, "in_flight": dict(in_flight)})

    async def proxy(request: Request) -> Response:
        url = upstream.current()
        if not url:
            return JSONResponse({"error": "no production release is being served"}, status_code=503)
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_BODY:
            return JSONResponse({"error": f"request body over {MAX_BODY} bytes", "reason": "too_large"}, 413)
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        in_flight[url] += 1
        try:
            resp = await client.request(
                request.method, url + request.url.path, params=request.query_params, headers=headers, content=body
            )
        except httpx.HTTPError as exc:
            return JSONResponse({"error": f"upstream unavailable: {type(exc).__name__}"}, status_code=502)
        finally:
            in_flight[url] -= 1
            if not in_flight[url]:
                del in_flight[url]
        out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS | {"content-encoding"}}
        return Response(resp.content, status_code=resp.status_code, headers=out)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/_gateway", info), Route("/{path:path}", proxy, methods=methods)])


def main(argv: list[str] | None = None) -> None:
    """Serve the gateway with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream-file", type=Path, required=True)
    args = parser.parse_args(argv)
    app: Any = create_app(args.upstream_file)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
