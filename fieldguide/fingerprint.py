"""What a model trains on, as one hash: its view's rows and labels, its training config, the weights it starts from.

`--pipeline all` skips a model whose fingerprint equals its newest version's, so one new species retrains one
child. The router's data part is its set of groups only: new rows alone do not retrain it. A child that starts
from the router pins that router's version; the skip check compares against the router its newest version was
pinned to, so a new router does not by itself retrain the children.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fieldguide.errors import FieldguideError
from fieldguide.keys import ModelKey

if TYPE_CHECKING:  # the registry CLI reads Init without loading torch (which shards' imports bring)
    from fieldguide.data.shards import ShardSet

ROUTER, SCRATCH, FILE = "router", "scratch", "file"
# The monitoring verdict (production version metadata `monitoring.verdict`) that retrains a model regardless.
RETRAIN_VERDICT = "retrain_recommended"


def digest(value: Any) -> str:
    """sha256 of a JSON value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str) -> str:
    """Content hash of a weights file.

    Raises:
        FieldguideError: when the file does not exist.
    """
    if not Path(path).is_file():
        raise FieldguideError(f"weights file not found: {path}")
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass(frozen=True)
class Init:
    """Where a model's weights start (recorded on its version as `init`)."""

    # router: the backbone from a router version; scratch: timm's init (or train.pretrained_file); file: a file.
    mode: str
    # mode router: the router's model version id (the pin).
    router: str = ""
    # mode router: the router version as people name it ("router v3").
    label: str = ""
    # mode router: the router version's `model` artifact version id (what the pipeline loads).
    artifact: str = ""
    # mode router: the router's timm architecture, which the child must share ('' when not recorded).
    arch: str = ""
    # mode file, or scratch with train.pretrained_file: the weights file.
    file: str = ""
    # Content hash of `file` (a file changed in place is another start).
    sha256: str = ""
    # Why this start was chosen when it is not the configured one (no production router yet).
    note: str = ""

    def pin(self) -> dict[str, str]:
        """The part that enters the fingerprint."""
        if self.mode == ROUTER:
            return {"mode": ROUTER, "router": self.router}
        return {"mode": self.mode, "sha256": self.sha256}

    def describe(self) -> str:
        """One phrase: 'router v3', 'scratch', 'file w.safetensors'."""
        if self.mode == ROUTER:
            return self.label or f"router {self.router[:8]}"
        if self.mode == FILE:
            return f"file {Path(self.file).name}"
        return f"scratch (pretrained {Path(self.file).name})" if self.file else "scratch"

    def to_dict(self) -> dict[str, str]:
        """JSON-able form (version metadata, ModelMeta.init)."""
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Init:
        """Inverse of to_dict ({} reads as scratch: versions trained before fingerprints)."""
        return cls(**{k: str(v) for k, v in data.items() if k in cls.__dataclass_fields__}) if data else cls(SCRATCH)


def view_data(key: ModelKey, shard_set: ShardSet) -> dict[str, Any] | None:
    """The data part of a model's fingerprint: labels, image storage and (not for the router) rows per split.

    None when the shard set predates row digests (such a model always trains).
    """
    from fieldguide.data.shards import SPLITS

    classes = shard_set.classes
    if not shard_set.digests:
        return None
    stored = {"size": shard_set.store_size, "jpeg_quality": shard_set.jpeg_quality}
    if key.kind == "router":
        return {"labels": list(classes.groups), "stored": stored}
    groups = [key.group] if key.kind == "child" else list(classes.groups)
    labels = classes.group_species(key.group) if key.kind == "child" else list(classes.species)
    rows = {s: [shard_set.digests.get(s, {}).get(g, "") for g in groups] for s in SPLITS}
    return {"labels": labels, "stored": stored, "rows": rows}


@dataclass(frozen=True)
class Fingerprint:
    """A model's fingerprint and its parts (recorded on each version as `fingerprint`)."""

    # Hash of the three parts below: equal → training would repeat the newest version.
    digest: str
    # Hash of the data part (None: unknown, the shard set predates row digests).
    data: str | None
    # Hash of the training config (view, train parameters, tuning and its sampled trials).
    config: str
    # The start of the weights (Init.pin()).
    init: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, key: ModelKey, shard_set: ShardSet, config: dict[str, Any], init: Init) -> Fingerprint:
        """The fingerprint of training `key` on `shard_set` with `config`, starting from `init`."""
        data = view_data(key, shard_set)
        return cls("", None if data is None else digest(data), digest(config)).started_from(init)

    def started_from(self, init: Init) -> Fingerprint:
        """The same data and config started from `init` (the whole digest recomputed)."""
        parts = {"data": self.data, "config": self.config, "init": init.pin()}
        return replace(self, digest=digest(parts) if self.data is not None else "", init=init.pin())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    def changes_since(self, recorded: dict[str, Any]) -> list[str]:
        """What differs from a recorded fingerprint ([] when training would repeat it)."""
        if not recorded:
            return ["it has no fingerprint"]
        if self.data is None:
            return ["the dataset's shards predate fingerprints (rerun the data pipeline)"]
        changes = []
        if recorded.get("data") != self.data:
            changes.append("data changed")
        if recorded.get("config") != self.config:
            changes.append("config changed")
        if recorded.get("init") != self.init:
            changes.append("start of the weights changed")
        return changes


def with_pin(init: Init, recorded: dict[str, Any]) -> Init:
    """`init` pinned to the router of a recorded fingerprint when both start from a router (else `init`)."""
    pinned = (recorded or {}).get("init") or {}
    if init.mode == ROUTER and pinned.get("mode") == ROUTER:
        return replace(init, router=str(pinned.get("router", "")))
    return init
