"""The review queue: production's kept photos (feedback first, then low confidence, then the audit sample) and labels.

The queue is read from the monitoring folder each time (the sample store's sidecars and the feedback log); what
people decide is kept in the review folder: `labels.jsonl` (every label, the newest per photo wins) and
`committed.jsonl` (labels written into the catalog, with the dataset version they went into).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from fieldguide.errors import FieldguideError
from fieldguide.monitor.capture import FEEDBACK, PREDICTIONS, SampleStore, find_record, now_iso, read_records
from fieldguide.monitor.config import CaptureConfig

# Queue order: photos users flagged, then the least confident answers, then the random audit sample.
REASON_RANK = {"feedback": 0, "low_confidence": 1, "audit": 2}
OPEN, LABELLED, COMMITTED = "open", "labelled", "committed"
# Seconds a review command waits for another one (a commit holds the lock while the data pipeline runs).
LOCK_TIMEOUT_S = 60.0


@dataclass
class Label:
    """A person's answer for one queued photo."""

    # The photo (the upload's sha256, as the sample store names it).
    sha256: str
    # The request the label was given for (any request of the photo).
    request_id: str
    # The species, and the group it belongs to.
    species: str
    group: str
    # Who labelled it (a name on the CLI, the annotator's email in Label Studio).
    by: str
    # Where it was entered: cli, label-studio or console.
    source: str
    # When (UTC, ISO 8601).
    at: str
    # The species is not in the release's taxonomy: `review commit` adds it to the catalog's taxonomy.
    new_species: bool = False
    # What production answered (the group it was routed to decides whether the router was wrong).
    answered_species: str = ""
    answered_group: str = ""
    # The child that answered and the release it belonged to.
    child_model: str = ""
    release: str = ""
    # Set when committed: the dataset version the label first went into, and when.
    dataset_version: str = ""
    committed_at: str = ""

    @property
    def rerouted(self) -> bool:
        """True when the router sent the photo to another group than its label's (a router correction)."""
        return bool(self.answered_group) and self.answered_group != self.group


@dataclass
class Entry:
    """One photo in the queue (one per sha256), with the answer it got and any label."""

    # The upload's sha256 (the sample store's name for the photo).
    sha256: str
    # The kept photo on disk.
    photo: Path
    # Why it is queued: feedback, low_confidence or audit.
    reason: str
    # The request shown for it (the one with feedback, else the least confident), and every request of the photo.
    request_id: str
    requests: list[str]
    # The release that answered (its taxonomy checks the label).
    release: str
    # The group the router chose, and the child that answered in it.
    group: str
    child_model: str
    # The species answered, with its two-stage probability, and when.
    species: str
    probability: float
    at: str
    # What the user's feedback said: a species, "wrong", or "".
    feedback: str = ""
    # Its current label (None: open).
    label: Label | None = None
    # The answer's top species with their probabilities ({name, probability}), as the user saw them.
    top: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        """open, labelled or committed."""
        if self.label is None:
            return OPEN
        return COMMITTED if self.label.committed_at else LABELLED

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (`review list --json`)."""
        data = asdict(self)
        data["photo"], data["status"] = str(self.photo), self.status
        return data


def review_dir() -> Path:
    """The review state of this installation (under FIELDGUIDE_HOME)."""
    return Path(os.environ.get("FIELDGUIDE_HOME", ".fieldguide")) / "review"


@dataclass
class ReviewStore:
    """Labels and commits on disk; every change happens under a file lock, appended as one JSON line."""

    # labels.jsonl, the labelled photos' copies (photos/), Label Studio's task ids and the lock.
    folder: Path = field(default_factory=review_dir)

    @property
    def labels_file(self) -> Path:
        """Every label ever given, one JSON line each (committed ones again, with their dataset version)."""
        return self.folder / "labels.jsonl"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the review lock (label, pull and commit change the store one at a time)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(self.folder / "review.lock"), timeout=LOCK_TIMEOUT_S):
                yield
        except Timeout:
            raise FieldguideError(
                "another review command holds the review lock (a `review commit` runs the data pipeline): "
                "try again when it has finished"
            ) from None

    def labels(self) -> dict[str, Label]:
        """The current label of each photo (the newest line per sha256)."""
        out: dict[str, Label] = {}
        if self.labels_file.is_file():
            for n, line in enumerate(self.labels_file.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    label = Label(**json.loads(line))
                except (ValueError, TypeError):  # a line cut short by a crash: the lines after it still count
                    print(f"warning: {self.labels_file}:{n} is not a label; ignored", file=sys.stderr)
                    continue
                out[label.sha256] = label
        return out

    def pin(self, sha256: str, photo: Path) -> None:
        """Keep a labelled photo's own copy until it is committed (the sample store may delete its original)."""
        target = self.folder / "photos" / f"{sha256}{photo.suffix}"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(photo, tmp)
            tmp.replace(target)

    def photo(self, sha256: str) -> Path | None:
        """A labelled photo's pinned copy, if any."""
        return next(iter(sorted((self.folder / "photos").glob(f"{sha256}.*"))), None)

    def unpin(self, sha256: str) -> None:
        """Drop a committed photo's copy (the catalog holds it now)."""
        for path in (self.folder / "photos").glob(f"{sha256}.*"):
            path.unlink(missing_ok=True)

    def append(self, labels: list[Label]) -> None:
        """Record labels (call under `locked`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.labels_file.open("a") as fh:
            fh.writelines(json.dumps(asdict(label)) + "\n" for label in labels)
            fh.flush()
            os.fsync(fh.fileno())

    def state(self, name: str) -> dict[str, Any]:
        """A small JSON state file of the review folder ({} when absent)."""
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_state(self, name: str, data: dict[str, Any]) -> None:
        """Write a state file atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{name}.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.folder / f"{name}.json")


