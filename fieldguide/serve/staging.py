"""Staging tests of a release: health, serving correctness, served sanity, bad input, latency, regression."""

from __future__ import annotations

import io
import statistics
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
from sklearn.metrics import f1_score

from fieldguide.data.loader import iter_tar_samples
from fieldguide.data.shards import ShardSet
from fieldguide.evaluate.two_stage import TwoStageTable, two_stage_hits
from fieldguide.keys import ModelKey
from fieldguide.runconfig import DeployConfig
from fieldguide.serve.predictor import TwoStagePredictor
from fieldguide.serve.release import Release
from fieldguide.train.models import load_bundle


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


def production_reference(production: Release, folder: Path, shard_set: ShardSet) -> tuple[str, float]:
    """(id, end-to-end accuracy) of the production release on `shard_set`'s test split.

    The figure recorded at its assembly when it was measured on the same dataset version; otherwise the release
    in `folder` is evaluated in process on this test split, so the regression check always compares like with like.
    """
    recorded = production.end_to_end_accuracy()
    if production.dataset_version == shard_set.dataset_version and recorded is not None:
        return production.id, recorded
    router = load_bundle(folder / ModelKey.router().name)
    children = {g: load_bundle(folder / ModelKey.child(g).name) for g in router.meta.classes}
    k = min(production.serving.route_k, len(children))
    table = TwoStageTable.of(two_stage_hits(router, children, shard_set, (k,), strict=False))
    print(f"production {production.id} evaluated in process on dataset {shard_set.dataset_version[:12]}")
    return production.id, next(iter(table.end_to_end.values()))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width`×`height` but carries one empty data chunk (a decompression-bomb probe)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bad_images(jpeg: bytes, max_bytes: int) -> list[tuple[str, str, bytes, str]]:
    """Malformed uploads as (name, file name, bytes, content type): what every upload route must refuse with a 4xx."""
    gif = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(gif, format="GIF")
    return [
        ("not an image", "x.jpg", b"hello, not an image", "image/jpeg"),
        ("truncated jpeg", "x.jpg", jpeg[: len(jpeg) // 3], "image/jpeg"),
        ("empty file", "x.jpg", b"", "image/jpeg"),
        ("huge declared dimensions", "x.png", png_header(100_000, 100_000), "image/png"),
        ("unsupported format", "x.gif", gif.getvalue(), "image/gif"),
        ("over the byte limit", "x.jpg", b"\xff" * (max_bytes + 1), "image/jpeg"),
    ]


def bad_requests(jpeg: bytes, max_bytes: int) -> list[tuple[str, dict[str, Any]]]:
    """Malformed /classify requests as httpx keyword arguments, by name: the bad images, and broken multipart."""
    bad = bad_images(jpeg, max_bytes)
    return [(name, {"files": {"file": (file, data, ctype)}}) for name, file, data, ctype in bad] + [
        ("wrong field", {"files": {"image": ("x.jpg", jpeg, "image/jpeg")}}),
        ("empty body", {"content": b""}),
        ("random bytes", {"content": bytes(range(256)) * 4, "headers": {"content-type": "multipart/form-data"}}),
    ]


@dataclass
class Served:
    """One held-out image sent to staging: its label, the served answer and the in-process answer."""

    label: str
    served_top1: str  # "" when the request failed
    served_group: str
    local_top1: str
    local_margin: float  # in-process top-1 probability minus the second one (a near tie flips on rounding)


def in_process_answer(predictor: TwoStagePredictor, jpeg: bytes) -> tuple[str, float]:
    """The in-process two-stage top-1 species and its margin over the runner-up."""
    row = predictor.split(predictor.forward(predictor.decode(jpeg)[None])[0])[1]
    order = np.argsort(-row)
    margin = float(row[order[0]] - row[order[1]]) if len(order) > 1 else 1.0
    return predictor.species[int(order[0])], margin


def serving_correctness(served: list[Served], near_tie: float) -> Check:
    """Served top-1 equals the in-process top-1 on the same images, up to max(1, 1%) near-tie flips."""
    differ = [s for s in served if s.served_top1 != s.local_top1]
    hard = [s for s in differ if s.local_margin >= near_tie]
    allowed = max(1, len(served) // 100)
    passed = bool(served) and not hard and len(differ) <= allowed
    detail = (
        f"{len(served) - len(differ)}/{len(served)} served top-1 answers equal the in-process two-stage top-1; "
        f"{len(differ)} differ ({len(differ) - len(hard)} near ties under margin {near_tie}, at most {allowed} allowed)"
    )
    if hard:
        detail += f"; e.g. served {hard[0].served_top1!r} where in process {hard[0].local_top1!r}"
    return Check("serving correctness", passed, detail)


def served_sanity(served: list[Served], config: DeployConfig) -> Check:
    """Macro-F1 of the served answers, and no child answering one class for every image routed to it."""
    labels = [s.label for s in served]
    answers = [s.served_top1 for s in served]
    f1 = float(f1_score(labels, answers, labels=sorted(set(labels)), average="macro", zero_division=0))
    accuracy = sum(a == y for a, y in zip(answers, labels, strict=True)) / max(len(served), 1)
    routed: dict[str, list[Served]] = {}
    for s in served:
        routed.setdefault(s.served_group, []).append(s)
    degenerate = [
        f"{ModelKey.child(group)} answered {rows[0].served_top1!r} for all {len(rows)} images routed to it "
        f"({len({r.label for r in rows})} true species among them)"
        for group, rows in sorted(routed.items())
        if group
        and len(rows) >= config.degenerate_min_images
        and len({r.served_top1 for r in rows}) == 1
        and len({r.label for r in rows}) >= 2
    ]
    passed = bool(served) and f1 >= config.min_served_macro_f1 and not degenerate
    detail = (
        f"served macro-F1 {f1:.3f} (minimum {config.min_served_macro_f1}), top-1 {accuracy:.3f} "
        f"on {len(served)} held-out images"
    )
    if degenerate:
        detail += "; degenerate: " + "; ".join(degenerate)
    return Check("served sanity", passed, detail)


def regression(candidate: float | None, production: tuple[str, float] | None, max_drop: float) -> Check:
    """The candidate's evaluated end-to-end accuracy against production's on the same test split."""
    if production is None:
        return Check("regression", True, "no release in production to compare with")
    live, reference = production
    if candidate is None:
        return Check("regression", False, "this release has no end-to-end evaluation recorded")
    passed = candidate >= reference - max_drop
    return Check(
        "regression",
        passed,
        f"end-to-end accuracy {candidate:.3f} vs production {live} {reference:.3f} on the same test split "
        f"(drop {reference - candidate:+.3f}, at most {max_drop} allowed)",
    )


def raw_bad_requests(jpeg: bytes, max_bytes: int) -> list[tuple[str, dict[str, Any]]]:
    """The bad images as `/invocations` bodies (SageMaker's contract: the image bytes themselves), by name."""
    return [(f"raw: {name}", {"content": data}) for name, _, data, _ in bad_images(jpeg, max_bytes)]


class Transport(Protocol):
    """How the staging checks reach a candidate: its health, and one image classified."""

    where: str  # shown in the report

    def health(self, release_id: str) -> Check:
        """Is it up, and does it serve `release_id`?"""
        ...

    def classify(self, jpeg: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for one image."""
        ...


@dataclass
class HttpTransport:
    """A staging server on this machine: /readyz, /release and multipart /classify."""

    client: httpx.Client

    @property
    def where(self) -> str:
        """The server's URL."""
        return str(self.client.base_url).rstrip("/")

    def health(self, release_id: str) -> Check:
        """/readyz answers 200 and /release names the release."""
        ready = self.client.get("/readyz").status_code
        info = self.client.get("/release").json() if ready == 200 else {}
        healthy = ready == 200 and info.get("id") == release_id
        return Check("health", healthy, f"/readyz {ready}, /release {info.get('id')}")

    def classify(self, jpeg: bytes) -> tuple[int, dict[str, Any]]:
        """POST /classify with the image as multipart field `file`."""
        resp = self.client.post("/classify", files={"file": ("x.jpg", jpeg, "image/jpeg")})
        return resp.status_code, resp.json() if resp.status_code == 200 else {}


@dataclass
class EndpointTransport:
    """A SageMaker endpoint: DescribeEndpoint for health, sagemaker-runtime InvokeEndpoint for answers."""

    endpoints: Any  # fieldguide.serve.endpoints.Endpoints
    name: str

    @property
    def where(self) -> str:
        """The endpoint's name."""
        return f"sagemaker:{self.name}"

    def health(self, release_id: str) -> Check:
        """InService, and its endpoint config's model is the release's."""
        info = self.endpoints.describe(self.name) or {}
        serving = self.endpoints.serving(info)
        status = info.get("EndpointStatus", "missing")
        return Check("health", status == "InService" and serving == release_id, f"{status}, serves {serving or '-'}")

    def classify(self, jpeg: bytes) -> tuple[int, dict[str, Any]]:
        """InvokeEndpoint with the image bytes (what SageMaker posts to the container's /invocations)."""
        return self.endpoints.classify(self.name, jpeg)


def run_staging_tests(
    transport: Transport,
    bad_input: httpx.Client,
    release_id: str,
    predictor: TwoStagePredictor,
    samples: list[tuple[bytes, str]],
    config: DeployConfig,
    production: tuple[str, float] | None = None,
    compare_with_production: bool = True,
    log: Callable[[str], None] = print,
) -> StagingReport:
    """Run every check through `transport`; failures are recorded, never raised.

    Args:
        transport: how the candidate is reached (a staging server, or a staging endpoint).
        bad_input: the staging server of the same bento on this machine, which gets the malformed multipart and
            raw requests (`invoke_endpoint` carries raw bytes: it cannot send a broken multipart body).
        release_id: the release it must serve.
        predictor: the same release in process (the reference for serving correctness).
        samples: held-out (JPEG, species) pairs of the candidate's test split.
        config: budgets and thresholds.
        production: (release id, end-to-end accuracy on the candidate's test split) of the live release, if any.
        compare_with_production: False for a rollback, where going back to an older release is the point.
        log: where each check's line goes as it is decided.
    """
    report = StagingReport(release_id, transport.where)

    def record(check: Check) -> None:
        report.checks.append(check)
        log(f"  [{'ok' if check.passed else 'FAIL'}] {check.name}: {check.detail}")

    try:
        record(transport.health(release_id))
        served = []
        for jpeg, species in samples:
            status, body = transport.classify(jpeg)
            local, margin = in_process_answer(predictor, jpeg)
            top = (body.get("species") if status == 200 else None) or [{"name": ""}]
            served.append(Served(species, top[0]["name"], (body.get("group") or {}).get("name", ""), local, margin))
        record(serving_correctness(served, config.near_tie))
        record(served_sanity(served, config))
        record(bad_input_check(bad_input, samples[0][0] if samples else b"", predictor.config.max_bytes))
        record(latency_check(transport, samples, config))
    except Exception as exc:  # noqa: BLE001 - HTTP or AWS errors: the candidate could not be checked
        record(Check("staging server", False, f"{type(exc).__name__} talking to {transport.where}: {exc}"))
    if compare_with_production:
        record(regression(predictor.release.end_to_end_accuracy(), production, config.release_max_drop))
    else:
        record(Check("regression", True, "not compared with production (rollback)"))
    return report


def bad_input_check(client: httpx.Client, jpeg: bytes, max_bytes: int) -> Check:
    """Malformed multipart /classify and raw /invocations requests all get a 4xx; the server stays healthy."""
    codes = {name: client.post("/classify", **kwargs).status_code for name, kwargs in bad_requests(jpeg, max_bytes)}
    for name, kwargs in raw_bad_requests(jpeg, max_bytes):
        codes[name] = client.post("/invocations", **kwargs).status_code
    bad = {n: c for n, c in codes.items() if not 400 <= c < 500}
    after = client.get("/readyz").status_code
    return Check(
        "bad input",
        not bad and after == 200,
        f"{len(codes)} malformed requests → {sorted(set(codes.values()))}; healthy after: {after == 200}"
        + (f"; not 4xx: {bad}" if bad else ""),
    )


def latency_check(transport: Transport, samples: list[tuple[bytes, str]], config: DeployConfig) -> Check:
    """p95 of `latency_requests` sequential answers within the budget."""
    times = []
    for jpeg, _ in (samples * config.latency_requests)[: config.latency_requests]:
        start = time.perf_counter()
        transport.classify(jpeg)
        times.append((time.perf_counter() - start) * 1000)
    p95 = sorted(times)[int(0.95 * (len(times) - 1))] if times else float("inf")
    return Check(
        "latency",
        p95 <= config.p95_budget_ms,
        f"p50 {statistics.median(times or [0]):.1f} ms, p95 {p95:.1f} ms (budget {config.p95_budget_ms} ms)",
    )
