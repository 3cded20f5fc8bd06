"""A release: one router version plus one child version per group, and how it is served.

Plain data (no torch): the registry, the CLI and the staging checks read releases without loading models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldguide.errors import FieldguideError

RELEASE_FILE = "release.json"
# BentoML model holding a release folder (fieldguide-release:<release id>), and the bento serving it.
RELEASE_MODEL = "fieldguide-release"
BENTO_NAME = "fieldguide"
# The most rows one batched forward of the model service takes (bentos/service.py; the serving bench's batch).
MAX_BATCH_SIZE = 32


@dataclass
class ServingConfig:
    """How a release is served (travels inside the release, so staging and production behave the same)."""

    # Species returned per request.
    top_k: int = 5
    # Groups summed over: p(species) = Σ over the top route_k groups of p(group)·p(species | group).
    route_k: int = 2
    # Upload size limit; larger bodies get 413.
    max_bytes: int = 8_000_000
    # Decompression-bomb guard: images with more pixels get 413.
    max_pixels: int = 40_000_000
    # Image formats accepted (Pillow names); others get 415.
    allowed_formats: list[str] = field(default_factory=lambda: ["JPEG", "PNG", "WEBP"])
    # Adaptive batching of model forwards across concurrent requests (sizes: bentos/service.py's decorator).
    batching: bool = True
    # The batcher's latency budget: requests it cannot serve within this are shed with 503 + Retry-After.
    max_latency_ms: int = 1000
    # Children kept in memory at once (least recently used evicted); 0 keeps every child loaded.
    max_children_in_memory: int = 0
    # torch threads of the model worker: 1 stops OpenMP spinning against the HTTP front on a small machine (0: torch's).
    model_threads: int = 1
    # HTTP front processes (decode, preprocess, record): one is bound by its GIL well before the model service.
    front_workers: int = 2

    def __post_init__(self) -> None:
        if self.front_workers < 1 or self.model_threads < 0:
            raise FieldguideError(
                f"serving: front_workers must be ≥ 1 and model_threads ≥ 0 (0: torch's default), got "
                f"{self.front_workers} and {self.model_threads}"
            )


@dataclass
class Release:
    """A deployable two-stage classifier: one router version plus one child version per group."""

    id: str
    versions: dict[str, str]  # model name (router, child-<group>) → version ("v3")
    version_ids: dict[str, str]  # model name → ZenML model version id
    groups: list[str]
    created: str
    approved_by: str = ""
    status: str = "candidate"  # candidate, production, failed, archived (the registry's record is the truth)
    serving: ServingConfig = field(default_factory=ServingConfig)
    evaluation: dict[str, float] = field(default_factory=dict)  # the two-stage table of this release
    dataset_version: str = ""  # the dataset whose test split `evaluation` was measured on
    promoted_at: str = ""  # when it first went to production (rollback walks releases by this)
    failure: str = ""  # why its rollout failed (the staging report, or the error)
    rolled_back_at: str = ""  # when production was rolled back from it (never a rollback target again)
    rollback_failure: str = ""  # why a rollback to it failed (it stays archived)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Release:
        """Inverse of dataclasses.asdict."""
        return cls(**{**data, "serving": ServingConfig(**data.get("serving", {}))})

    def end_to_end_accuracy(self) -> float | None:
        """The two-stage end-to-end accuracy recorded at assembly (at the served routing k)."""
        return next((v for k, v in self.evaluation.items() if k.startswith("end-to-end")), None)


def read_release(folder: Path) -> Release:
    """The release.json of a release folder."""
    path = folder / RELEASE_FILE
    if not path.is_file():
        raise FieldguideError(f"no {RELEASE_FILE} in {folder}: not a fieldguide release")
    return Release.from_dict(json.loads(path.read_text()))


def release_stage_file(serving_dir: Path) -> Path:
    """Where the promotion routine writes each release's stage for the servers' /release answers."""
    return serving_dir / "stages.json"


def read_stage(serving_dir: Path | None, release_id: str) -> str:
    """The recorded stage of a release ('' when nothing is recorded)."""
    path = release_stage_file(serving_dir) if serving_dir else None
    if path is None or not path.is_file():
        return ""
    try:
        return str(json.loads(path.read_text()).get(release_id, ""))
    except (OSError, ValueError):
        return ""


def write_stage(serving_dir: Path, release_id: str, stage: str) -> None:
    """Record a release's stage (atomically) for the servers' /release answers."""
    path = release_stage_file(serving_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    stages = json.loads(path.read_text()) if path.is_file() else {}
    stages[release_id] = stage
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stages, indent=1))
    tmp.replace(path)
