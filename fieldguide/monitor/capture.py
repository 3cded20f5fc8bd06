"""What a serving process records: the prediction log, feedback, and the photos sampled for review.

Layout of a monitoring folder (`<FIELDGUIDE_HOME>/monitor/production`; staging has its own):

    servers/<release>-<port>-w<front worker>/predictions/data/data.0.log[.N]   BentoML monitor JSON lines, by size
    servers/<release>-<port>-w<front worker>/feedback/data/data.0.log[.N]
    hold/<request id>.<ext>                       photos held for feedback_hold_s, then deleted
    samples/<sha[:2]>/<sha256>.<ext> (+ .json)    sampled photos: content-addressed, capped

Each front process writes only its own log files (a rotating handler must have one writer); readers glob them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from fieldguide.data.images import encode_jpeg, load_rgb, resize_shorter
from fieldguide.monitor.config import CaptureConfig

# Environment of a serving process, set by fieldguide.serve.servers.start_bento.
MONITOR_DIR_VAR = "FIELDGUIDE_MONITOR_DIR"
CAPTURE_VAR = "FIELDGUIDE_CAPTURE"
SERVER_VAR = "FIELDGUIDE_SERVER"
PREDICTIONS = "predictions"
FEEDBACK = "feedback"
RECENT = 100_000  # request ids a server remembers without reading its log
# What a server remembers of an answer for feedback (and for the sample's sidecar).
ANSWER_KEYS = ("request_id", "release", "group", "child_model", "species", "species_probability", "image_sha256")


def as_stored(img: Image.Image, store_size: int, jpeg_quality: int) -> Image.Image:
    """An upload as the shards would store it (shorter side resized, JPEG round trip): the reference's look."""
    return load_rgb(encode_jpeg(resize_shorter(img, store_size), jpeg_quality))


def observed_features(img: Image.Image, store_size: int, jpeg_quality: int) -> dict[str, float]:
    """The drift features of an upload, measured exactly as on the release's reference images."""
    from fieldguide.data.images import image_stats

    return image_stats(as_stored(img, store_size, jpeg_quality))


LOG_CONFIG = """
version: 1
disable_existing_loggers: false
loggers:
  fieldguide_monitor.{{monitor_name}}.data:
    level: INFO
    handlers: [{{monitor_name}}_data]
    propagate: false
  fieldguide_monitor.{{monitor_name}}.schema:
    level: INFO
    handlers: [{{monitor_name}}_schema]
    propagate: false
handlers:
  {{monitor_name}}_data:
    class: logging.handlers.RotatingFileHandler
    level: INFO
    formatter: bentoml_json
    filename: '{{data_filename}}'
    maxBytes: {max_bytes}
    backupCount: {backups}
  {{monitor_name}}_schema:
    class: logging.FileHandler
    level: INFO
    formatter: bentoml_json
    filename: '{{schema_filename}}'
formatters:
  bentoml_json:
    class: pythonjsonlogger.jsonlogger.JsonFormatter
    format: "()"
    validate: false
"""


def monitor_class() -> type:
    """BentoML's DefaultMonitor with a logger per monitor, fieldguide's request id, and UTC timestamps.

    DefaultMonitor names its loggers the same for every monitor, so a second monitor in a process (feedback)
    would redirect the first one's records into its own file; here each monitor's loggers carry its name.
    """
    import logging

    from bentoml._internal.monitoring.default import DefaultMonitor

    class FieldguideMonitor(DefaultMonitor):
        PRESERVED_COLUMNS = ()  # `request_id` is ours: the edge's id, returned to the client

        def _init_logger(self) -> None:
            super()._init_logger()
            self.data_logger = logging.getLogger(f"fieldguide_monitor.{self.name}.data")
            self.schema_logger = logging.getLogger(f"fieldguide_monitor.{self.name}.schema")

        def export_data(self, datas: dict[str, Any]) -> None:
            if self.data_logger is None:
                self._init_logger()
            while all(datas.values()):
                record = {k: v.popleft() for k, v in datas.items()}
                record.setdefault("timestamp", now_iso())
                self.data_logger.info(record)

    return FieldguideMonitor


def now_iso() -> str:
    """The current UTC time, ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat()


def log_files(folder: Path, name: str) -> list[Path]:
    """Every server's log files of one stream (predictions or feedback), rotated ones included, oldest first."""
    files = [p for p in folder.glob(f"servers/*/{name}/data/data.*.log*") if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_mtime)


