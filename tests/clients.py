"""Hostile and slow HTTP clients for the serving tests (raw sockets where httpx would hide the behaviour)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx


@dataclass
class FloodResult:
    """What a chunked upload got back."""

    status: int  # 0 when no complete answer came
    body: bytes
    seconds: float  # from the first byte sent to the complete answer
    sent: int  # bytes the client managed to send before the answer (kernel buffers included)
    after: int  # bytes it could still send in the second after the answer (the server stopped reading: few)


def chunked_flood(port: int, total: int, timeout_s: float, path: str = "/classify") -> FloodResult:
    """POST a `total`-byte chunked multipart body, reading while sending; stop at the first complete answer."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: multipart/form-data; boundary=fieldguide\r\n\r\n"
    ).encode()
    part = b'--fieldguide\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
    chunk = b"\xff" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    pending = head + f"{len(part):x}\r\n".encode() + part + b"\r\n"
    sent, got, start = 0, b"", time.monotonic()
    try:
        while time.monotonic() - start < timeout_s:
            try:
                data = sock.recv(65536)
                if not data:
                    break
                got += data
            except BlockingIOError:
                pass
            if (status := _complete(got)) is not None:
                seconds = time.monotonic() - start
                return FloodResult(status, got.split(b"\r\n\r\n", 1)[1], seconds, sent, _keep_sending(sock, frame))
            if sent < total:
                pending = pending or frame
                try:
                    n = sock.send(pending)
                    pending, sent = pending[n:], sent + n
                except BlockingIOError:
                    time.sleep(0.001)
                except OSError:
                    sent = total  # the server closed its side: read what it answered
            else:
                time.sleep(0.005)
    except OSError:
        pass
    finally:
        sock.close()
    status = _complete(got)
    return FloodResult(status or 0, got.split(b"\r\n\r\n", 1)[-1], time.monotonic() - start, sent, 0)


def _keep_sending(sock: socket.socket, frame: bytes, seconds: float = 1.0) -> int:
    """Bytes the peer still accepts within `seconds` (until it closes the connection or stops reading)."""
    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sent += sock.send(frame)
        except BlockingIOError:
            time.sleep(0.005)
        except OSError:
            break
    return sent


def _complete(raw: bytes) -> int | None:
    """The status of a complete HTTP answer with Content-Length in `raw`, else None."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    length = next((int(v) for k, _, v in (h.partition(b":") for h in lines[1:]) if k.lower() == b"content-length"), -1)
    return int(lines[0].split()[1]) if 0 <= length <= len(body) else None


def multipart(jpeg: bytes) -> tuple[bytes, str]:
    """A multipart body with `jpeg` in field `file`, and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return body + jpeg + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Hammer(threading.Thread):
    """A client sending requests to production until stopped, counting every failure."""

    def __init__(self, url: str, jpeg: bytes) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.jpeg = jpeg
        self.stop_event = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.releases: set[str] = set()

    def request(self, client: httpx.Client) -> httpx.Response:
        """One POST /classify of the image."""
        return client.post(f"{self.url}/classify", files={"file": ("x.jpg", self.jpeg, "image/jpeg")})

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop_event.is_set():
                try:
                    resp = self.request(client)
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                    continue
                if resp.status_code == 200:
                    self.ok += 1
                    self.releases.add(resp.json()["release"])
                else:
                    self.failures.append(f"{resp.status_code} {resp.text[:200]}")

    def finish(self) -> Hammer:
        self.stop_event.set()
        self.join(timeout=60)
        return self


class SlowUploader(Hammer):
    """A client whose uploads each take about `seconds` to send (chunked, in pieces), repeated until stopped."""

    def __init__(self, url: str, jpeg: bytes, seconds: float = 2.0, pieces: int = 10) -> None:
        super().__init__(url, jpeg)
        self.seconds, self.pieces = seconds, pieces
        self.data, self.content_type = multipart(jpeg)

    def body(self) -> Iterator[bytes]:
        step = -(-len(self.data) // self.pieces)
        for i in range(0, len(self.data), step):
            yield self.data[i : i + step]
            time.sleep(self.seconds / self.pieces)

    def request(self, client: httpx.Client) -> httpx.Response:
        """One POST /classify sent over about `seconds`."""
        return client.post(f"{self.url}/classify", content=self.body(), headers={"content-type": self.content_type})
