"""The serving edge, shared by the gateway and the BentoML service.

Request ids, body limits and read timeouts enforced while the body streams in, and a multipart check before
BentoML parses an upload. Plain ASGI, so a refused body is never buffered: reading stops at the limit and the
413 goes out at once. A body under the limit is spooled (memory up to 1 MiB, then a temporary file) and replayed
to the app.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID = "x-request-id"
# Header of the warm-up requests a new server gets on its own port before the switch: answered, never recorded
# (the gateway drops it from outside requests).
WARM_UP = "x-fieldguide-warm-up"
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CHUNK = 64 * 1024
SPOOL_IN_MEMORY = 1024 * 1024
# Multipart framing (boundaries, part headers) allowed on top of the upload limit itself.
FRAMING = 64 * 1024
# The body limit of every request that is not an upload (/feedback, …).
MAX_OTHER_BODY = 1024 * 1024
# POST paths taking a multipart image upload, with their file fields.
UPLOADS = {"/classify": ("file",)}
# POST paths taking the image as the whole body (SageMaker's /invocations: bytes, or base64 in JSON, hence 4/3).
RAW_UPLOADS = ("/invocations",)


def raw_upload_limit(max_bytes: int) -> int:
    """The body limit of a raw upload route: an image at the upload limit, base64-encoded in a JSON object."""
    return max_bytes * 4 // 3 + FRAMING


class Refused(Exception):
    """A request refused at the edge: HTTP status, machine-readable reason, detail, and extra JSON fields."""

    def __init__(self, status: int, reason: str, detail: str, **extra: Any) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status, self.reason, self.detail, self.extra = status, reason, detail, extra

    def body(self, rid: str) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": self.detail, "reason": self.reason, **self.extra, "request_id": rid}


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


def header(scope: Scope, name: str) -> str:
    """A request header (latin-1 decoded), or ''."""
    key = name.lower().encode()
    for k, v in scope.get("headers", []):
        if k.lower() == key:
            return v.decode("latin-1")
    return ""


def request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when it is a sane token, else a new one."""
    given = header(scope, REQUEST_ID)
    return given if _VALID_ID.match(given) else uuid.uuid4().hex


def with_request_id(scope: Scope, rid: str) -> Scope:
    """A copy of `scope` whose X-Request-ID header is `rid` (what the app and the upstream see)."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != REQUEST_ID.encode()]
    return {**scope, "headers": [*headers, (REQUEST_ID.encode(), rid.encode())]}


async def send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """A complete JSON response."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def tagging(send: Send, rid: str) -> Send:
    """`send` with X-Request-ID on every answer, `request_id` added to every JSON error body, Retry-After on 503."""
    held: dict[str, Any] = {}
    buffer = bytearray()

    async def tagged(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID.encode()]
            headers.append((REQUEST_ID.encode(), rid.encode()))
            if message["status"] == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
                headers.append((b"retry-after", b"1"))  # every 503 here is shed load or a restarting backend
            ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            if message["status"] >= 400 and ctype.startswith(b"application/json"):
                held["start"] = {**message, "headers": headers}
                return
            await send({**message, "headers": headers})
        elif message["type"] == "http.response.body" and "start" in held:
            buffer.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            data = _with_id(bytes(buffer), rid)
            start = held.pop("start")
            start["headers"] = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            start["headers"].append((b"content-length", str(len(data)).encode()))
            await send(start)
            await send({"type": "http.response.body", "body": data})
        else:
            await send(message)

    return tagged


def _with_id(data: bytes, rid: str) -> bytes:
    try:
        body = json.loads(data)
    except ValueError:
        return data
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        body = body[0]  # BentoML answers a 4xx as a one-element list
    if not isinstance(body, dict):
        body = {"error": body}
    body.setdefault("request_id", rid)
    return json.dumps(body).encode()


