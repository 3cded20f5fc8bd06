"""Turn CLI options into pipeline runs: load and validate the YAML config, apply overrides, run, summarise."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fieldguide.catalog import fingerprint, is_remote
from fieldguide.config import DataConfig, from_dict, load_yaml
from fieldguide.errors import ConfigError, FieldguideError
from fieldguide.trainer import ModelPipelineConfig, ReleaseConfig
from fieldguide.tuning import sample_trials
from pipelines.training import step_ids


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `overlay` into a copy of `base` (overlay wins)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def split_run_config(path: Path, group: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a run-config YAML into pipeline parameters and the rest of ZenML's run config (for with_options).

    A top-level `groups:` mapping holds per-group parameter overrides, merged in for `group`.
    """
    data: dict[str, Any] = load_yaml(path)
    params = data.pop("parameters", None) or {}
    per_group = data.pop("groups", None) or {}
    if not isinstance(params, dict) or not isinstance(per_group, dict):
        raise ConfigError(f"{path}: 'parameters' and 'groups' must be mappings")
    if group and per_group.get(group):
        params = deep_merge(params, per_group[group])
    return params, data


def config_path(root: Path, name: str, given: str | None) -> Path:
    """The config file to use: the one given, else configs/<name>.yaml."""
    path = Path(given) if given else root / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return path


