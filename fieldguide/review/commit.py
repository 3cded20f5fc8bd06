"""Labelled photos into the catalog: a content-addressed feedback area, rows with provenance, the taxonomy grown."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fieldguide.errors import FieldguideError
from fieldguide.review.queue import Label

FEEDBACK_AREA = "feedback"
# Columns `review commit` adds to a catalog CSV (older rows get them empty).
PROVENANCE = ("source", "labeller")
REVIEW_SOURCE = "review"


@dataclass
class Addition:
    """What a commit adds to the catalog."""

    # Catalog rows: uri (relative to the catalog's folder), label, group, source, labeller.
    rows: list[dict[str, str]] = field(default_factory=list)
    # The label behind each row (same order).
    labels: list[Label] = field(default_factory=list)
    # Labels whose photo is gone (past the sample store's retention): not committed.
    missing: list[Label] = field(default_factory=list)
    # Labels whose photo is already a row of the catalog, with this label (an earlier commit that did not finish).
    present: list[Label] = field(default_factory=list)


def local_csv(catalog: str) -> Path:
    """The catalog as a local CSV path.

    Raises:
        FieldguideError: for an image folder or a remote catalog (their rows cannot carry provenance columns).
    """
    path = Path(catalog)
    if "://" in catalog or not path.is_file() or path.suffix.lower() != ".csv":
        raise FieldguideError(
            f"review commit adds rows to a local CSV catalog (uri,label,group); {catalog} is not one "
            "(give --catalog PATH.csv)"
        )
    return path.resolve()


def add_photos(catalog: Path, labels: list[Label], photo_of: Callable[[str], Path | None]) -> Addition:
    """Copy each label's kept photo into `<catalog folder>/feedback/<sha[:2]>/<sha>.jpg` and make its row.

    The file is named by the sha256 of its own bytes (the kept, metadata-free photo), so a photo is stored once.
    """
    existing = {row.get("uri", ""): row for row in _read(catalog)[1]}
    out = Addition()
    for label in labels:
        photo = photo_of(label.sha256)
        if photo is None:
            out.missing.append(label)
            continue
        data = photo.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        rel = f"{FEEDBACK_AREA}/{sha[:2]}/{sha}{photo.suffix.lower()}"
        old = existing.get(rel)
        if old is not None and (old.get("label"), old.get("group"), old.get("labeller")) == (
            label.species,
            label.group,
            label.by,
        ):
            out.present.append(label)
            continue
        target = catalog.parent / rel
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        out.rows.append(
            {"uri": rel, "label": label.species, "group": label.group, "source": REVIEW_SOURCE, "labeller": label.by}
        )
        out.labels.append(label)
    return out


def _read(catalog: Path) -> tuple[list[str], list[dict[str, str]]]:
    with catalog.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return [c.strip() for c in reader.fieldnames or []], rows


def append_rows(catalog: Path, rows: list[dict[str, str]]) -> None:
    """Append rows to a catalog CSV, adding the provenance and group columns when it lacks them (atomically).

    A row whose uri is already in the catalog replaces that row (a photo relabelled after an interrupted commit).
    """
    columns, old = _read(catalog)
    replacing = {row["uri"]: row for row in rows}
    old = [replacing.pop(row.get("uri", ""), row) for row in old]
    rows = list(replacing.values())
    for name in ("group", *PROVENANCE):
        if name not in columns:
            columns.append(name)
    tmp = catalog.with_name(f".{catalog.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c.strip(): v for c, v in row.items() if c is not None} for row in old)
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(catalog)


def extend_taxonomy(path: Path, new_species: dict[str, str]) -> list[str]:
    """Add species (species → group) to a taxonomy YAML (group → [species]); returns those it added.

    Raises:
        FieldguideError: when a species' group is not in the taxonomy.
    """
    data = yaml.safe_load(path.read_text()) or {}
    groups = data.get("groups", data)
    added = []
    for species, group in sorted(new_species.items()):
        if group not in groups:
            raise FieldguideError(f"{path}: group {group!r} of new species {species!r} is not in the taxonomy")
        if species not in groups[group]:
            groups[group].append(species)
            added.append(species)
    if added:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        tmp.replace(path)
    return added
