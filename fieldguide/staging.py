"""Staging tests of a release over HTTP: health, known answers, bad input, latency, accuracy."""

from __future__ import annotations

import io
import statistics
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from fieldguide.deploy import DeployConfig
from fieldguide.loader import iter_tar_samples
from fieldguide.serving import TwoStagePredictor
from fieldguide.shards import ShardSet


@dataclass
class Check:
    """One staging check."""

    name: str
    passed: bool
    detail: str


@dataclass
class StagingReport:
    """All checks of one staging run (the `staging_report` artifact)."""

    release: str
    url: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every check passed."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    def text(self) -> str:
        """One line per check."""
        lines = [f"staging tests of {self.release} at {self.url}: {'PASSED' if self.passed else 'FAILED'}"]
        lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagingReport:
        """Inverse of dataclasses.asdict."""
        return cls(data["release"], data["url"], [Check(**c) for c in data["checks"]])


def held_out_samples(shard_set: ShardSet, limit: int) -> list[tuple[bytes, str]]:
    """Up to `limit` (JPEG bytes, species) pairs from the test split, in shard order (a held-out sample)."""
    out: list[tuple[bytes, str]] = []
    for url in shard_set.urls("test"):
        for sample in iter_tar_samples(url):
            out.append((sample["jpg"], shard_set.classes.species[int(sample["species.cls"])]))
            if len(out) >= limit:
                return out
    return out


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width`×`height` but carries one empty data chunk (a decompression-bomb probe)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bad_requests(jpeg: bytes, max_bytes: int) -> list[tuple[str, dict[str, Any]]]:
    """Malformed /classify requests as httpx keyword arguments, by name."""
    gif = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(gif, format="GIF")
    return [
        ("not an image", {"files": {"file": ("x.jpg", b"hello, not an image", "image/jpeg")}}),
        ("truncated jpeg", {"files": {"file": ("x.jpg", jpeg[: len(jpeg) // 3], "image/jpeg")}}),
        ("empty file", {"files": {"file": ("x.jpg", b"", "image/jpeg")}}),
        ("huge declared dimensions", {"files": {"file": ("x.png", png_header(100_000, 100_000), "image/png")}}),
        ("unsupported format", {"files": {"file": ("x.gif", gif.getvalue(), "image/gif")}}),
        ("wrong field", {"files": {"image": ("x.jpg", jpeg, "image/jpeg")}}),
        ("empty body", {"content": b""}),
        ("random bytes", {"content": bytes(range(256)) * 4, "headers": {"content-type": "multipart/form-data"}}),
        ("over the byte limit", {"files": {"file": ("x.jpg", b"\xff" * (max_bytes + 1), "image/jpeg")}}),
    ]


def run_staging_tests(
    url: str,
    release_id: str,
    predictor: TwoStagePredictor,
    samples: list[tuple[bytes, str]],
    expected_accuracy: float,
    config: DeployConfig,
    production_accuracy: float | None = None,
    log: Callable[[str], None] = print,
) -> StagingReport:
    """Run every check against `url`; failures are recorded, never raised.

    The accuracy floor is the release's own evaluation figure, or the production release's figure on the same
    test split when that is higher, minus `config.accuracy_delta`: a release must serve what its evaluation
    promised and must not serve worse than what is live.
    """
    report = StagingReport(release_id, url)

    def check(name: str, passed: bool, detail: str) -> None:
        report.checks.append(Check(name, passed, detail))
        log(f"  [{'ok' if passed else 'FAIL'}] {name}: {detail}")

    with httpx.Client(base_url=url, timeout=30) as client:
        ready = client.get("/readyz").status_code
        info = client.get("/release").json() if ready == 200 else {}
        check("health", ready == 200 and info.get("id") == release_id, f"/readyz {ready}, /release id {info.get('id')}")

        known = samples[: config.known_images]
        mismatches = []
        for i, (jpeg, _) in enumerate(known):
            resp = client.post("/classify", files={"file": (f"{i}.jpg", jpeg, "image/jpeg")})
            want = predictor.classify(jpeg)
            got = resp.json() if resp.status_code == 200 else {}
            if [s["name"] for s in got.get("species", [])] != [s["name"] for s in want["species"]]:
                mismatches.append(i)
        check(
            "known images",
            not mismatches and bool(known),
            f"{len(known) - len(mismatches)}/{len(known)} served answers equal the in-process two-stage answer",
        )

        codes = {}
        for name, kwargs in bad_requests(known[0][0] if known else b"", predictor.config.max_bytes):
            codes[name] = client.post("/classify", **kwargs).status_code
        bad = {n: c for n, c in codes.items() if not 400 <= c < 500}
        after = client.get("/readyz").status_code
        check(
            "bad input",
            not bad and after == 200,
            f"{len(codes)} malformed requests → {sorted(set(codes.values()))}; healthy after: {after == 200}"
            + (f"; not 4xx: {bad}" if bad else ""),
        )

        times = []
        for jpeg, _ in (samples * config.latency_requests)[: config.latency_requests]:
            start = time.perf_counter()
            client.post("/classify", files={"file": ("x.jpg", jpeg, "image/jpeg")})
            times.append((time.perf_counter() - start) * 1000)
        p95 = sorted(times)[int(0.95 * (len(times) - 1))] if times else float("inf")
        check(
            "latency",
            p95 <= config.p95_budget_ms,
            f"p50 {statistics.median(times or [0]):.1f} ms, p95 {p95:.1f} ms (budget {config.p95_budget_ms} ms)",
        )

        correct = 0
        for i, (jpeg, species) in enumerate(samples):
            resp = client.post("/classify", files={"file": (f"{i}.jpg", jpeg, "image/jpeg")})
            if resp.status_code == 200 and resp.json()["species"][0]["name"] == species:
                correct += 1
        accuracy = correct / max(len(samples), 1)
        reference, source = expected_accuracy, "this release's evaluation"
        if production_accuracy is not None and production_accuracy > expected_accuracy:
            reference, source = production_accuracy, "the production release's evaluation"
        floor = reference - config.accuracy_delta
        check(
            "accuracy",
            bool(samples) and accuracy >= floor,
            f"{accuracy:.3f} on {len(samples)} held-out images; floor {floor:.3f} = {source} {reference:.3f} "
            f"− {config.accuracy_delta}",
        )
    return report