def data_parameters(root: Path, config: str | None, catalog: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validated data-pipeline parameters with the catalog override and a fresh catalog fingerprint."""
    params, rest = split_run_config(config_path(root, "data", config))
    if catalog:
        params["catalog"] = catalog
    cfg = from_dict(DataConfig, params, "parameters")
    if not cfg.catalog:
        raise FieldguideError(
            "no catalog given: pass --catalog PATH (CSV, image folder or s3:// URI) "
            "or set parameters.catalog in configs/data.yaml; `make run` generates a demo catalog"
        )
    if not is_remote(cfg.catalog):
        cfg.catalog = str(Path(cfg.catalog).resolve())
    if cfg.taxonomy and not is_remote(cfg.taxonomy):
        cfg.taxonomy = str(Path(cfg.taxonomy).resolve())
    params = {
        "catalog": cfg.catalog,
        "taxonomy": cfg.taxonomy,
        "fingerprint": fingerprint(cfg.catalog, cfg.taxonomy),
        "rules": dataclasses.asdict(cfg.rules),
        "split": dataclasses.asdict(cfg.split),
        "shards": dataclasses.asdict(cfg.shards),
    }
    return params, rest


def run_data(root: Path, config: str | None, catalog: str | None, no_cache: bool) -> Any:
    """Run the data pipeline; return the pipeline run."""
    from pipelines.data import STEPS, data_pipeline

    params, rest = data_parameters(root, config, catalog)
    rest = with_cloud_overlay(root, "data", rest, STEPS)
    return data_pipeline.with_options(**_options(rest, no_cache))(**params)


def active_cloud() -> str:
    """'sagemaker' when the active stack's orchestrator runs on SageMaker, else ''."""
    from zenml.client import Client

    return "sagemaker" if Client().active_stack.orchestrator.flavor == "sagemaker" else ""


def cloud_overlay(root: Path, name: str, cloud: str, steps: list[str]) -> dict[str, Any]:
    """configs/<name>_<cloud>.yaml, validated and with step patterns expanded ({} without a cloud or a file)."""
    from stacks.overlays import expand_steps, load_overlay, overlay_path

    path = overlay_path(root, name, cloud) if cloud else None
    return expand_steps(load_overlay(path, steps), steps) if path and path.is_file() else {}


def with_cloud_overlay(root: Path, name: str, rest: dict[str, Any], steps: list[str]) -> dict[str, Any]:
    """The run config with the active cloud's overlay (settings, steps) merged in."""
    from stacks.overlays import run_config_part

    return deep_merge(rest, run_config_part(cloud_overlay(root, name, active_cloud(), steps)))


def latest_shard_set_id() -> str:
    """The newest `shard_set` artifact (from the last data pipeline run)."""
    from zenml.client import Client

    try:
        return str(Client().get_artifact_version("shard_set").id)
    except KeyError:
        raise FieldguideError("no shard set yet: run `python run.py --pipeline data --catalog PATH` first") from None


def known_groups(shard_set_id: str) -> list[str]:
    """Groups of a shard set (from its small JSON, not the shards)."""
    from zenml.client import Client

    return list(Client().get_artifact_version(shard_set_id).load().classes.groups)


def model_parameters(
    root: Path, name: str, config: str | None, group: str = "", cloud: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validated parent/child parameters, with the trials sampled up front.

    With `cloud`, configs/<name>_<cloud>.yaml is merged in: its `parameters` before validation, its settings
    and per-step settings into the run config.
    """
    from stacks.overlays import expand_steps, overlay_path, run_config_part, validate_overlay

    params, rest = split_run_config(config_path(root, name, config), group=group)
    path = overlay_path(root, name, cloud) if cloud else None
    overlay = load_yaml(path) if path and path.is_file() else {}
    params = deep_merge(params, overlay.get("parameters") or {})
    cfg = from_dict(ModelPipelineConfig, params, "parameters")
    out = {
        "train": dataclasses.asdict(cfg.train),
        "tuning": dataclasses.asdict(cfg.tuning),
        "trials": sample_trials(cfg.tuning),
        "gate": dataclasses.asdict(cfg.gate),
        "experiment_tracker": cfg.experiment_tracker,
        "checkpoint_dir": cfg.checkpoint_dir,
    }
    if name == "parent":
        out["per_group"] = cfg.per_group
    if overlay and path:
        steps = step_ids(len(out["trials"]))
        rest = deep_merge(rest, run_config_part(expand_steps(validate_overlay(overlay, path, steps), steps)))
    return out, rest


def _options(rest: dict[str, Any], no_cache: bool, model: str = "", description: str = "") -> dict[str, Any]:
    """with_options arguments: the YAML's run config, --no-cache, and the Model Control Plane model."""
    options = dict(rest)
    if no_cache:
        options["enable_cache"] = False
    if model:
        from zenml import Model

        options["model"] = Model(name=model, description=description)
    return options


def run_parent(root: Path, config: str | None, no_cache: bool, shard_set_id: str | None = None) -> Any:
    """Run the router pipeline on a shard set (default: the newest)."""
    from pipelines.parent import parent_pipeline

    params, rest = model_parameters(root, "parent", config, cloud=active_cloud())
    options = _options(rest, no_cache, "router", "Parent model: photo → plant group")
    return parent_pipeline.with_options(**options)(shard_set_id=shard_set_id or latest_shard_set_id(), **params)


def run_flat(root: Path, config: str | None, no_cache: bool, shard_set_id: str | None = None) -> Any:
    """Run the flat-classifier pipeline (the two-stage model's baseline) on a shard set (default: the newest)."""
    from pipelines.flat import flat_pipeline

    params, rest = model_parameters(root, "flat", config, cloud=active_cloud())
    options = _options(rest, no_cache, "flat", "Flat baseline: photo → species, one model")
    return flat_pipeline.with_options(**options)(shard_set_id=shard_set_id or latest_shard_set_id(), **params)


def run_child(root: Path, group: str, config: str | None, no_cache: bool, shard_set_id: str | None = None) -> list:
    """Run the child pipeline of `group` ('all': one run per group) on a shard set (default: the newest)."""
    from pipelines.child import child_pipeline

    shard_set_id = shard_set_id or latest_shard_set_id()
    groups = known_groups(shard_set_id)
    if group == "all":
        targets = groups
    elif group in groups:
        targets = [group]
    else:
        raise FieldguideError(f"unknown group {group!r}; known groups: {', '.join(groups)}")
    runs = []
    for g in targets:
        params, rest = model_parameters(root, "child", config, group=g, cloud=active_cloud())
        options = _options(rest, no_cache, f"child-{g}", f"Child model: species of {g}")
        runs.append(child_pipeline.with_options(**options)(shard_set_id=shard_set_id, group=g, **params))
    return runs


def run_pipeline(
    root: Path, pipeline: str, *, group: str | None, config: str | None, catalog: str | None, no_cache: bool
) -> None:
    """Dispatch `--pipeline` to the pipeline runs it stands for; a failed run ends in one FieldguideError line."""
    with pipeline_errors():
        if pipeline == "deploy":
            from pipelines.rollout import run_deploy

            run_deploy(root, config)
            return
        _run_pipeline(root, pipeline, group=group, config=config, catalog=catalog, no_cache=no_cache)


@contextlib.contextmanager
def pipeline_errors() -> Iterator[None]:
    """Turn ZenML's "Pipeline run has failed" into one FieldguideError line."""
    try:
        yield
    except RuntimeError as exc:
        if "Pipeline run has failed" not in str(exc):
            raise
        raise FieldguideError(f"{exc} (the step's log is above, and in the dashboard)") from None


def _run_pipeline(
    root: Path, pipeline: str, *, group: str | None, config: str | None, catalog: str | None, no_cache: bool
) -> None:
    from stacks import ensure_repository

    if pipeline == "child" and not group:
        raise FieldguideError("--pipeline child needs --group NAME (or --group all)")
    ensure_repository(root)
    shard_set_id = None
    if pipeline in ("data", "all"):
        run = run_data(root, config if pipeline == "data" else None, catalog, no_cache)
        summarise_run(run)
        shard_set_id = output_id(run, "build_shards", "shard_set")
    if pipeline in ("parent", "all"):
        summarise_run(run_parent(root, config if pipeline == "parent" else None, no_cache, shard_set_id))
    if pipeline in ("child", "all"):
        for run in run_child(root, group or "all", config if pipeline == "child" else None, no_cache, shard_set_id):
            summarise_run(run)
    if pipeline == "flat" or (pipeline == "all" and release_parameters(root, None).compare_flat):
        summarise_run(run_flat(root, config if pipeline == "flat" else None, no_cache, shard_set_id))
    if pipeline == "all":
        run_release_eval(root, None, shard_set_id)


def release_parameters(root: Path, config: str | None) -> ReleaseConfig:
    """The validated release config (configs/release.yaml)."""
    params, _ = split_run_config(config_path(root, "release", config))
    return from_dict(ReleaseConfig, params, "parameters")


def run_release_eval(
    root: Path, config: str | None, shard_set_id: str | None = None, versions: dict[str, str] | None = None
) -> Any:
    """Two-stage evaluation of a release (default: the latest version of the router and of every child)."""
    from pipelines.release import release_eval_pipeline
    from steps.registry import require_version

    cfg = release_parameters(root, config)
    shard_set_id = shard_set_id or latest_shard_set_id()
    if versions is None:
        names = ["router"] + [f"child-{g}" for g in known_groups(shard_set_id)]
        versions = {name: str(require_version(name).id) for name in names}
    flat = str(require_version("flat").id) if cfg.compare_flat else ""
    run = release_eval_pipeline(shard_set_id=shard_set_id, versions=versions, ks=cfg.top_k, flat_version=flat)
    table = output_artifact(run, "evaluate_release", "two_stage_evaluation").load()
    versions_used = ", ".join(f"{k} {v}" for k, v in table.versions.items())
    print(f"run {run.name}: two-stage evaluation on {table.n} test images ({versions_used})")
    for name, value in table.rows():
        print(f"  {name:<42} {value:.3f}")
    return run


def output_artifact(run: Any, step: str, output: str) -> Any:
    """The artifact version of a run's step output."""
    from zenml.client import Client

    return Client().get_pipeline_run(run.id).steps[step].outputs[output][0]


def output_id(run: Any, step: str, output: str) -> str:
    """The artifact version id of a run's step output."""
    return str(output_artifact(run, step, output).id)


def summarise_run(run: Any) -> None:
    """Print one line per run: name, status, model version, key metrics and approval state."""
    from zenml.client import Client

    from steps.registry import drop_duplicate

    run = Client().get_pipeline_run(run.id)
    line = f"run {run.name}: {run.status.value} ({len(run.steps)} steps)"
    if "train_model" in run.steps and run.model_version is not None:
        version = Client().get_model_version(model_version_name_or_number_or_id=run.model_version.id)
        meta = version.run_metadata
        label = f"{version.model.name} v{version.number}"
        same_as = drop_duplicate(run)
        if same_as:
            line += f"; model unchanged (same weights as {version.model.name} {same_as}), no new version kept"
        else:
            approval = (meta.get("approval") or {}).get("state", "?")
            line += f"; {label}: test_top1={meta.get('test_top1', 0):.3f} approval={approval}"
    print(line, flush=True)


def dry_run(root: Path, pipeline: str, group: str | None, config: str | None, cloud: str = "sagemaker") -> list[str]:
    """The steps each run would have on `cloud`, with instance types, images and settings; contacts nothing."""
    import os

    from pipelines.data import STEPS
    from stacks.overlays import expand_steps, load_overlay, overlay_path, plan

    runs: list[tuple[str, str, list[str]]] = []
    if pipeline in ("data", "all"):
        runs.append(("data", "fieldguide_data", STEPS))
    for name, pipeline_name in (
        ("parent", "fieldguide_parent"),
        ("flat", "fieldguide_flat"),
        ("child", "fieldguide_child"),
    ):
        if pipeline == name or (pipeline == "all" and name != "flat"):
            params, _ = model_parameters(root, name, config if pipeline == name else None, group or "", cloud)
            runs.append((name, pipeline_name, step_ids(len(params["trials"]))))
    if not runs:
        raise FieldguideError(f"--dry-run covers the data, parent, child, flat and all pipelines, not {pipeline!r}")
    registry = os.environ.get("FIELDGUIDE_ECR_REGISTRY") or "${FIELDGUIDE_ECR_REGISTRY}"
    lines = [f"dry run on the {cloud} stack (stacks/{cloud}.yaml); nothing was contacted"]
    for name, pipeline_name, steps in runs:
        overlay = expand_steps(load_overlay(overlay_path(root, name, cloud), steps), steps)
        target = f" --group {group}" if name == "child" and group else ""
        lines.append(f"{pipeline_name}{target} ({overlay_path(root, name, cloud).name}):")
        for row in plan(overlay, steps, pipeline_name, registry):
            lines.append(f"  {row['step']:<16} {row['instance_type']:<14} {row['job']:<15} {row['settings']}")
        lines.append(f"  image: {row['image']}")
    return lines