class Body:
    """A request body read under a size limit and a per-read timeout, spooled for replay."""

    def __init__(self) -> None:
        self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed by close()
        self.size = 0

    @classmethod
    async def read(
        cls,
        receive: Receive,
        limit: int,
        timeout_s: float,
        on_chunk: Callable[[bytes], None] | None = None,
    ) -> Body:
        """Read the whole body, refusing the moment it crosses `limit` or a read waits over `timeout_s`.

        Raises:
            Refused: 413 over the limit (with the bytes received), 408 when the client stops sending, or what
                `on_chunk` raised.
            ClientGone: the client disconnected.
        """
        body = cls()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(receive(), timeout_s)
                except TimeoutError:
                    raise Refused(408, "read_timeout", f"no request bytes for {timeout_s:g} s") from None
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                body.size += len(chunk)
                if body.size > limit:
                    raise Refused(413, "too_large", f"request body over {limit} bytes", limit=limit, received=body.size)
                if chunk:
                    if on_chunk is not None:
                        on_chunk(chunk)
                    body.spool.write(chunk)
                if not message.get("more_body"):
                    break
        except BaseException:
            body.close()
            raise
        body.spool.seek(0)
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The spooled body, in chunks."""
        self.spool.seek(0)
        while chunk := self.spool.read(CHUNK):
            yield chunk

    def replay(self, receive: Receive) -> Receive:
        """A `receive` for the app: the spooled body, then the client's own messages (disconnect)."""
        self.spool.seek(0)
        done = False

        async def replayed() -> Message:
            nonlocal done
            if done:
                return await receive()
            chunk = self.spool.read(CHUNK)
            more = self.spool.tell() < self.size
            done = not more
            return {"type": "http.request", "body": chunk, "more_body": more}

        return replayed

    def close(self) -> None:
        """Drop the spool."""
        self.spool.close()


async def read_or_refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    rid: str,
    limit: int,
    timeout_s: float,
    check: MultipartCheck | None = None,
) -> Body | None:
    """The request body (declared size checked first), or None once a refusal has been answered.

    A refused connection is closed: the rest of its body is never read.
    """
    try:
        declared = header(scope, "content-length")
        if declared.isdigit() and int(declared) > limit:
            raise Refused(413, "too_large", f"request body is {declared} bytes; the limit is {limit}", limit=limit)
        body = await Body.read(receive, limit, timeout_s, check.feed if check else None)
    except Refused as exc:
        await send_json(send, exc.status, exc.body(rid), {"connection": "close"})
        return None
    except ClientGone:
        return None
    if check is not None:
        try:
            check.finish()
        except Refused as exc:
            body.close()
            await send_json(send, exc.status, exc.body(rid))
            return None
    return body