def build_queue(monitor: Path, store: ReviewStore) -> list[Entry]:
    """Every kept photo of production's sample store, in review order, with its current label.

    Args:
        monitor: production's monitoring folder (samples/ and the feedback log).
        store: where the labels are.
    """
    feedback: dict[str, dict[str, Any]] = {}
    for record in read_records(monitor, FEEDBACK):
        feedback[record["image_sha256"]] = record  # the newest feedback per photo
    samples = SampleStore(monitor, CaptureConfig())
    labels = store.labels()
    entries = []
    for sidecar in sorted(samples.sample_dir.glob("*/*.json")):
        try:
            info = json.loads(sidecar.read_text())
            photo = samples.kept(info["sha256"])
            requests = list(info["requests"])
        except (ValueError, KeyError, OSError):
            continue
        if photo is None or not requests:
            continue
        entries.append(_entry(info["sha256"], photo, requests, feedback.get(info["sha256"]), labels))
    return sorted(entries, key=lambda e: (REASON_RANK.get(e.reason, 3), e.probability, e.at))


def _entry(sha: str, photo: Path, requests: list[dict], fb: dict | None, labels: dict[str, Label]) -> Entry:
    flagged = [r for r in requests if r.get("reason") == "feedback"]
    if fb is not None:
        flagged = [r for r in requests if r["request_id"] == fb["request_id"]] or flagged
    shown = flagged[-1] if flagged else min(requests, key=lambda r: r.get("species_probability", 1.0))
    reason = "feedback" if flagged or fb else shown.get("reason", "audit")
    given = (fb.get("species_given") or ("wrong" if fb.get("wrong") else "")) if fb else ""
    return Entry(
        sha256=sha,
        photo=photo,
        reason=reason,
        request_id=shown["request_id"],
        requests=[r["request_id"] for r in requests],
        release=shown.get("release", ""),
        group=shown.get("group", ""),
        child_model=shown.get("child_model", ""),
        species=shown.get("species", ""),
        probability=float(shown.get("species_probability", 0.0)),
        at=shown.get("at", ""),
        feedback=given,
        label=labels.get(sha),
        top=list(shown.get("top", [])),
    )


class NotInQueue(FieldguideError):
    """A request id whose photo is not in the review queue (not kept, or never logged)."""


def find_entry(queue: list[Entry], request_id: str, monitor: Path) -> Entry:
    """The queued photo a request id belongs to.

    Raises:
        NotInQueue: for a request whose photo was not kept, or a request id nobody logged.
    """
    for entry in queue:
        if request_id in entry.requests:
            return entry
    if find_record(monitor, PREDICTIONS, request_id) is not None:
        raise NotInQueue(
            f"request {request_id} was answered but its photo is not in the review queue (only low-confidence, "
            "audit and feedback-flagged photos are kept, for a limited time)"
        )
    raise NotInQueue(f"unknown request id {request_id!r}: not in the review queue or production's prediction log")


