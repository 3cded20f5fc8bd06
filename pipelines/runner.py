"""Turn CLI options into pipeline runs: load and validate the YAML config, apply overrides, run, summarise."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml

from fieldguide.catalog import fingerprint, is_remote
from fieldguide.config import DataConfig, from_dict, load_yaml
from fieldguide.errors import ConfigError, FieldguideError


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `overlay` into a copy of `base` (overlay wins)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def split_run_config(path: Path, overlays: list[Path] = ()) -> tuple[dict[str, Any], Path]:
    """Split a run-config YAML (plus overlays) into pipeline parameters and a ZenML config file for the rest."""
    data: dict[str, Any] = load_yaml(path)
    for overlay in overlays:
        data = deep_merge(data, load_yaml(overlay))
    params = data.pop("parameters", None) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: 'parameters' must be a mapping")
    rest = Path(tempfile.mkstemp(prefix="fieldguide-run-", suffix=".yaml")[1])
    rest.write_text(yaml.safe_dump(data))
    return params, rest


def config_path(root: Path, name: str, given: str | None) -> Path:
    """The config file to use: the one given, else configs/<name>.yaml."""
    path = Path(given) if given else root / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return path


def data_parameters(root: Path, config: str | None, catalog: str | None) -> tuple[dict[str, Any], Path]:
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
        "rules": _asdict(cfg.rules),
        "split": _asdict(cfg.split),
        "shards": _asdict(cfg.shards),
    }
    return params, rest


def _asdict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj)


def run_data(root: Path, config: str | None, catalog: str | None, no_cache: bool) -> Any:
    """Run the data pipeline; return the pipeline run."""
    from pipelines.data import data_pipeline

    params, rest = data_parameters(root, config, catalog)
    options: dict[str, Any] = {"config_path": str(rest)}
    if no_cache:
        options["enable_cache"] = False
    return data_pipeline.with_options(**options)(**params)


def run_pipeline(
    root: Path, pipeline: str, *, group: str | None, config: str | None, catalog: str | None, no_cache: bool
) -> None:
    """Dispatch `--pipeline` to the pipeline runs it stands for."""
    from stacks import ensure_repository

    ensure_repository(root)
    if pipeline in ("data", "all"):
        run = run_data(root, config if pipeline == "data" else None, catalog, no_cache)
        summarise_run(run)
    if pipeline in ("parent", "child", "all"):
        raise FieldguideError(f"the {pipeline} pipeline is not available in this version")


def summarise_run(run: Any) -> None:
    """Print one line per run: name, status, and where to look."""
    from zenml.client import Client

    run = Client().get_pipeline_run(run.id)
    print(f"run {run.name}: {run.status.value} ({len(run.steps)} steps)")