@dataclass
class MultipartCheck:
    """Streams a multipart body through python-multipart and accepts only the expected file fields.

    BentoML's own parser answers 500 to some malformed bodies (a non-UTF-8 part under an unexpected field name)
    and downloads a URL given as a text field where a file is expected, so the edge accepts exactly: each field
    in `files`, at most once, as a file part (with a filename), and nothing else.
    """

    boundary: bytes
    files: tuple[str, ...]
    max_parts: int = 8
    seen: list[str] = field(default_factory=list)
    ended: bool = False
    _parser: Any = None
    _headers: dict[bytes, bytes] = field(default_factory=dict)
    _name: bytes = b""
    _value: bytes = b""
    _error: Refused | None = None

    def __post_init__(self) -> None:
        from python_multipart.multipart import MultipartParser

        callbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_end": self._end,
        }
        self._parser = MultipartParser(self.boundary, callbacks)

    @classmethod
    def for_request(cls, content_type: str, files: tuple[str, ...]) -> MultipartCheck:
        """A check for a request's Content-Type.

        Raises:
            Refused: 415 when the body is not multipart/form-data, 400 without a boundary.
        """
        from python_multipart.multipart import parse_options_header

        ctype, options = parse_options_header(content_type)
        if ctype != b"multipart/form-data":
            raise Refused(415, "not_multipart", f"send the image as multipart/form-data field {files[0]!r}")
        boundary = options.get(b"boundary", b"")
        if not boundary or len(boundary) > 200:
            raise Refused(400, "bad_multipart", "multipart/form-data without a valid boundary")
        return cls(boundary, files)

    def feed(self, chunk: bytes) -> None:
        """Parse the next body bytes.

        Raises:
            Refused: 400 at the first malformed or unexpected part.
        """
        from python_multipart.exceptions import MultipartParseError

        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise Refused(400, "bad_multipart", f"malformed multipart body: {exc}") from None
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """Check the body was a complete multipart message holding every expected file.

        Raises:
            Refused: 400 when it was cut short or a file field is missing.
        """
        if not self.ended:
            raise Refused(400, "bad_multipart", "the multipart body ends before its closing boundary")
        missing = [f for f in self.files if f not in self.seen]
        if missing:
            raise Refused(400, "missing_file", f"no file in multipart field {missing[0]!r}")

    def _part_begin(self) -> None:
        self._headers = {}
        if len(self.seen) >= self.max_parts:
            self._error = self._error or Refused(400, "bad_multipart", f"more than {self.max_parts} parts")

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name, self._value = b"", b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        try:
            name = options.get(b"name", b"").decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        if disposition != b"form-data" or name not in self.files:
            expected = ", ".join(repr(f) for f in self.files)
            error = Refused(400, "unexpected_field", f"unexpected multipart field; send the image as {expected}")
        elif name in self.seen:
            error = Refused(400, "unexpected_field", f"multipart field {name!r} sent twice")
        elif b"filename" not in options:
            error = Refused(400, "missing_file", f"multipart field {name!r} must be a file upload, not text")
        else:
            self.seen.append(name)
            return
        self._error = self._error or error

    def _end(self) -> None:
        self.ended = True


class UploadEdge:
    """ASGI middleware for a service: request ids, body limits, read timeouts, and checked multipart uploads.

    The multipart check runs on the upload routes before the app parses anything.

    Args:
        app: the wrapped ASGI app.
        uploads: POST paths taking a multipart upload → their file fields.
        max_bytes: the upload limit (the file itself; multipart framing is allowed on top), or a callable giving it
            on first use (a BentoML service reads it from its release).
        read_timeout_s: the longest wait for the next request bytes.
        max_other_body: the body limit of every other request.
        raw_uploads: POST paths whose whole body is the image (limited to the upload limit itself).
    """

    def __init__(
        self,
        app: App,
        uploads: dict[str, tuple[str, ...]],
        max_bytes: int | Callable[[], int],
        read_timeout_s: float = 30.0,
        max_other_body: int = MAX_OTHER_BODY,
        raw_uploads: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.uploads = uploads
        self.raw_uploads = raw_uploads
        self._max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.max_other_body = max_other_body

    @property
    def max_bytes(self) -> int:
        """The upload limit, resolved once."""
        if callable(self._max_bytes):
            self._max_bytes = int(self._max_bytes())
        return self._max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check and spool the request, then hand it to the app (or answer a refusal)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        scope, send = with_request_id(scope, rid), tagging(send, rid)
        files = self.uploads.get(scope["path"]) if scope["method"] == "POST" else None
        raw = scope["method"] == "POST" and scope["path"] in self.raw_uploads
        limit = self.max_bytes + FRAMING if files else raw_upload_limit(self.max_bytes) if raw else self.max_other_body
        try:
            check = MultipartCheck.for_request(header(scope, "content-type"), files) if files else None
        except Refused as exc:
            await send_json(send, exc.status, exc.body(rid), {"connection": "close"})
            return
        body = await read_or_refuse(scope, receive, send, rid, limit, self.read_timeout_s, check)
        if body is None:
            return
        try:
            await self.app(scope, body.replay(receive), send)
        finally:
            body.close()