def plain_name(name: str, what: str) -> str:
    """A species or group name as it may enter a taxonomy and a folder name.

    Raises:
        FieldguideError: for an empty name, `.`/`..`, or one holding a path separator or a control character.
    """
    name = name.strip()
    if name in ("", ".", "..") or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name):
        raise FieldguideError(f"{what} {name!r} is not a plain name (no slashes or control characters)")
    return name


@dataclass
class LabelRequest:
    """What a reviewer says about one request's photo."""

    # Any request of the photo (the queue shows one; `review list --json` lists them all).
    request_id: str
    # Who says so (recorded with the label).
    by: str
    # A known species (its group follows from the taxonomy)...
    species: str = ""
    # ...checked against this group when given (`--group G --species S`: the router was wrong)...
    group: str = ""
    # ...or a species the taxonomy lacks, in `group`.
    new_species: str = ""


def make_label(
    req: LabelRequest,
    entry: Entry,
    taxonomy: dict[str, list[str]],
    known_new: dict[str, str],
    source: str,
) -> Label:
    """Check a label against the answering release's taxonomy (and species added by reviewers) and build it.

    Args:
        req: the reviewer's label.
        entry: the queued photo it is for.
        taxonomy: group → species of the release that answered.
        known_new: species → group added by earlier `--new-species` labels.
        source: cli or label-studio.

    Raises:
        FieldguideError: no reviewer name, a committed entry, a species outside the taxonomy (or in another group
            than the one given), an existing species given as new, or an unknown group.
    """
    if not req.by.strip():
        raise FieldguideError("say who labels: --by NAME")
    if entry.status == COMMITTED:
        assert entry.label is not None
        raise FieldguideError(
            f"request {req.request_id}: its photo was already committed as {entry.label.species!r} into dataset "
            f"{entry.label.dataset_version}; labels of committed photos do not change"
        )
    species_group = {s: g for g, names in taxonomy.items() for s in names} | known_new
    if req.new_species:
        name = plain_name(req.new_species, "new species")
        if not req.group:
            raise FieldguideError("--new-species needs --group G: the group the new species belongs to")
        if req.group not in taxonomy:
            raise FieldguideError(f"unknown group {req.group!r}; the release's groups: {', '.join(taxonomy)}")
        if name in species_group:
            raise FieldguideError(f"{name!r} is already a species (of {species_group[name]}): label it as SPECIES")
        species, group, new = name, req.group, True
    else:
        species = req.species.strip()
        if species not in species_group:
            known = ", ".join(sorted(species_group))
            raise FieldguideError(
                f"{species!r} is not a species of release {entry.release} (known: {known}); "
                "a species it lacks is added with --new-species NAME --group G"
            )
        group, new = species_group[species], species in known_new
        if req.group and req.group != group:
            raise FieldguideError(f"{species!r} belongs to {group!r}, not {req.group!r}")
    return Label(
        sha256=entry.sha256,
        request_id=req.request_id,
        species=species,
        group=group,
        by=req.by.strip(),
        source=source,
        at=now_iso(),
        new_species=new,
        answered_species=entry.species,
        answered_group=entry.group,
        child_model=entry.child_model,
        release=entry.release,
    )


def new_species_of(labels: dict[str, Label]) -> dict[str, str]:
    """Species → group of every species reviewers added."""
    return {label.species: label.group for label in labels.values() if label.new_species}


TaxonomyOf = Callable[[str], dict[str, list[str]]]


def release_taxonomies() -> TaxonomyOf:
    """Group → species of a stored release, read once per release id."""
    from fieldguide.monitor.traffic import release_taxonomy
    from fieldguide.serve.servers import release_folder

    cache: dict[str, dict[str, list[str]]] = {}

    def of(release: str) -> dict[str, list[str]]:
        if release not in cache:
            cache[release] = release_taxonomy(release_folder(release))
        return cache[release]

    return of


def record_label(
    store: ReviewStore, monitor: Path, req: LabelRequest, taxonomy_of: TaxonomyOf, source: str = "cli"
) -> tuple[Label, Label | None]:
    """Check and record one label; returns it and the label it replaces (None for a first label).

    Raises:
        FieldguideError: see find_entry and make_label; nothing is recorded then.
    """
    with store.locked():
        entry = find_entry(build_queue(monitor, store), req.request_id, monitor)
        label = make_label(req, entry, taxonomy_of(entry.release), new_species_of(store.labels()), source)
        store.pin(entry.sha256, entry.photo)
        store.append([label])
    return label, entry.label
