"""Dispatch: turn CLI options into pipeline runs (run configs, the dataset each run uses, one line per run)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldguide.data.catalog import fingerprint, is_remote
from fieldguide.errors import FieldguideError
from fieldguide.fingerprint import (
    FILE,
    RETRAIN_VERDICT,
    ROUTER,
    SCRATCH,
    Fingerprint,
    Init,
    file_sha256,
    with_pin,
)
from fieldguide.keys import ModelKey
from fieldguide.runconfig import RunConfig, config_in, deep_merge, load_run_config
from pipelines.training import step_ids


@contextlib.contextmanager
def pipeline_errors() -> Iterator[None]:
    """Turn ZenML's "Pipeline run has failed" into one FieldguideError line."""
    try:
        yield
    except RuntimeError as exc:
        if "Pipeline run has failed" not in str(exc):
            raise
        raise FieldguideError(f"{exc} (the step's log is above, and in the dashboard)") from None


def active_cloud() -> str:
    """'sagemaker' when the active stack's orchestrator runs on SageMaker, else ''."""
    from zenml.client import Client

    return "sagemaker" if Client().active_stack.orchestrator.flavor == "sagemaker" else ""


def zenml_options(rc: RunConfig[Any], steps: list[str]) -> dict[str, Any]:
    """ZenML's run config of `rc`, with its cloud overlay validated against the installed settings and merged."""
    from stacks.overlays import expand_steps, run_config_part, validate_overlay

    if not rc.overlay or rc.overlay_path is None:
        return dict(rc.zenml)
    checked = validate_overlay(rc.overlay, rc.overlay_path, steps)
    return deep_merge(rc.zenml, run_config_part(expand_steps(checked, steps)))


@dataclass
class Dataset:
    """The dataset version a run uses."""

    # The `shard_set` artifact version the pipelines read.
    shard_set_id: str
    # The dataset version id (from the manifest).
    version: str
    # Its plant groups (one child model each).
    groups: list[str]
    # The loaded fieldguide.data.shards.ShardSet (its small JSON; fingerprints read its row digests).
    shard_set: Any = dataclasses.field(repr=False, compare=False)

    @classmethod
    def of(cls, artifact: Any) -> Dataset:
        """From a `shard_set` artifact version (reads its small JSON, not the shards)."""
        shard_set = artifact.load()
        return cls(str(artifact.id), shard_set.dataset_version, list(shard_set.classes.groups), shard_set)


def data_parameters(
    root: Path, config: str | None, catalog: str | None, cloud: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Data-pipeline parameters (catalog override, fresh catalog fingerprint) and ZenML's run config."""
    from pipelines.data import STEPS

    rc = load_run_config(root, "data", config, cloud=cloud)
    cfg = rc.params
    if catalog:
        cfg.catalog = catalog
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
        "fingerprint": fingerprint(cfg.catalog, cfg.taxonomy, extra_roots=cfg.rules.allowed_roots),
        "rules": dataclasses.asdict(cfg.rules),
        "split": dataclasses.asdict(cfg.split),
        "shards": dataclasses.asdict(cfg.shards),
    }
    return params, zenml_options(rc, STEPS)


def run_data(root: Path, config: str | None, catalog: str | None, no_cache: bool) -> Any:
    """Run the data pipeline (cached when the catalog did not change); return the pipeline run."""
    from pipelines.data import data_pipeline

    params, options = data_parameters(root, config, catalog, active_cloud())
    return data_pipeline.with_options(**_options(options, no_cache))(**params)


def resolve_dataset(
    root: Path,
    dataset: str | None,
    catalog: str | None,
    no_cache: bool = False,
    quiet: bool = False,
    data_config: str | None = None,
) -> Dataset:
    """The dataset a run uses, printed.

    --dataset VERSION, else --catalog (runs the data pipeline, or reuses its cached run), else the dataset of the
    last data pipeline run (cached runs included).
    """
    from registry.datasets import last_data_run_shard_set, shard_set_by_version, shard_set_of_run

    if dataset and catalog:
        raise FieldguideError("give --dataset or --catalog, not both")
    if catalog:
        run = run_data(root, data_config, catalog, no_cache)
        summarise_run(run)
        artifact, source = shard_set_of_run(run), f"catalog {catalog}"
    elif dataset:
        artifact, source = shard_set_by_version(dataset), "--dataset"
    else:
        artifact, source = last_data_run_shard_set(), "the last data pipeline run"
    chosen = Dataset.of(artifact)
    if not quiet:
        print(f"dataset {chosen.version} ({source}; groups: {', '.join(chosen.groups)})", flush=True)
    return chosen


