"""Model versions on the Model Control Plane: lookup, metadata, approval decisions, duplicates, loading.

Nothing here imports torch until a model is actually loaded, so the registry CLI starts quickly.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fieldguide.errors import FieldguideError
from fieldguide.keys import ModelKey
from fieldguide.serve.release import RELEASE_MODEL
from registry.approvals import APPROVED, STATES, ApprovalError, decide


def client() -> Any:
    """ZenML's client for the active store."""
    from zenml.client import Client

    return Client()


def model_names() -> list[str]:
    """Registered fieldguide models (not releases): router first, then the children and flat by name."""
    names = sorted(m.name for m in client().list_models(size=1000) if m.name != RELEASE_MODEL)
    return sorted(names, key=lambda n: (n != ModelKey.router().name, n))


def list_versions(model: str | ModelKey) -> list[Any]:
    """Every version of a model, oldest first, with metadata ([] for a model not registered yet)."""
    try:
        versions = client().list_model_versions(model=str(model), size=1000, hydrate=True)
    except KeyError:
        return []
    return sorted(versions, key=lambda v: v.number)


def get_version(version_id: str | UUID) -> Any:
    """A model version by its id."""
    return client().get_model_version(model_version_name_or_number_or_id=UUID(str(version_id)))


def find_version(model: str | ModelKey, version: str) -> Any:
    """A model version by model name and version number/name.

    Raises:
        ApprovalError: naming the known models or versions when either does not exist.
    """
    model = str(model)
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


def production_version(model: str | ModelKey) -> Any | None:
    """The version of a model at stage production, if any."""
    from zenml.enums import ModelStages

    try:
        return client().get_model_version(str(model), ModelStages.PRODUCTION)
    except KeyError:
        return None


def latest_version(model: str | ModelKey) -> Any:
    """The newest version of a model.

    Raises:
        ApprovalError: when the model has no version yet.
    """
    versions = list_versions(model)
    if not versions:
        raise ApprovalError(f"model {str(model)!r} has no version yet")
    return versions[-1]


def approval_of(version: Any) -> dict[str, Any]:
    """The latest approval record of a version ({} for versions trained before evaluation existed)."""
    return dict(version.run_metadata.get("approval") or {})


def is_approved(version: Any) -> bool:
    """Approved through the CLI/console (the record), or tagged `approved` in the dashboard."""
    return approval_of(version).get("state") == APPROVED or APPROVED in {t.name for t in version.tags}


def newest_approved(model: str | ModelKey) -> Any | None:
    """The newest version whose approval record says approved."""
    approved = [v for v in list_versions(model) if approval_of(v).get("state") == APPROVED]
    return approved[-1] if approved else None


def record_decision(model: str, version: str, action: str, by: str, note: str = "", force: bool = False) -> Any:
    """Approve or reject a version: validate everything first, then write the record and swap the state tag."""
    from zenml import log_metadata

    found = find_version(model, version)
    gate = found.run_metadata.get("gate") or {}
    record = decide(f"{model} v{found.number}", approval_of(found), bool(gate.get("passed")), action, by, note, force)
    log_metadata(metadata={"approval": record}, model_version_id=found.id)
    old = [t.name for t in found.tags if t.name in STATES]
    client().update_model_version(found.model.id, found.id, add_tags=[record["state"]], remove_tags=old or None)
    return find_version(model, version)


def mark_rollout(version_id: Any, note: str) -> None:
    """Record what became of a version's approval (rolled out, record only, failed, superseded).

    `watch` rolls out only approvals without such a note, so each is acted on once; a failed rollout is retried
    only by an explicit command.
    """
    from zenml import log_metadata

    log_metadata(metadata={"rollout": note}, model_version_id=version_id)


def record_monitoring(version_id: Any, record: dict[str, Any]) -> None:
    """Record a monitor verdict on a (production) version: `monitoring` metadata, the newest one counts.

    `--pipeline all` retrains a model whose production version says `retrain_recommended` (pipelines.runner).
    """
    from zenml import log_metadata

    log_metadata(metadata={"monitoring": record}, model_version_id=version_id)


def rollout_note(version: Any) -> str:
    """What became of a version's approval ('' while nobody acted on it)."""
    return str(version.run_metadata.get("rollout") or "")


def same_weights_version(model: str, weights_sha256: str, current: int) -> str:
    """The earlier version of the model with identical weights (a cached rerun), e.g. 'v3', or ''."""
    for version in list_versions(model):
        if version.number != current and version.run_metadata.get("weights_sha256") == weights_sha256:
            return f"v{version.number}"
    return ""


def drop_duplicate_version(version_id: Any) -> str:
    """Delete a version that only repeats an earlier one (marked `duplicate_of` at registration).

    Returns:
        The earlier version it repeats ('v3'), or '' when the version is kept.
    """
    version = get_version(version_id)
    same_as = str(version.run_metadata.get("duplicate_of") or "")
    if same_as:
        client().delete_model_version(version.id)
    return same_as


def load_model(version: Any) -> Any:
    """The `model` artifact of a version, loaded (a fieldguide.train.models.ModelBundle).

    Raises:
        FieldguideError: when the version has no model artifact.
    """
    artifact = version.get_model_artifact("model")
    if artifact is None:
        raise FieldguideError(f"{version.model.name} v{version.number} has no `model` artifact")
    return artifact.load()


def production_model(model: str | ModelKey) -> tuple[Any | None, str]:
    """The production version's model bundle and its label ('v3'), or (None, '')."""
    version = production_version(model)
    if version is None or version.get_model_artifact("model") is None:
        return None, ""
    return load_model(version), f"v{version.number}"


def models_rows() -> list[dict[str, Any]]:
    """One row per model version: stage, approval, key metrics and where its weights started (`run.py models`)."""
    from fieldguide.fingerprint import Init

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
                    "init": Init.from_dict(meta["init"]).describe() if meta.get("init") else "",
                    "note": approval.get("note", ""),
                    "created": v.created.strftime("%Y-%m-%d %H:%M"),
                }
            )
    return rows
