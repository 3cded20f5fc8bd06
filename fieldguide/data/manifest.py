"""Versioned dataset manifests: enough to rebuild a dataset version bit for bit, or to say which file changed."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fieldguide.data.catalog import read_bytes
from fieldguide.data.qa import QAResult, ValidImage
from fieldguide.errors import FieldguideError

SCHEMA = 1


def dataset_version_id(images: list[ValidImage], rules_version: str) -> str:
    """Hash over sorted (sha256, label, group) plus the rules version: same content → same id, wherever it lives."""
    h = hashlib.sha256(f"rules:{rules_version}\n".encode())
    for sha, label, group in sorted((i.sha256, i.label, i.group) for i in images):
        h.update(f"{sha}\t{label}\t{group}\n".encode())
    return "ds-" + h.hexdigest()[:16]


@dataclass
class Manifest:
    """One dataset version: its id, where it came from, and every valid image."""

    dataset_version: str
    rules_version: str
    source: str
    created: str
    counts: dict[str, Any]
    images: list[ValidImage] = field(default_factory=list)
    schema: int = SCHEMA

    @classmethod
    def from_qa(cls, qa: QAResult) -> Manifest:
        """Build the manifest of QA's valid images (sorted by species then hash, so the file is stable)."""
        return cls.build(qa.valid, qa.rules.version, qa.source, len(qa.rejected))

    @classmethod
    def build(cls, valid: list[ValidImage], rules_version: str, source: str, rejected: int) -> Manifest:
        """Build a manifest from valid images."""
        images = sorted(valid, key=lambda i: (i.group, i.label, i.sha256))
        per_species = Counter(i.label for i in images)
        return cls(
            dataset_version=dataset_version_id(images, rules_version),
            rules_version=rules_version,
            source=source,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            counts={
                "images": len(images),
                "species": len(per_species),
                "groups": len({i.group for i in images}),
                "rejected": rejected,
                "per_species": dict(sorted(per_species.items())),
            },
            images=images,
        )

    def to_json(self) -> str:
        """Serialise to indented JSON."""
        data = asdict(self)
        return json.dumps(data, indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a manifest, checking its schema."""
        data = json.loads(text)
        if data.get("schema") != SCHEMA:
            raise FieldguideError(f"manifest schema {data.get('schema')!r} is not supported (expected {SCHEMA})")
        data["images"] = [ValidImage(**i) for i in data["images"]]
        return cls(**data)

    @classmethod
    def load(cls, path: str) -> Manifest:
        """Read a manifest file (local or remote)."""
        try:
            return cls.from_json(read_bytes(path).decode())
        except FileNotFoundError:
            raise FieldguideError(f"manifest not found: {path}") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise FieldguideError(f"{path} is not a fieldguide manifest ({exc})") from None

    def species_to_group(self) -> dict[str, str]:
        """Species → group for every species in this version."""
        return {i.label: i.group for i in self.images}


@dataclass
class RecreateResult:
    """What `recreate` wrote and which source files no longer match."""

    written: int
    changed: list[str]
    vanished: list[str]

    @property
    def ok(self) -> bool:
        """True when every file matched its recorded sha256."""
        return not self.changed and not self.vanished


def recreate(manifest: Manifest, out: Path, storage_options: dict[str, Any] | None = None) -> RecreateResult:
    """Copy every image of `manifest` to `out/<group>/<species>/<sha256>.<ext>` with a catalog.csv, verifying hashes.

    Files whose bytes changed or that vanished are not written; they are listed in the result.

    Raises:
        FieldguideError: before anything is written, when a row's group, label or file name would leave `out`.
    """
    destinations = [destination(img, out, n) for n, img in enumerate(manifest.images, start=1)]
    out.mkdir(parents=True, exist_ok=True)
    changed, vanished, rows = [], [], []
    for img, rel in zip(manifest.images, destinations, strict=True):
        try:
            data = read_bytes(img.uri, storage_options)
        except FileNotFoundError:
            vanished.append(img.uri)
            continue
        if hashlib.sha256(data).hexdigest() != img.sha256:
            changed.append(img.uri)
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        rows.append((rel.as_posix(), img.label, img.group))
    with (out / "catalog.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uri", "label", "group"])
        writer.writerows(rows)
    return RecreateResult(written=len(rows), changed=changed, vanished=vanished)


def destination(img: ValidImage, out: Path, row: int = 0) -> Path:
    """Where `recreate` writes `img`, relative to `out`: `<group>/<species>/<sha256>.<ext>`.

    Raises:
        FieldguideError: when the group, label or file name is empty, `.`/`..`, holds a path separator or NUL,
            or would resolve outside `out`.
    """
    parts = {"group": img.group, "label": img.label, "file name": f"{img.sha256}.{_suffix(img.format)}"}
    for what, name in parts.items():
        if name in ("", ".", "..") or any(c in name for c in ("/", "\\", "\0")):
            raise FieldguideError(_escape_message(img, row, what, name, out))
    rel = Path(*parts.values())
    try:
        inside = (out / rel).resolve().is_relative_to(out.resolve())
    except (OSError, RuntimeError):  # a symlink loop under `out`
        inside = False
    if not inside:
        raise FieldguideError(_escape_message(img, row, "path", rel.as_posix(), out))
    return rel


def _escape_message(img: ValidImage, row: int, what: str, name: str, out: Path) -> str:
    return (
        f"manifest row {row} ({img.uri}): {what} {name!r} would be written outside the output folder {out}; "
        "groups, labels and file names must be plain names. Nothing was written: fix or regenerate the manifest"
    )


def _suffix(fmt: str) -> str:
    return {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(fmt, fmt.lower() or "bin")


@dataclass
class ManifestDiff:
    """Row-level differences between two dataset versions, keyed by source uri."""

    added: list[ValidImage]
    removed: list[ValidImage]
    relabelled: list[tuple[ValidImage, ValidImage]]
    content_changed: list[tuple[ValidImage, ValidImage]]

    @property
    def empty(self) -> bool:
        """True when the versions hold the same rows."""
        return not (self.added or self.removed or self.relabelled or self.content_changed)


def diff(a: Manifest, b: Manifest) -> ManifestDiff:
    """Compare two manifests row by row (by uri): added, removed, relabelled, and content changed."""
    old = {i.uri: i for i in a.images}
    new = {i.uri: i for i in b.images}
    relabelled, content = [], []
    for uri in sorted(old.keys() & new.keys()):
        x, y = old[uri], new[uri]
        if (x.label, x.group) != (y.label, y.group):
            relabelled.append((x, y))
        if x.sha256 != y.sha256:
            content.append((x, y))
    return ManifestDiff(
        added=[new[u] for u in sorted(new.keys() - old.keys())],
        removed=[old[u] for u in sorted(old.keys() - new.keys())],
        relabelled=relabelled,
        content_changed=content,
    )
