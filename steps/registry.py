"""The Model Control Plane as the registry of record: model versions, approvals, releases and their stages."""

from __future__ import annotations

from typing import Any

from fieldguide.deploy import RELEASE_MODEL
from fieldguide.registry import APPROVED, STATES, ApprovalError, decide
from fieldguide.serving import Release


def _client() -> Any:
    from zenml.client import Client

    return Client()


def model_names() -> list[str]:
    """Registered fieldguide models (not releases): router first, then the children and flat by name."""
    names = sorted(m.name for m in _client().list_models(size=1000) if m.name != RELEASE_MODEL)
    return sorted(names, key=lambda n: (n != "router", n))


def find_version(model: str, version: str) -> Any:
    """A model version by model name and version number/name.

    Raises:
        ApprovalError: naming the known models or versions when either does not exist.
    """
    names = model_names()
    if model not in names:
        raise ApprovalError(f"unknown model {model!r}; known models: {', '.join(names) or 'none yet'}")
    wanted = version.removeprefix("v")
    versions = list_versions(model)
    for v in versions:
        if str(v.number) == wanted or v.name == version:
            return v
    known = ", ".join(f"v{v.number}" for v in versions) or "none"
    raise ApprovalError(f"model {model!r} has no version {version!r}; versions: {known}")


def list_versions(model: str) -> list[Any]:
    """Every version of a model, oldest first, with metadata."""
    versions = _client().list_model_versions(model=model, size=1000, hydrate=True)
    return sorted(versions, key=lambda v: v.number)


def approval_of(version: Any) -> dict[str, Any]:
    """The latest approval record of a version ({} for versions trained before evaluation existed)."""
    return dict(version.run_metadata.get("approval") or {})


def record_decision(model: str, version: str, action: str, by: str, note: str = "", force: bool = False) -> Any:
    """Approve or reject a version: validate everything first, then write the record and swap the state tag."""
    from zenml import log_metadata

    found = find_version(model, version)
    gate = found.run_metadata.get("gate") or {}
    current = approval_of(found)
    record = decide(f"{model} v{found.number}", current, bool(gate.get("passed")), action, by, note, force)
    log_metadata(metadata={"approval": record}, model_version_id=found.id)
    old = [t.name for t in found.tags if t.name in STATES]
    _client().update_model_version(found.model.id, found.id, add_tags=[record["state"]], remove_tags=old or None)
    return find_version(model, version)


def models_rows() -> list[dict[str, Any]]:
    """One row per model version: stage, approval and key metrics (for `run.py models`)."""
    rows = []
    for name in model_names():
        for v in list_versions(name):
            meta = v.run_metadata
            approval = approval_of(v)
            rows.append(
                {
                    "model": name,
                    "version": f"v{v.number}",
                    "stage": v.stage or "",
                    "approval": approval.get("state", "—") + (" (forced)" if approval.get("forced") else ""),
                    "by": approval.get("by", ""),
                    "top1": meta.get("test_top1"),
                    "macro_f1": meta.get("test_macro_f1"),
                    "ece": meta.get("test_ece"),
                    "dataset": str(meta.get("dataset_version", ""))[:12],
                    "note": approval.get("note", ""),
                    "created": v.created.strftime("%Y-%m-%d %H:%M"),
                }
            )
    return rows


def require_version(model: str, stage_or_latest: str = "latest") -> Any:
    """The production/latest version of a model, with a clear error when there is none."""
    from zenml.enums import ModelStages

    try:
        return _client().get_model_version(model, ModelStages(stage_or_latest))
    except KeyError:
        raise ApprovalError(f"model {model!r} has no {stage_or_latest} version") from None


def drop_duplicate(run: Any) -> str:
    """Delete the run's model version when it only repeats an earlier one (a cached rerun); return that one."""
    version = run.model_version
    if version is None:
        return ""
    version = _client().get_model_version(model_version_name_or_number_or_id=version.id)
    same_as = version.run_metadata.get("duplicate_of")
    if same_as:
        _client().delete_model_version(version.id)
    return str(same_as or "")


def release_versions() -> list[Any]:
    """Every release record (versions of the fieldguide-release model), oldest first."""
    try:
        return list_versions(RELEASE_MODEL)
    except KeyError:
        return []


def release_record(name: str) -> dict[str, Any]:
    """The latest `release` metadata of a release version."""
    version = _client().get_model_version(RELEASE_MODEL, name)
    return dict(version.run_metadata.get("release") or {})


def _set_release(release_id: str, **changes: Any) -> None:
    from zenml import log_metadata

    record = release_record(release_id) | changes
    log_metadata(metadata={"release": record}, model_name=RELEASE_MODEL, model_version=release_id)


def mark_failed(release: Release, output: str) -> None:
    """Record a release as failed with its staging test output."""
    _set_release(release.id, status="failed", failure=output)


def mark_promoted(release: Release) -> None:
    """Record a release as production; the previous production release becomes archived.

    Its model versions and the release version go to stage production (ZenML archives the previous ones).
    """
    client = _client()
    for previous in release_versions():
        if previous.name != release.id and release_record(previous.name).get("status") == "production":
            _set_release(previous.name, status="archived")
    for version_id in release.version_ids.values():
        version = client.get_model_version(model_version_name_or_number_or_id=_uuid(version_id))
        client.update_model_version(version.model.id, version.id, stage="production", force=True)
        log_metadata_deployed(version.id, release.id)
    release_version = client.get_model_version(RELEASE_MODEL, release.id)
    client.update_model_version(release_version.model.id, release_version.id, stage="production", force=True)
    _set_release(release.id, status="production")


def log_metadata_deployed(version_id: Any, release_id: str) -> None:
    """Note on a model version that it went out with a release."""
    from zenml import log_metadata

    log_metadata(metadata={"deployed_in": release_id}, model_version_id=version_id)


def _uuid(value: str) -> Any:
    from uuid import UUID

    return UUID(value)


def candidate_versions(model: str, version: Any, groups: list[str]) -> dict[str, str] | None:
    """The approved `version` of `model` plus the production version of every other model of the release.

    Before a first release the newest approved version stands in for production; None while a model has neither.
    """
    out = {model: str(version.id)}
    for name in ["router"] + [f"child-{g}" for g in groups]:
        if name == model:
            continue
        chosen = None
        try:
            chosen = require_version(name, "production")
        except ApprovalError:
            approved = [v for v in list_versions(name) if approval_of(v).get("state") == APPROVED]
            chosen = approved[-1] if approved else None
        if chosen is None:
            return None
        out[name] = str(chosen.id)
    return out


def production_release() -> Release | None:
    """The release in production now, if any."""
    live = [v for v in release_versions() if release_record(v.name).get("status") == "production"]
    return Release.from_dict(release_record(live[-1].name)) if live else None


def mark_rollout(version_id: Any, note: str) -> None:
    """Record that a version's approval has been acted on, so `watch` does not roll it out again."""
    from zenml import log_metadata

    log_metadata(metadata={"rollout": note}, model_version_id=version_id)