def read_records(folder: Path, name: str, since: datetime | None = None, until: datetime | None = None) -> list[dict]:
    """The log records of a stream within [since, until), in time order (unreadable lines are skipped)."""
    out = []
    for path in log_files(folder, name):
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                    at = datetime.fromisoformat(record["timestamp"])
                except (ValueError, KeyError, TypeError):
                    continue
                if (since is None or at >= since) and (until is None or at < until):
                    out.append(record)
    out.sort(key=lambda r: r["timestamp"])
    return out


def find_record(folder: Path, name: str, request_id: str, newer_than_s: float | None = None) -> dict | None:
    """The newest record of a request id in a stream's log files, newest files first.

    With `newer_than_s`, only files written within that many seconds are read.
    """
    needle = f'"{request_id}"'
    oldest = time.time() - newer_than_s if newer_than_s is not None else 0.0
    for path in reversed(log_files(folder, name)):
        if path.stat().st_mtime < oldest:
            break
        with path.open(encoding="utf-8", errors="replace") as fh:
            hits = [line for line in fh if needle in line]
        for line in reversed(hits):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("request_id") == request_id:
                    return record
    return None


class SampleStore:
    """Held and kept photos on disk, each area under its own byte cap (the oldest entries go first).

    Held photos are named by their sha256 and deleted after `feedback_hold_s`. Kept photos are content-addressed
    by the upload's sha256, stored without metadata (re-encoded: no EXIF, no location), with a JSON sidecar naming
    the requests and why they were kept; both go after `retention_days`. Calls are serialized within the process
    and each area's usage is kept in memory (re-read from disk by every sweep), so a request never walks the disk
    unless its photo would cross the cap. Every front process of a server (two by default), and both servers of a
    role during a blue/green switch, share the areas: each sees the others' writes at its next sweep (every 5 s at
    most), so a cap can be overshot by that many seconds of the other processes' photos. A kept photo's sidecar is
    rewritten under a file lock, so two processes sampling the same photo both record their request.
    """

    EXTENSIONS = ("jpg", "png", "webp")

    def __init__(self, folder: Path, cfg: CaptureConfig) -> None:
        self.hold_dir = folder / "hold"
        self.sample_dir = folder / "samples"
        self.cfg = cfg
        self._last_sweep = 0.0
        self._lock = threading.RLock()
        self._used: dict[Path, int] = {}

    def hold(self, sha256: str, data: bytes, ext: str) -> None:
        """Hold an upload for feedback (nothing is held when it alone exceeds the hold cap)."""
        with self._lock:
            path = self.hold_dir / f"{sha256}.{ext}"
            if self._make_room(self.hold_dir, len(data), self.cfg.hold_cap_bytes, keep={path}):
                self._write(self.hold_dir, path, data)

    def held(self, sha256: str) -> Path | None:
        """The held photo with this sha256, if it is still held."""
        return next((p for e in self.EXTENSIONS if (p := self.hold_dir / f"{sha256}.{e}").is_file()), None)

    def kept(self, sha256: str) -> Path | None:
        """The kept photo with this sha256, if any."""
        folder = self.sample_dir / sha256[:2]
        return next((p for e in self.EXTENSIONS if (p := folder / f"{sha256}.{e}").is_file()), None)

    def keep(self, sha256: str, data: bytes, request: dict[str, Any]) -> bool:
        """Keep a photo (once per sha256, without its metadata) and record the request that sampled it.

        Returns False when it cannot fit the cap (which counts the photos and their sidecars).
        """
        with self._lock, _file_lock(self.sample_dir.with_name("samples.lock")):
            image = self.kept(sha256)
            new = image is None
            if new:
                data = strip_metadata(data)
                image = self.sample_dir / sha256[:2] / f"{sha256}.jpg"
            sidecar = image.with_suffix(".json")
            info = json.loads(sidecar.read_text()) if sidecar.is_file() else {"sha256": sha256, "file": image.name}
            info.setdefault("kept_at", now_iso())
            requests = [r for r in info.get("requests", []) if r.get("request_id") != request.get("request_id")]
            info["requests"] = [*requests, request]
            payload = json.dumps(info, indent=1).encode()
            old = sidecar.stat().st_size if sidecar.is_file() else 0
            need = (len(data) if new else 0) + len(payload) - old
            if not self._make_room(self.sample_dir, need, self.cfg.sample_cap_bytes, keep={image, sidecar}):
                return False
            if new:
                self._write(self.sample_dir, image, data)
            self._write(self.sample_dir, sidecar, payload, replaces=old)
            return True

    def keep_held(self, sha256: str, request: dict[str, Any]) -> bool:
        """Keep a photo because feedback flagged it; False when it is gone (past the hold, or over the cap).

        A held photo moves into the samples; one already sampled gets the request added to its sidecar.
        """
        with self._lock:
            path = self.held(sha256)
            if path is None:
                return self.kept(sha256) is not None and self.keep(sha256, b"", request)
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # swept meanwhile
                return False
            kept = self.keep(sha256, data, request)
            self._delete(self.hold_dir, [path])
            return kept

    def usage(self, area: Path) -> int:
        """Bytes on disk in an area (sidecars included), read between two of this store's operations."""
        with self._lock:
            return sum(size for _, size, _ in _files(area))

    def sweep(self, every_s: float = 5.0) -> None:
        """Delete held photos past the hold time and samples past the retention (at most every `every_s`).

        A sample's age is its photo's (a sidecar is rewritten by every request that samples it again); a sidecar
        whose photo is gone goes too. Each area's usage is re-read from disk.
        """
        with self._lock:
            now = time.time()
            if now - self._last_sweep < every_s:
                return
            self._last_sweep = now
            old = [p for t, _, p in _files(self.hold_dir) if now - t > self.cfg.feedback_hold_s]
            self._delete(self.hold_dir, old)
            retention = self.cfg.retention_days * 86400
            for files in _entries(self.sample_dir).values():
                images = [(t, p) for t, _, p in files if p.suffix != ".json"]
                if not images or now - images[0][0] > retention:
                    self._delete(self.sample_dir, [p for _, _, p in files])
            for area in (self.hold_dir, self.sample_dir):
                self._used[area] = self.usage(area)

    def _write(self, area: Path, path: Path, data: bytes, replaces: int = 0) -> None:
        _write_atomic(path, data)
        self._used[area] = self._used.get(area, 0) + len(data) - replaces

    def _delete(self, area: Path, paths: list[Path]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                size = path.stat().st_size
                path.unlink()
                self._used[area] = self._used.get(area, 0) - size

    def _make_room(self, area: Path, size: int, cap: int, keep: set[Path]) -> bool:
        """Delete the oldest entries of an area until `size` more bytes fit under `cap`.

        An entry is a photo with its sidecar; entries holding a path in `keep` are never deleted. The disk is
        walked only when the photo would not fit by the in-memory count.
        """
        if size > cap:
            return False
        if area not in self._used:
            self._used[area] = self.usage(area)
        if self._used[area] + size <= cap:
            return True
        entries = _entries(area)
        self._used[area] = sum(s for files in entries.values() for _, s, _ in files)
        for files in entries.values():
            if self._used[area] + size <= cap:
                break
            if not any(path in keep for _, _, path in files):
                self._delete(area, [path for _, _, path in files])
        return self._used[area] + size <= cap


def strip_metadata(data: bytes) -> bytes:
    """A photo as oriented pixels only (JPEG, quality 95): no EXIF, no location, nothing but the image."""
    return encode_jpeg(load_rgb(data), 95)


def _entries(area: Path) -> dict[Path, list[tuple[float, int, Path]]]:
    """An area's files grouped by entry (a photo and its sidecar), oldest entry first."""
    entries: dict[Path, list[tuple[float, int, Path]]] = {}
    for item in _files(area):  # oldest first: an entry's place is its oldest file's
        entries.setdefault(item[2].with_suffix(""), []).append(item)
    return entries


def _files(area: Path) -> list[tuple[float, int, Path]]:
    """(mtime, size, path) of the files under an area, oldest first (files vanishing meanwhile are skipped)."""
    out = []
    for path in area.rglob("*") if area.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            if path.is_file() and not path.name.endswith(".tmp"):
                out.append((st.st_mtime, st.st_size, path))
    out.sort()
    return out


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (flock on `path`), held for the block."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class FeedbackRefused(Exception):
    """Feedback the service refuses: HTTP status, machine-readable reason, detail."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status, self.reason, self.detail = status, reason, detail

    def body(self) -> dict[str, str]:
        """The JSON error body."""
        return {"error": self.detail, "reason": self.reason}


@dataclass
class Feedback:
    """A user's verdict on one answer: the right species, or only that it was wrong."""

    request_id: str
    species: str = ""
    wrong: bool = False

    @classmethod
    def parse(cls, body: bytes) -> Feedback:
        """Parse a POST /feedback body.

        Raises:
            FeedbackRefused: 400 for a body that is not JSON or not `{request_id, species}` / `{request_id,
                wrong: true}`.
        """
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise FeedbackRefused(400, "malformed_json", "the body is not JSON") from None
        usage = 'send {"request_id": ID, "species": NAME} or {"request_id": ID, "wrong": true}'
        if not isinstance(data, dict) or set(data) - {"request_id", "species", "wrong"}:
            raise FeedbackRefused(400, "bad_feedback", usage)
        rid, species, wrong = data.get("request_id"), data.get("species", ""), data.get("wrong", False)
        if not isinstance(rid, str) or not rid or not isinstance(species, str) or not isinstance(wrong, bool):
            raise FeedbackRefused(400, "bad_feedback", f"wrong field types: {usage}")
        if bool(species) == bool(wrong):
            raise FeedbackRefused(400, "bad_feedback", f"exactly one of species and wrong: {usage}")
        return cls(rid, species.strip(), wrong)


class Capture:
    """The serving process's recorder: one log record per answer, sampled photos, feedback.

    Args:
        folder: the monitoring folder of this server's role (production or staging).
        server: this server's name (its own log files live under servers/<server>/).
        cfg: what to record and keep.
        taxonomy: a release id → that release's species → group (corrections are checked against the release
            that answered, which after a rollout may not be this server's).
    """

    def __init__(
        self, folder: Path, server: str, cfg: CaptureConfig, taxonomy: Callable[[str], dict[str, str]]
    ) -> None:
        self.folder = folder
        self.server = server
        self.log_dir = folder / "servers" / server
        self.cfg = cfg
        self.taxonomy = taxonomy
        self.samples = SampleStore(folder, cfg)
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()  # request id → what feedback needs of it
        self._random = random.Random()
        # Records are written one at a time: BentoML's monitor configures its logger on first use, and two requests
        # configuring it at once would drop a record.
        self._lock = threading.Lock()
        self.log_config = self.log_dir / "logging.yaml"
        if cfg.enabled:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.log_config.write_text(LOG_CONFIG.format(max_bytes=cfg.log_max_bytes, backups=cfg.log_backups))
            self.samples.sweep(every_s=0)  # photos held by a server that stopped go now, not at the first request

    @contextlib.contextmanager
    def _monitor(self, stream: str) -> Iterator[Any]:
        """BentoML's monitor of one stream of this server (named per server: BentoML caches monitors by name)."""
        import bentoml

        options = {"log_path": str(self.log_dir.parent), "log_config_file": str(self.log_config)}
        with bentoml.monitor(f"{self.server}/{stream}", monitor_class=monitor_class(), monitor_options=options) as m:
            yield m

    def record(self, entry: dict[str, Any], data: bytes, ext: str) -> None:
        """Log one answer (its fields: request_id, release, answer, features, embeddings …) and sample its photo."""
        if entry["species_probability"] < self.cfg.low_confidence:
            entry["sampled"] = "low_confidence"
        elif self._random.random() < self.cfg.audit_fraction:
            entry["sampled"] = "audit"
        else:
            entry["sampled"] = ""
        if entry["sampled"]:
            self.samples.keep(entry["image_sha256"], data, _sample_request(entry, entry["sampled"]))
        elif self.cfg.feedback_hold_s > 0:
            self.samples.hold(entry["image_sha256"], data, ext)
        with self._lock, self._monitor(PREDICTIONS) as mon:
            for name, value in entry.items():
                mon.log(value, name=name, role=_role(name), data_type=_type(value))
        self.recent[entry["request_id"]] = {**{k: entry[k] for k in ANSWER_KEYS}, "top": _packed(entry.get("top", []))}
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        self.samples.sweep(every_s=self.sweep_every_s)

    @property
    def sweep_every_s(self) -> float:
        """How often held photos past their hold time are looked for."""
        return min(5.0, max(self.cfg.feedback_hold_s / 4, 0.1))

    def start_sweeper(self) -> None:
        """Sweep in a daemon thread too, so held photos go on time when no request comes."""

        def loop() -> None:
            while True:
                time.sleep(self.sweep_every_s)
                with contextlib.suppress(OSError):
                    self.samples.sweep(every_s=0)

        threading.Thread(target=loop, name="fieldguide-sweeper", daemon=True).start()

    def answered(self, request_id: str) -> dict[str, Any] | None:
        """The logged answer to a request id: this server's memory, else any server's recent prediction log."""
        return self.recent.get(request_id) or find_record(
            self.folder, PREDICTIONS, request_id, newer_than_s=self.cfg.retention_days * 86400
        )

    def feedback(self, body: bytes) -> dict[str, Any]:
        """Record feedback on an answer and keep its photo for review when it is still held.

        Raises:
            FeedbackRefused: 400 malformed, 404 unknown request id, 422 species outside the answering release.
        """
        fb = Feedback.parse(body)
        entry = self.answered(fb.request_id)
        if entry is None:
            raise FeedbackRefused(404, "unknown_request", f"no answer with request id {fb.request_id!r} was logged")
        species = self.taxonomy(entry["release"])
        if fb.species and fb.species not in species:
            raise FeedbackRefused(
                422, "unknown_species", f"{fb.species!r} is not a species of release {entry['release']}"
            )
        record = {
            "request_id": fb.request_id,
            "species_given": fb.species,
            "wrong": fb.wrong or fb.species != entry["species"],
            "group_given": species.get(fb.species, ""),
            "answered_species": entry["species"],
            "answered_group": entry["group"],
            "child_model": entry["child_model"],
            "release": entry["release"],
            "image_sha256": entry["image_sha256"],
        }
        kept = self.samples.keep_held(entry["image_sha256"], _sample_request(entry, "feedback"))
        with self._lock, self._monitor(FEEDBACK) as mon:
            for name, value in record.items():
                role = "target" if name.endswith("_given") else "feature"
                mon.log(value, name=name, role=role, data_type=_type(value))
        return {"request_id": fb.request_id, "recorded": "correction" if fb.species else "wrong", "photo_kept": kept}


def _packed(top: list[dict[str, Any]]) -> str:
    """The top answers as one short string (the recent-answers cache holds 100 000 of them)."""
    return "\t".join(f"{t['name']}\t{t['probability']}" for t in top)


def _unpacked(top: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not isinstance(top, str):
        return top
    parts = top.split("\t") if top else []
    return [{"name": n, "probability": float(p)} for n, p in zip(parts[::2], parts[1::2], strict=True)]


def _sample_request(entry: dict[str, Any], reason: str) -> dict[str, Any]:
    answer = {k: entry[k] for k in ANSWER_KEYS if k != "image_sha256"}
    return {**answer, "top": _unpacked(entry.get("top", [])), "reason": reason, "at": now_iso()}


def _role(name: str) -> str:
    return (
        "prediction" if name in ("group", "group_probability", "species", "species_probability", "top") else "feature"
    )


def _type(value: Any) -> str:
    if isinstance(value, bool | str | dict):
        return "categorical"
    if isinstance(value, list | tuple):
        return "numerical_sequence"
    return "numerical"


def capture_config_json(cfg: CaptureConfig) -> str:
    """The JSON a server reads its capture settings from (CAPTURE_VAR)."""
    return json.dumps(asdict(cfg))


def staging_capture(cfg: CaptureConfig) -> CaptureConfig:
    """What a staging server records: the log only (its requests are the staging checks' test images, not users')."""
    return replace(cfg, feedback_hold_s=0, low_confidence=0.0, audit_fraction=0.0)


def log_entry(
    predictor: Any, stored: dict[str, Any], result: dict[str, Any], row: Any, img: Image.Image, data: bytes
) -> dict[str, Any]:
    """The prediction-log entry of one answer.

    Ids, versions, the image's hash and drift features, the reduced embeddings, the router's and the top-1 child's
    answers with their confidences, the top-k species and the latency.

    Args:
        predictor: the release's fieldguide.serve.front.ReleaseView.
        stored: how the release's reference images were stored (store_size, jpeg_quality).
        result: the JSON answer (request_id, species, latency_ms).
        row: the forward row of the answer.
        img: the decoded upload.
        data: the upload's bytes.
    """
    import hashlib

    from fieldguide.monitor.projections import observation

    p_group, p_species, router_emb, child_emb = predictor.split(row)
    return {
        "request_id": result["request_id"],
        "release": predictor.release.id,
        "versions": predictor.release.versions,
        "image_sha256": hashlib.sha256(data).hexdigest(),
        **observation(predictor, p_group, p_species),
        "top": result["species"],
        **observed_features(img, stored["store_size"], stored["jpeg_quality"]),
        "router_embedding": [round(float(v), 5) for v in router_emb],
        "child_embedding": [round(float(v), 5) for v in child_emb],
        "latency_ms": result.get("latency_ms", 0.0),
        "upload_width": img.width,  # the camera's resolution (the drift features are measured as stored)
        "upload_height": img.height,
    }


def photo_extension(data: bytes) -> str:
    """The file extension of an accepted upload, from its first bytes."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"
