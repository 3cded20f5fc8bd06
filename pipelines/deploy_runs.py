"""Dispatch of rollouts: approvals, `--pipeline deploy`, `watch` and `rollback` turned into deploy-pipeline runs.

Which versions go live is decided in one place, `registry.releases.compose_release`; how a release goes live is
`registry.promotion`. Every rollout here holds the registry lock for its whole length.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fieldguide.errors import ConfigError, FieldguideError
from fieldguide.keys import ModelKey, release_members
from fieldguide.monitor.config import CaptureConfig
from fieldguide.runconfig import DeployConfig, load_run_config
from fieldguide.serve.release import RELEASE_MODEL
from pipelines.runner import Dataset, pipeline_errors, resolve_dataset
from registry.approvals import PENDING
from registry.lock import registry_lock


def deploy_config(root: Path, config: str | None) -> DeployConfig:
    """The validated deploy config (configs/deploy.yaml, or the one given), with configs/monitor.yaml's capture.

    On the SageMaker stack, configs/deploy_sagemaker.yaml is merged in (target `sagemaker`, the endpoints);
    its ${VAR} references are expanded from the environment, as the stack's are.
    """
    from dataclasses import asdict

    from fieldguide.config import from_dict
    from fieldguide.serve.endpoints import EndpointSettings
    from stacks import expand_env

    rc = load_run_config(root, "deploy", config, cloud=deploy_cloud())
    if rc.params.capture != CaptureConfig():
        raise ConfigError(f"{rc.path}: `capture` belongs in configs/monitor.yaml, not in the deploy config")
    rc.params.capture = load_run_config(root, "monitor").params.capture
    if rc.params.target == "sagemaker":
        where = f"{(rc.overlay_path or rc.path).name}: sagemaker"
        rc.params.sagemaker = from_dict(EndpointSettings, expand_env(asdict(rc.params.sagemaker), what=where))
    return rc.params


SAGEMAKER_DEPLOY_STACK = "fieldguide-sagemaker-deploy"  # stacks/sagemaker-deploy.yaml's name


def deploy_cloud() -> str:
    """'sagemaker' on the SageMaker stacks (a SageMaker orchestrator, or the sagemaker-deploy stack), else ''."""
    from zenml.client import Client

    from pipelines.runner import active_cloud

    return active_cloud() or ("sagemaker" if Client().active_stack_model.name == SAGEMAKER_DEPLOY_STACK else "")


def new_release_id() -> str:
    """A sortable release id (also a valid BentoML tag version)."""
    return datetime.now(UTC).strftime("r%Y%m%d-%H%M%S")


def run_deploy(
    root: Path,
    config: str | None = None,
    versions: dict[str, str] | None = None,
    by: str = "",
    dataset: Dataset | None = None,
    release_id: str = "",
) -> str:
    """Run the deploy pipeline for a release (default: newest approved versions over production); its id.

    A release that fails anywhere is recorded as failed with the reason; production is untouched. `release_id`
    names it (default: the time; on SageMaker its image must be in ECR under that tag before staging starts).
    """
    import dataclasses

    from zenml import Model

    from pipelines.deploy import deploy_pipeline
    from registry.promotion import serving_dir
    from registry.releases import compose_release, newer_approved

    cfg = deploy_config(root, config)
    _runs_here(cfg)
    with registry_lock(what="this rollout"):
        dataset = dataset or resolve_dataset(root, None, None)
        approvers = [by] if by else []
        if versions is None:
            pins, approvers = newer_approved(dataset.groups)
            versions = compose_release(dataset.groups, pins)
        if release_id and _release_exists(release_id):
            raise FieldguideError(f"release {release_id} exists already; a release id names one rollout")
        while not release_id or _release_exists(release_id):  # two rollouts within one second
            if release_id:
                time.sleep(1)
            release_id = new_release_id()
        print(f"deploying release {release_id}", flush=True)
        model = Model(name=RELEASE_MODEL, version=release_id, description="Two-stage releases: router + children")
        try:
            with pipeline_errors():
                deploy_pipeline.with_options(model=model)(
                    shard_set_id=dataset.shard_set_id,
                    release_id=release_id,
                    versions=versions,
                    approved_by=", ".join(sorted({a for a in approvers if a})),
                    deploy=dataclasses.asdict(cfg),
                    serving_dir=str(serving_dir()),
                    root=str(root),
                )
        except FieldguideError as exc:
            _record_failure(release_id, str(exc), cfg)
            raise
        return release_id


def _runs_here(cfg: DeployConfig) -> None:
    """A rollout builds and serves the bento on this machine: its pipeline needs a local orchestrator.

    Raises:
        ConfigError: on a remote orchestrator (the SageMaker stack), naming the stack to roll out from.
    """
    from zenml.client import Client

    flavor = Client().active_stack.orchestrator.flavor
    if flavor != "local":
        hint = "`python run.py --stack sagemaker-deploy`" if cfg.target == "sagemaker" else "`--stack local`"
        raise ConfigError(
            f"rollouts run on this machine (they build the bento and serve it for staging), not on a {flavor} "
            f"orchestrator: switch with {hint}, then roll out"
        )


def _release_exists(release_id: str) -> bool:
    from registry.releases import release_versions

    return any(v.name == release_id for v in release_versions())


def _record_failure(release_id: str, reason: str, cfg: DeployConfig) -> None:
    """Tear staging down and mark a release failed when its run stopped before the promotion routine recorded it."""
    from registry.promotion import fail, serving_dir, target_for
    from registry.releases import FAILED, PRODUCTION, release_record

    try:
        status = release_record(release_id).get("status")
    except KeyError:
        return  # the run failed before the release existed
    if status not in (FAILED, PRODUCTION):
        fail(release_id, reason, target_for(cfg, serving_dir()))


def deploy_after_approval(root: Path, model: str, version: Any, by: str, config: str | None = None) -> str:
    """Roll out a freshly approved version with the production versions of the other members; the release id.

    Before a first release, it waits (returns '') until the router and every child have an approved version.
    """
    from registry.releases import compose_release
    from registry.versions import mark_rollout

    with registry_lock(what=f"rolling out {model}"):
        dataset = resolve_dataset(root, None, None, quiet=True)
        key = ModelKey.parse(model)
        if key not in release_members(dataset.groups):
            print(f"{model} is not part of the two-stage release; nothing to deploy", flush=True)
            mark_rollout(version.id, "not part of a release")
            return ""
        try:
            versions = compose_release(dataset.groups, {model: str(version.id)})
        except FieldguideError as exc:
            print(f"not deploying yet: {exc}", flush=True)
            mark_rollout(version.id, f"approved by {by}; waiting for a complete release")
            return ""
        mark_rollout(version.id, f"approved by {by}; rolling out")
        try:
            release_id = run_deploy(root, config, versions=versions, by=by, dataset=dataset)
        except FieldguideError as exc:
            mark_rollout(version.id, f"rollout failed: {exc}")
            raise
        mark_rollout(version.id, f"rolled out in {release_id}")
        return release_id


def approve(
    root: Path, model: str, version: str, by: str, note: str, force: bool, deploy: bool, config: str | None = None
) -> Any:
    """Record an approval (and roll it out unless `deploy` is False), holding the registry lock throughout."""
    from registry.versions import mark_rollout, record_decision

    with registry_lock(what=f"approving {model} {version}"):
        found = record_decision(model, version, "approve", by, note, force)
        if deploy:
            deploy_after_approval(root, model, found, by, config)
        else:
            mark_rollout(found.id, f"approved by {by}; record only (--no-deploy)")
        return found


def watch(root: Path, interval_s: float, once: bool = False, config: str | None = None) -> None:
    """Poll the registry for approvals nobody acted on (CLI or dashboard tag `approved`) and roll them out.

    Each approval is acted on once: a failed rollout is recorded and retried only by an explicit command
    (`--pipeline deploy`); `approve --no-deploy` approvals are never rolled out from here.
    """
    from registry.approvals import APPROVED, ApprovalError
    from registry.versions import (
        approval_of,
        get_version,
        is_approved,
        list_versions,
        mark_rollout,
        production_version,
        record_decision,
        rollout_note,
    )

    failed: list[str] = []
    while True:
        for key in release_members(resolve_dataset(root, None, None, quiet=True).groups):
            for candidate in list_versions(key):
                if not is_approved(candidate) or rollout_note(candidate):
                    continue
                with registry_lock(what=f"acting on {key} v{candidate.number}"):
                    version = get_version(candidate.id)  # as it is now that no approval or rollout runs
                    if rollout_note(version):
                        continue  # an `approve` acted on it meanwhile
                    label, live = f"{key} v{version.number}", production_version(key)
                    if live is not None and version.number <= live.number:
                        mark_rollout(version.id, f"superseded by production v{live.number}")
                        continue
                    if approval_of(version).get("state") != APPROVED:
                        try:  # approved by tag in the dashboard: record it, under the same gate rules as the CLI
                            record_decision(key.name, str(version.number), "approve", "dashboard", "tagged `approved`")
                        except ApprovalError as exc:
                            print(f"watch: {label} tagged approved but refused: {exc}", flush=True)
                            mark_rollout(version.id, f"refused: {exc}")
                            continue
                        version = get_version(version.id)
                    print(f"watch: {label} approved; rolling out", flush=True)
                    try:
                        by = approval_of(version).get("by") or "dashboard"
                        deploy_after_approval(root, key.name, version, by, config)
                    except FieldguideError as exc:
                        print(f"watch: rollout of {label} failed: {exc}", flush=True)
                        failed.append(f"{label}: {exc}")
        if once:
            if failed:
                raise FieldguideError("rollout failed: " + "; ".join(failed))
            return
        time.sleep(interval_s)


def approve_pending_and_deploy(root: Path, by: str, note: str = "") -> str:
    """Approve each release member's newest pending version, deploy once, make sure production is served."""
    from registry.promotion import serve_production, serving_dir
    from registry.versions import approval_of, list_versions, mark_rollout, record_decision

    with registry_lock(what="approving the pending versions"):
        dataset = resolve_dataset(root, None, None)
        approved = []
        for key in release_members(dataset.groups):
            pending = [v for v in list_versions(key) if approval_of(v).get("state") == PENDING]
            if pending:
                record_decision(key.name, str(pending[-1].number), "approve", by, note)
                mark_rollout(pending[-1].id, f"approved by {by}; rolling out with approve-pending")
                approved.append(pending[-1])
        if approved:
            print(f"approved by {by}: {', '.join(f'{v.model.name} v{v.number}' for v in approved)}", flush=True)
            try:
                release_id = run_deploy(root, by=by, dataset=dataset)
            except FieldguideError as exc:
                for version in approved:
                    mark_rollout(version.id, f"rollout failed: {exc}")
                raise
            for version in approved:
                mark_rollout(version.id, f"rolled out in {release_id}")
        else:
            print("nothing pending: every model version is already decided", flush=True)
        return serve_production(deploy_config(root, None), serving_dir())


def rollback(root: Path, config: str | None = None, expect: str = "") -> str:
    """Production back to the release before the current one (the promotion routine, no regression check).

    With `expect`, only while that release is in production.
    """
    from registry import promotion
    from registry.datasets import shard_set_by_version

    def shard_set_of(dataset_version: str) -> Any:
        return shard_set_by_version(dataset_version).load()

    cfg = deploy_config(root, config)
    _runs_here(cfg)
    return promotion.rollback(cfg, promotion.target_for(cfg, promotion.serving_dir()), shard_set_of, expect)
