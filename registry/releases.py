"""Releases on the Model Control Plane: composition, records, stages and history.

A release is a version of the `fieldguide-release` model whose `release` metadata is the record of truth: its
model versions, evaluation, status (candidate, production, failed, archived), when it was promoted, and why it
failed. Its model versions move to stage production with it.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fieldguide.errors import FieldguideError
from fieldguide.keys import release_members
from fieldguide.serve.release import RELEASE_MODEL, Release
from registry.versions import client, get_version, list_versions, newest_approved, production_version

PRODUCTION, ARCHIVED, FAILED, CANDIDATE = "production", "archived", "failed", "candidate"


def now() -> str:
    """A UTC timestamp that sorts as text."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def compose_release(groups: list[str], pinned: dict[str, str] | None = None) -> dict[str, str]:
    """The model versions (name → version id) of a release over `groups`.

    Each member is its pinned version when given, else its production version, else (before its first release)
    its newest approved version.

    Raises:
        FieldguideError: naming the members that have none of these, and how to get one.
    """
    pinned = pinned or {}
    members = release_members(groups)
    unknown = sorted(set(pinned) - {key.name for key in members})
    if unknown:
        raise FieldguideError(f"{', '.join(unknown)} is not part of a release over groups {', '.join(groups)}")
    out, missing = {}, []
    for key in members:
        chosen = pinned.get(key.name)
        if chosen is None:
            version = production_version(key) or newest_approved(key)
            chosen = str(version.id) if version is not None else None
        if chosen is None:
            missing.append(key.name)
        else:
            out[key.name] = chosen
    if missing:
        raise FieldguideError(
            f"no approved version of {', '.join(missing)} yet: `python run.py approve MODEL VERSION --by NAME`"
        )
    return out


def newer_approved(groups: list[str]) -> tuple[dict[str, str], list[str]]:
    """Pins for every member whose newest approved version is newer than production, and who approved them."""
    pins, approvers = {}, []
    for key in release_members(groups):
        approved, live = newest_approved(key), production_version(key)
        if approved is not None and (live is None or approved.number > live.number):
            pins[key.name] = str(approved.id)
            approvers.append(str(approved.run_metadata.get("approval", {}).get("by", "")))
    return pins, approvers


def release_versions() -> list[Any]:
    """Every release (versions of the fieldguide-release model), oldest first, with their metadata."""
    return list_versions(RELEASE_MODEL)


def records() -> list[dict[str, Any]]:
    """Every release's record, oldest first, from one listing (no query per release)."""
    return [{"id": v.name, **recorded(v)} for v in release_versions()]


def recorded(version: Any) -> dict[str, Any]:
    """The `release` metadata of a release version already fetched with its metadata."""
    return dict(version.run_metadata.get("release") or {})


def release_record(release_id: str) -> dict[str, Any]:
    """The `release` metadata of a release ({} before it was assembled)."""
    return recorded(client().get_model_version(RELEASE_MODEL, release_id))


def get_release(release_id: str) -> Release:
    """A release as recorded, its status the registry's."""
    record = release_record(release_id)
    if not record:
        raise FieldguideError(f"release {release_id} has no record (its deploy run failed before assembly)")
    return Release.from_dict(record)


def set_release(release_id: str, **changes: Any) -> dict[str, Any]:
    """Update fields of a release's record; returns the new record."""
    from zenml import log_metadata

    record = release_record(release_id) | changes
    log_metadata(metadata={"release": record}, model_name=RELEASE_MODEL, model_version=release_id)
    return record


def record_release(release: Release) -> None:
    """Write a freshly assembled release's record."""
    set_release(release.id, **asdict(release))


def mark_failed(release_id: str, reason: str) -> None:
    """Record a release as failed with the reason (its staging report, or the error that stopped it)."""
    set_release(release_id, status=FAILED, failure=reason)


def mark_promoted(release: Release) -> None:
    """Record a release as production: the previous production release becomes archived.

    Its model versions and the release version go to stage production (ZenML archives the previous ones). The
    first promotion time is kept, so a rollback to it keeps its place in the history.
    """
    for previous in records():
        if previous["id"] != release.id and previous.get("status") == PRODUCTION:
            set_release(previous["id"], status=ARCHIVED)
    for version_id in release.version_ids.values():
        version = get_version(version_id)
        client().update_model_version(version.model.id, version.id, stage="production", force=True)
        from zenml import log_metadata

        log_metadata(metadata={"deployed_in": release.id}, model_version_id=version.id)
    release_version = client().get_model_version(RELEASE_MODEL, release.id)
    client().update_model_version(release_version.model.id, release_version.id, stage="production", force=True)
    set_release(release.id, status=PRODUCTION, promoted_at=release.promoted_at or now())


def production_release() -> Release | None:
    """The release in production now, if any."""
    live = [r for r in records() if r.get("status") == PRODUCTION]
    return Release.from_dict(live[-1]) if live else None


def rollback_target(current: Release) -> Release:
    """The release promoted before `current` that is archived and was never rolled back from.

    Raises:
        FieldguideError: when there is none.
    """

    def promoted(release: Release) -> str:  # records from before promoted_at existed: their creation time
        return release.promoted_at or release.created

    earlier = [
        release
        for release in (Release.from_dict(r) for r in records() if r.get("versions"))
        if release.status == ARCHIVED and not release.rolled_back_at and promoted(release) < promoted(current)
    ]
    if not earlier:
        raise FieldguideError(f"nothing to roll back to: no release was in production before {current.id}")
    return max(earlier, key=promoted)


def releases_rows() -> list[dict[str, str]]:
    """One row per release: id, status, model versions, created, approved by, end-to-end accuracy."""
    rows = []
    for record in records():
        acc = next((f"{x:.3f}" for k, x in record.get("evaluation", {}).items() if k.startswith("end-to-end")), "")
        rows.append(
            {
                "release": record["id"],
                "status": record.get("status", CANDIDATE if record.get("versions") else FAILED),
                "models": ", ".join(f"{k} {x}" for k, x in record.get("versions", {}).items()),
                "created": record.get("created", ""),
                "approved by": record.get("approved_by", ""),
                "end-to-end acc": acc,
            }
        )
    return rows
