"""Data QA: explicit, versioned rules decide which catalog rows are valid; every rejection has a reason code."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from fieldguide.config import QARules
from fieldguide.data.catalog import CatalogRow, allowed_roots, read_bytes, uri_refusal
from fieldguide.data.images import ImageLimits, ImageRejected, open_checked

# Every reason code QA can give, in the order the checks run.
REASONS: dict[str, str] = {
    "uri_not_allowed": "the uri is not s3:// and not under the catalog's folder or rules.allowed_roots (never read)",
    "missing": "the file does not exist (or the row has no uri)",
    "unreadable": "the file exists but could not be read",
    "empty": "the file has zero bytes",
    "not_an_image": "the content is not an image (whatever the suffix says)",
    "corrupt": "the image header or data could not be decoded",
    "format_not_allowed": "the image format is not in rules.allowed_formats",
    "too_many_pixels": "width*height exceeds rules.max_pixels (decompression-bomb guard, checked before decoding)",
    "too_small": "the shorter side is below rules.min_side",
    "truncated": "the image data ends early",
    "unknown_label": "the label is empty or not a species of the taxonomy",
    "no_group": "the species has no group (no group column, folder or taxonomy entry)",
    "group_conflict": "the row's group contradicts the species' group elsewhere",
    "duplicate": "the same bytes (sha256) appear earlier with the same label",
    "conflicting_duplicate": "the same bytes appear with different labels; all such rows are rejected",
    "rare_class": "the species has fewer valid images than rules.min_images_per_species",
}

# Below this many rows a process pool costs more than it saves.
_POOL_MIN_ROWS = 64


@dataclass
class ValidImage:
    """An image that passed QA: enough to find, verify and label it again."""

    uri: str
    sha256: str
    label: str
    group: str
    width: int
    height: int
    format: str
    size: int
    line: int = 0


@dataclass
class Rejection:
    """A rejected catalog row with its reason code."""

    line: int
    uri: str
    label: str
    reason: str
    detail: str


@dataclass
class ValidImages:
    """The images that passed QA (the `valid_images` artifact)."""

    source: str
    rules_version: str
    images: list[ValidImage] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidImages:
        """Rebuild from its JSON form (dataclasses.asdict)."""
        return cls(data["source"], data["rules_version"], [ValidImage(**v) for v in data["images"]])


@dataclass
class QAResult:
    """The outcome of QA on one catalog."""

    source: str
    rules: QARules
    valid: list[ValidImage] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def reason_counts(self) -> dict[str, int]:
        """Rejections per reason code, most frequent first."""
        return dict(Counter(r.reason for r in self.rejected).most_common())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "source": self.source,
            "rules": asdict(self.rules),
            "valid": [asdict(v) for v in self.valid],
            "rejected": [asdict(r) for r in self.rejected],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QAResult:
        """Inverse of to_dict."""
        return cls(
            source=data["source"],
            rules=QARules(**data["rules"]),
            valid=[ValidImage(**v) for v in data["valid"]],
            rejected=[Rejection(**r) for r in data["rejected"]],
            warnings=list(data["warnings"]),
        )


# Set once per worker process by _init_worker, so that each task only ships (line, uri).
_WORKER: dict[str, Any] = {}


def _init_worker(limits: ImageLimits, storage_options: dict[str, Any] | None) -> None:
    _WORKER["limits"], _WORKER["storage_options"] = limits, storage_options


def _check_file(task: tuple[int, str]) -> tuple[int, str | None, str, str, int, int, str, int]:
    """Worker: read and fully decode one file. Returns (line, reason|None, detail, sha256, w, h, format, size)."""
    line, uri = task
    try:
        data = read_bytes(uri, _WORKER["storage_options"])
    except FileNotFoundError:
        return line, "missing", f"no such file: {uri}", "", 0, 0, "", 0
    except IsADirectoryError:
        return line, "unreadable", "path is a directory", "", 0, 0, "", 0
    except Exception as exc:  # noqa: BLE001 - permission errors, network errors: report, do not crash the run
        return line, "unreadable", f"{type(exc).__name__}: {exc}", "", 0, 0, "", 0
    digest = hashlib.sha256(data).hexdigest()
    try:
        img = open_checked(data, _WORKER["limits"])
    except ImageRejected as rej:
        return line, rej.reason, rej.detail, digest, 0, 0, "", len(data)
    return line, None, "", digest, img.width, img.height, img.info["source_format"], len(data)


def _pool_map(
    tasks: list[tuple[int, str]], init: tuple[Any, ...], workers: int, desc: str, progress: bool
) -> Iterator[tuple]:
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1 or len(tasks) < _POOL_MIN_ROWS:
            _init_worker(*init)
            for task in tasks:
                yield _check_file(task)
                bar.update()
            return
        # forkserver: workers start clean (no inherited threads or locks from ZenML/torch in the parent).
        ctx = multiprocessing.get_context("forkserver")
        with ctx.Pool(workers, initializer=_init_worker, initargs=init) as pool:
            for out in pool.imap(_check_file, tasks, chunksize=max(1, min(256, len(tasks) // (workers * 8)))):
                yield out
                bar.update()
    finally:
        bar.close()


def run_qa(
    rows: Iterable[CatalogRow],
    rules: QARules,
    taxonomy: dict[str, str] | None = None,
    *,
    source: str = "",
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> QAResult:
    """Apply `rules` to catalog rows and return the valid images and every rejection with its reason.

    A row is read only when its uri is s3:// or lies under the folder of catalog `source` (none when `source` is
    empty) or under `rules.allowed_roots`. Label checks run next (cheap); surviving rows are read and fully decoded
    in a process pool; duplicates, conflicting duplicates and rare species are resolved last because they depend
    on the whole catalog.
    """
    result = QAResult(source=source, rules=rules)
    limits = ImageLimits(tuple(rules.allowed_formats), rules.min_side, rules.max_pixels)
    first_group: dict[str, str] = {}
    pending: dict[int, CatalogRow] = {}
    tasks: list[tuple[int, str]] = []
    roots = allowed_roots(source, rules.allowed_roots, storage_options)
    for row in rows:
        refusal = uri_refusal(row.uri, roots) if row.uri else ""
        if refusal:
            result.rejected.append(Rejection(row.line, row.uri, row.label, "uri_not_allowed", refusal))
            continue
        reason, detail, group = _label_check(row, taxonomy, first_group)
        if reason:
            result.rejected.append(Rejection(row.line, row.uri, row.label, reason, detail))
            continue
        if not row.uri:
            result.rejected.append(Rejection(row.line, row.uri, row.label, "missing", "row has no uri"))
            continue
        pending[row.line] = CatalogRow(row.line, row.uri, row.label, group)
        tasks.append((row.line, row.uri))

    workers = rules.workers or os.cpu_count() or 1
    decoded: list[ValidImage] = []
    for line, reason, detail, digest, width, height, fmt, size in _pool_map(
        tasks, (limits, storage_options), workers, "QA", progress
    ):
        row = pending[line]
        if reason:
            result.rejected.append(Rejection(line, row.uri, row.label, reason, detail))
        else:
            decoded.append(ValidImage(row.uri, digest, row.label, row.group, width, height, fmt, size, line))

    result.valid = _resolve_duplicates(decoded, result.rejected)
    result.valid = _drop_rare(result.valid, rules.min_images_per_species, result.rejected)
    result.rejected.sort(key=lambda r: r.line)
    result.warnings.extend(_taxonomy_warnings(result.valid))
    return result


def _label_check(row: CatalogRow, taxonomy: dict[str, str] | None, first_group: dict[str, str]) -> tuple[str, str, str]:
    if not row.label:
        return "unknown_label", "row has no label", ""
    if taxonomy is not None:
        group = taxonomy.get(row.label)
        if group is None:
            return "unknown_label", f"{row.label!r} is not in the taxonomy", ""
        if row.group and row.group != group:
            return "group_conflict", f"row says group {row.group!r}, taxonomy says {group!r}", ""
        return "", "", group
    if not row.group:
        return "no_group", f"{row.label!r} has no group: add a group column, a folder level or a taxonomy", ""
    seen = first_group.setdefault(row.label, row.group)
    if seen != row.group:
        return "group_conflict", f"{row.label!r} was already seen in group {seen!r}, here {row.group!r}", ""
    return "", "", row.group


def _resolve_duplicates(images: list[ValidImage], rejected: list[Rejection]) -> list[ValidImage]:
    by_hash: dict[str, list[ValidImage]] = defaultdict(list)
    for img in images:
        by_hash[img.sha256].append(img)
    keep: list[ValidImage] = []
    for img in images:
        group = by_hash[img.sha256]
        labels = sorted({g.label for g in group})
        if len(labels) > 1:
            others = ", ".join(f"line {g.line} ({g.label})" for g in group if g is not img)
            rejected.append(Rejection(img.line, img.uri, img.label, "conflicting_duplicate", f"same bytes as {others}"))
        elif group[0] is not img:
            rejected.append(Rejection(img.line, img.uri, img.label, "duplicate", f"same bytes as line {group[0].line}"))
        else:
            keep.append(img)
    return keep


def _drop_rare(images: list[ValidImage], minimum: int, rejected: list[Rejection]) -> list[ValidImage]:
    counts = Counter(img.label for img in images)
    keep = []
    for img in images:
        if counts[img.label] < minimum:
            detail = f"{img.label!r} has {counts[img.label]} valid images, fewer than {minimum}"
            rejected.append(Rejection(img.line, img.uri, img.label, "rare_class", detail))
        else:
            keep.append(img)
    return keep


def _taxonomy_warnings(images: list[ValidImage]) -> list[str]:
    species_per_group: dict[str, set[str]] = defaultdict(set)
    for img in images:
        species_per_group[img.group].add(img.label)
    return [
        f"group {group!r} has only {len(species)} species ({', '.join(sorted(species))}): its child model is trivial"
        for group, species in sorted(species_per_group.items())
        if len(species) < 2
    ]