def model_parameters(
    root: Path, key: ModelKey, config: str | None, cloud: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model pipeline's parameters (trials sampled up front) and ZenML's run config, the cloud overlay in."""
    _, params, zenml = _model_config(root, key, config, cloud)
    return params, zenml


def _model_config(
    root: Path, key: ModelKey, config: str | None, cloud: str
) -> tuple[RunConfig[Any], dict[str, Any], dict[str, Any]]:
    """The run config read once, the pipeline's parameters from it, and ZenML's run config."""
    from fieldguide.train.tuning import sample_trials

    rc = load_run_config(root, key.pipeline, config, group=key.group, cloud=cloud)
    cfg = rc.params
    params: dict[str, Any] = {
        "train": dataclasses.asdict(cfg.train),
        "tuning": dataclasses.asdict(cfg.tuning),
        "trials": sample_trials(cfg.tuning),
        "gate": dataclasses.asdict(cfg.gate),
        "experiment_tracker": cfg.experiment_tracker,
        "checkpoint_dir": cfg.checkpoint_dir,
    }
    if key.kind == "router":
        params["per_group"] = cfg.per_group
    if key.kind == "child":
        params["group"] = key.group
    return rc, params, zenml_options(rc, step_ids(len(params["trials"])))


def router_to_start_from(trained: str = "") -> tuple[Any | None, str]:
    """The router version a child starts from, and a note when it is not the usual one.

    `trained` (the router this run trained), else the production router, else the newest router nobody rejected
    (a fresh install before any approval); (None, note) when there is none.
    """
    from registry.approvals import REJECTED
    from registry.versions import approval_of, get_version, list_versions, production_version

    if trained:
        return get_version(trained), ""
    production = production_version(ModelKey.router())
    if production is not None and production.get_model_artifact("model") is not None:
        return production, ""
    usable = [
        v
        for v in list_versions(ModelKey.router())
        if approval_of(v).get("state") != REJECTED and v.get_model_artifact("model") is not None  # not a failed run
    ]
    return (usable[-1], "none in production yet: the newest") if usable else (None, "no router yet")


def resolve_init(root: Path, key: ModelKey, rc: RunConfig[Any], train: dict[str, Any], router: str = "") -> Init:
    """Where `key`'s weights start, from its config's `init` (a child's default: router_to_start_from(router)).

    Raises:
        FieldguideError: for `init: router` on a model that is not a child, or an init that is neither router,
            scratch nor an existing weights file (a relative path is taken from the repository root).
    """
    mode = rc.params.init or (ROUTER if key.kind == "child" else SCRATCH)
    pretrained = str(train.get("pretrained_file") or "")
    local = bool(pretrained) and Path(pretrained).is_file()  # else a path inside the training container: by name
    scratch = Init(SCRATCH, file=pretrained, sha256=file_sha256(pretrained) if local else "")
    if mode == SCRATCH:
        return scratch
    if mode != ROUTER:
        path = Path(mode).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise FieldguideError(
                f"{rc.path}: init {mode!r} for {key.name} is not router, scratch or an existing weights file"
            )
        return Init(FILE, file=str(path), sha256=file_sha256(str(path)))
    if key.kind != "child":
        raise FieldguideError(f"{rc.path}: `init: router` is for children; {key.name} takes scratch or a weights file")
    version, note = router_to_start_from(router)
    if version is None:
        return dataclasses.replace(scratch, note=note)
    artifact = str(version.get_model_artifact("model").id)
    arch = str(version.run_metadata.get("arch") or "")  # '' for versions from before it was recorded
    return Init(
        ROUTER, router=str(version.id), label=f"router v{version.number}", artifact=artifact, arch=arch, note=note
    )


def _options(zenml: dict[str, Any], no_cache: bool, key: ModelKey | None = None) -> dict[str, Any]:
    """with_options arguments: the run config, --no-cache, and the Model Control Plane model."""
    options = dict(zenml)
    if no_cache:
        options["enable_cache"] = False
    if key is not None:
        from zenml import Model

        options["model"] = Model(name=key.name, description=key.description())
    return options


@dataclass
class ModelRun:
    """One model pipeline run, prepared: its parameters, where its weights start, its fingerprint."""

    # The model it trains.
    key: ModelKey
    # The pipeline's parameters (fingerprint and init included).
    params: dict[str, Any]
    # ZenML's run config (cloud overlay merged).
    zenml: dict[str, Any]
    # Where its weights start.
    init: Init
    # What it trains on, hashed.
    fingerprint: Fingerprint

    def check_start(self) -> None:
        """Refuse, before any run, a child whose architectures (trained or tuned) differ from its router's.

        Raises:
            FieldguideError: naming both architectures.
        """
        archs = {self.params["train"]["arch"]} | {t["arch"] for t in self.params["trials"] if t.get("arch")}
        if self.init.mode == ROUTER and self.init.arch and archs != {self.init.arch}:
            raise FieldguideError(
                f"{self.key.name} trains {', '.join(sorted(archs))} but {self.init.label} is {self.init.arch}: "
                "use the router's arch (train.arch and tuning.space.arch), or `init: scratch` in the child config"
            )


def prepare_model(root: Path, key: ModelKey, config: str | None, dataset: Dataset, router: str = "") -> ModelRun:
    """Parameters, start of the weights and fingerprint of training `key` on `dataset` (`router`: start from it).

    Raises:
        FieldguideError: for a bad config or `init` (see resolve_init).
    """
    rc, params, zenml = _model_config(root, key, config, active_cloud())
    init = resolve_init(root, key, rc, params["train"], router)
    if init.mode == FILE:
        params["train"]["pretrained_file"] = init.file
    trained_on = {k: params[k] for k in ("train", "tuning", "trials")} | {"view": key.view(params.get("per_group", 0))}
    fingerprint = Fingerprint.of(key, dataset.shard_set, trained_on, init)
    params.update(fingerprint=fingerprint.to_dict(), init=init.to_dict())
    return ModelRun(key, params, zenml, init, fingerprint)


def run_model(root: Path, key: ModelKey, config: str | None, no_cache: bool, dataset: Dataset, router: str = "") -> Any:
    """Run the pipeline that trains `key` on a dataset (a child starting from `router` when given); return the run."""
    return run_prepared(prepare_model(root, key, config, dataset, router), dataset, no_cache)


def run_prepared(prepared: ModelRun, dataset: Dataset, no_cache: bool) -> Any:
    """Run a prepared model pipeline, saying where its weights start; return the pipeline run."""
    from pipelines.child import child_pipeline
    from pipelines.flat import flat_pipeline
    from pipelines.parent import parent_pipeline

    prepared.check_start()
    key = prepared.key
    pipeline = {"router": parent_pipeline, "child": child_pipeline, "flat": flat_pipeline}[key.kind]
    note = f" ({prepared.init.note})" if prepared.init.note else ""
    print(f"{key.name}: training, weights start from {prepared.init.describe()}{note}", flush=True)
    options = _options(prepared.zenml, no_cache, key)
    return pipeline.with_options(**options)(shard_set_id=dataset.shard_set_id, **prepared.params)


def unchanged_version(prepared: ModelRun, dataset: Dataset) -> Any | None:
    """The version training would repeat (same fingerprint; the newest such), else None; prints which or why not.

    A monitoring verdict `retrain_recommended` on the production version retrains it when no newer version exists
    and the dataset is not the one it was trained on (the same data and seed would give the same weights).
    """
    from registry.versions import list_versions, production_version

    key = prepared.key
    versions = list_versions(key)
    if not versions:
        return None
    newest = versions[-1]
    reasons: list[str] = []
    for version in reversed(versions):
        recorded = dict(version.run_metadata.get("fingerprint") or {})
        candidate = prepared.fingerprint
        if prepared.init.mode == ROUTER:  # a new router alone does not retrain a child: compare with its pinned one
            candidate = candidate.started_from(with_pin(prepared.init, recorded))
        changes = candidate.changes_since(recorded)
        if not changes:
            same, digest = version, recorded.get("digest", "")
            break
        reasons = reasons or changes  # why the newest differs
    else:
        same, digest = None, ""
    production = production_version(key)
    verdict = (production.run_metadata.get("monitoring") or {}).get("verdict") if production is not None else None
    if (
        verdict == RETRAIN_VERDICT
        and production.number >= newest.number
        and production.run_metadata.get("dataset_version") != dataset.version
    ):
        same, reasons = None, [f"monitoring recommends retraining production v{production.number}"]
    if same is None:
        print(f"{key.name}: retraining, since v{newest.number}: {'; '.join(reasons)}", flush=True)
        return None
    print(
        f"{key.name}: unchanged (fingerprint {digest[:12]} = v{same.number}'s: same data, config and start), "
        "not retrained",
        flush=True,
    )
    return same


def check_config_arg(pipeline: str, config: str | None) -> None:
    """Refuse `--config FILE` with `--pipeline all` (which takes a folder) and a folder with any other pipeline.

    Raises:
        FieldguideError: naming what the pipeline takes.
    """
    if config and (pipeline == "all") != Path(config).is_dir():
        raise FieldguideError(
            f"--pipeline {pipeline} takes --config {'DIR' if pipeline == 'all' else 'FILE'}: {config}"
        )


def model_config(config: str | None, pipeline: str, key: ModelKey) -> str | None:
    """The config file of `key` in a `--pipeline` run: --config for the pipeline it names, or from a folder (all)."""
    return config_in(config, key.pipeline) if pipeline in (key.pipeline, "all") else None


def child_keys(group: str, dataset: Dataset) -> list[ModelKey]:
    """The children `--group` names ('all': every group of the dataset)."""
    if group == "all":
        return [ModelKey.child(g) for g in dataset.groups]
    if group not in dataset.groups:
        raise FieldguideError(f"unknown group {group!r}; known groups: {', '.join(dataset.groups)}")
    return [ModelKey.child(group)]


def run_pipeline(
    root: Path,
    pipeline: str,
    *,
    group: str | None,
    config: str | None,
    catalog: str | None,
    no_cache: bool,
    dataset: str | None = None,
    retrain: tuple[str, ...] = (),
) -> dict[str, str]:
    """Dispatch `--pipeline` to its runs; returns the model versions (name → id) they produced or matched.

    `--pipeline all` skips a model whose fingerprint equals its newest version's unless `retrain` names it; a
    pipeline named on its own always runs. Children start from the router trained in the same run, if any.
    """
    from stacks import ensure_repository

    if pipeline == "child" and not group:
        raise FieldguideError("--pipeline child needs --group NAME (or --group all)")
    check_config_arg(pipeline, config)
    ensure_repository(root)
    with pipeline_errors():
        if pipeline == "data":
            if dataset:
                raise FieldguideError("--pipeline data makes a dataset: give --catalog, not --dataset")
            run = run_data(root, config, catalog, no_cache)
            summarise_run(run)
            from registry.datasets import shard_set_of_run

            print(f"dataset {Dataset.of(shard_set_of_run(run)).version}", flush=True)
            return {}
        if pipeline == "all" and not dataset:
            catalog = catalog or load_run_config(root, "data", config_in(config, "data")).params.catalog or None
            if catalog is None:
                raise FieldguideError(
                    "--pipeline all needs --catalog PATH (or parameters.catalog in configs/data.yaml)"
                )
        data_config = config_in(config, "data") if pipeline == "all" else None  # else --config is the model's
        ds = resolve_dataset(root, dataset, catalog, no_cache, data_config=data_config)
        keys: list[ModelKey] = []
        if pipeline in ("parent", "all"):
            keys.append(ModelKey.router())
        if pipeline in ("child", "all"):
            keys += child_keys(group or "all", ds)
        release_file = config_in(config, "release") if pipeline == "all" else None
        if pipeline == "flat" or (pipeline == "all" and release_config(root, release_file).compare_flat):
            keys.append(ModelKey.flat())
        unknown = sorted(set(retrain) - {k.name for k in keys})
        if unknown:
            raise FieldguideError(
                f"--retrain {', '.join(unknown)}: not trained by this run ({', '.join(k.name for k in keys)})"
            )
        produced = train_models(
            root,
            keys,
            ds,
            lambda key: model_config(config, pipeline, key),
            no_cache,
            skip_unchanged=lambda key: pipeline == "all" and key.name not in retrain,
        )
        if pipeline == "all":
            flat = produced.pop(ModelKey.flat().name, "")
            run_release_eval(root, release_file, ds, produced, flat)
        return produced


def train_models(
    root: Path,
    keys: list[ModelKey],
    ds: Dataset,
    config_of: Callable[[ModelKey], str | None],
    no_cache: bool,
    skip_unchanged: Callable[[ModelKey], bool],
) -> dict[str, str]:
    """Train `keys` on `ds` (the router first); returns name → version id, trained or matched.

    A model for which `skip_unchanged` holds is not trained when its fingerprint equals a version's (that version
    is returned). Every config, start and skip is decided before the first run starts; children start from the
    router trained in the same run, if any.
    """
    produced: dict[str, str] = {}
    to_train: list[ModelRun] = []
    for key in keys:
        prepared = prepare_model(root, key, config_of(key), ds)
        same = unchanged_version(prepared, ds) if skip_unchanged(key) else None
        if same is not None:
            produced[key.name] = str(same.id)
        else:
            prepared.check_start()
            to_train.append(prepared)
    trained_router = ""
    for prepared in to_train:
        key = prepared.key
        if trained_router and key.kind == "child":  # its start: the router this run just trained
            prepared = prepare_model(root, key, config_of(key), ds, trained_router)
        produced[key.name] = record_run(run_prepared(prepared, ds, no_cache))
        if key.kind == "router":
            trained_router = produced[key.name]
    return produced


RELEASE_STEPS = ["evaluate_release"]


def release_config(root: Path, config: str | None) -> Any:
    """The validated release-evaluation config (configs/release.yaml)."""
    return load_run_config(root, "release", config).params


def release_options(root: Path, config: str | None, cloud: str = "") -> dict[str, Any]:
    """ZenML's run config of the release evaluation, with configs/release_<cloud>.yaml merged on a cloud stack."""
    return zenml_options(load_run_config(root, "release", config, cloud=cloud), RELEASE_STEPS)


def run_release_eval(
    root: Path, config: str | None, dataset: Dataset, versions: dict[str, str], flat_version: str = ""
) -> Any:
    """Two-stage evaluation of the given model versions (name → id) on a dataset's test split; prints the table.

    Raises:
        FieldguideError: naming the first model whose classes differ from the dataset's, before any run starts.
    """
    from zenml.client import Client

    from fieldguide.evaluate.two_stage import check_classes
    from pipelines.release import release_eval_pipeline
    from registry.versions import get_version, load_model

    bundles = {ModelKey.parse(name): load_model(get_version(vid)) for name, vid in versions.items()}
    children = {key.group: bundle for key, bundle in bundles.items() if key.kind == "child"}
    check_classes(bundles[ModelKey.router()], children, Client().get_artifact_version(dataset.shard_set_id).load())
    cfg = release_config(root, config)
    options = release_options(root, config, active_cloud())
    with pipeline_errors():
        run = release_eval_pipeline.with_options(**options)(
            shard_set_id=dataset.shard_set_id, versions=versions, ks=cfg.top_k, flat_version=flat_version
        )
    table = output_artifact(run, "evaluate_release", "two_stage_evaluation").load()
    versions_used = ", ".join(f"{k} {v}" for k, v in table.versions.items())
    print(f"run {run.name}: two-stage evaluation on {table.n} test images of {dataset.version} ({versions_used})")
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


def record_run(run: Any) -> str:
    """Keep or drop a training run's model version, print one line; return the version id it produced or matched.

    A cached rerun with identical weights registers a duplicate version: it is deleted and the earlier one it
    repeats is returned instead, taking the duplicate's fingerprint (`--pipeline all` then skips it).
    """
    from zenml.client import Client

    from registry.versions import drop_duplicate_version, find_version

    run = Client().get_pipeline_run(run.id)
    version = Client().get_model_version(model_version_name_or_number_or_id=run.model_version.id)
    name, meta = version.model.name, version.run_metadata
    same_as = drop_duplicate_version(version.id)
    line = f"run {run.name}: {run.status.value} ({len(run.steps)} steps)"
    if same_as:
        print(f"{line}; model unchanged (same weights as {name} {same_as}), no new version kept", flush=True)
        kept = find_version(name, same_as)
        if meta.get("fingerprint"):  # training with this fingerprint gives that version: skip it next time
            from zenml import log_metadata

            log_metadata(metadata={"fingerprint": meta["fingerprint"]}, model_version_id=kept.id)
        return str(kept.id)
    approval = (meta.get("approval") or {}).get("state", "?")
    print(f"{line}; {name} v{version.number}: test_top1={meta.get('test_top1', 0):.3f} approval={approval}", flush=True)
    return str(version.id)


def summarise_run(run: Any) -> None:
    """Print one line for a pipeline run: name, status and step count."""
    from zenml.client import Client

    run = Client().get_pipeline_run(run.id)
    print(f"run {run.name}: {run.status.value} ({len(run.steps)} steps)", flush=True)


def dry_run(root: Path, pipeline: str, group: str | None, config: str | None, cloud: str = "sagemaker") -> list[str]:
    """The steps each run would have on `cloud`, with instance types, images and settings; contacts nothing."""
    import os

    from pipelines.data import STEPS
    from stacks.overlays import plan

    check_config_arg(pipeline, config)
    runs: list[tuple[str, str, list[str], dict[str, Any]]] = []
    if pipeline in ("data", "all"):
        rc = load_run_config(root, "data", config_in(config, "data"), cloud=cloud)
        runs.append(("data", "fieldguide_data", STEPS, zenml_options(rc, STEPS)))
    for name in ("parent", "flat", "child"):
        if pipeline == name or (pipeline == "all" and name != "flat"):
            given = config_in(config, name) if pipeline in (name, "all") else None
            rc = load_run_config(root, name, given, group=group or "", cloud=cloud)
            steps = step_ids(rc.params.tuning.trials)
            runs.append((name, f"fieldguide_{name}", steps, zenml_options(rc, steps)))
    if pipeline == "monitor":
        from pipelines.monitor import step_ids as monitor_steps

        rc = load_run_config(root, "monitor", config, cloud=cloud)
        steps = monitor_steps(["router", "child-*"])  # one assess step per model of the release in production
        runs.append(("monitor", "fieldguide_monitor", steps, zenml_options(rc, steps)))
    if not runs:
        raise FieldguideError(
            f"--dry-run covers the data, parent, child, flat, all and monitor pipelines, not {pipeline!r}"
        )
    registry = os.environ.get("FIELDGUIDE_ECR_REGISTRY") or "${FIELDGUIDE_ECR_REGISTRY}"
    lines = [f"dry run on the {cloud} stack (stacks/{cloud}.yaml); nothing was contacted"]
    for name, pipeline_name, steps, zenml in runs:
        target = f" --group {group}" if name == "child" and group else ""
        lines.append(f"{pipeline_name}{target} (configs/{name}_{cloud}.yaml):")
        rows = plan(zenml, steps, pipeline_name, registry)
        for row in rows:
            lines.append(f"  {row['step']:<16} {row['instance_type']:<14} {row['job']:<15} {row['settings']}")
        if rows:
            lines.append(f"  image: {rows[-1]['image']}")
        if zenml.get("schedule"):
            lines.append(f"  schedule: {zenml['schedule']} (ZenML schedule, created by the run)")
    return lines
