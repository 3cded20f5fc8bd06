"""Run configs: each pipeline's YAML (and the active cloud's overlay) read once into typed parameters.

A run-config YAML is ZenML's: `parameters` are the pipeline's arguments, everything else (settings, steps,
enable_cache) is ZenML's run configuration. A top-level `groups:` mapping holds per-group parameter overrides.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from fieldguide.config import DataConfig, from_dict, load_yaml
from fieldguide.errors import ConfigError
from fieldguide.evaluate.gate import GateConfig
from fieldguide.monitor.config import CaptureConfig, Thresholds
from fieldguide.review.config import RetrainConfig
from fieldguide.serve.endpoints import EndpointSettings
from fieldguide.serve.release import ServingConfig
from fieldguide.train.params import TrainParams
from fieldguide.train.tuning import TuneConfig

T = TypeVar("T")


@dataclass
class ModelPipelineConfig:
    """Parameters of the parent and child pipelines (configs/parent.yaml, configs/child.yaml)."""

    # Parent only: about this many training images per group per epoch (group-balanced sampling); 0 keeps all.
    per_group: int = 0
    # Name of the stack's MLflow experiment tracker; empty disables MLflow logging.
    experiment_tracker: str = "fieldguide-mlflow"
    # Where epoch checkpoints go (a folder or an s3:// URL); empty means <artifact store>/checkpoints.
    checkpoint_dir: str = ""
    # Hyperparameter search.
    tuning: TuneConfig = field(default_factory=TuneConfig)
    # Base training parameters (tuned values override them).
    train: TrainParams = field(default_factory=TrainParams)
    # Quality gate a trained version must pass to be eligible for approval.
    gate: GateConfig = field(default_factory=GateConfig)
    # Where the weights start: router (children's default), scratch (or train.pretrained_file), or a weights file.
    init: str = ""


@dataclass
class ReleaseConfig:
    """Parameters of the two-stage release evaluation (configs/release.yaml)."""

    # Routing depths reported: p(species) sums over the top-k groups (k=1 is plain routing).
    top_k: list[int] = field(default_factory=lambda: [1, 2, 3])
    # Also train a flat classifier on all species (same backbone) and report it beside the two-stage model.
    compare_flat: bool = False


@dataclass
class DeployConfig:
    """Ports, budgets and sample sizes of the rollout (configs/deploy.yaml)."""

    # The production URL's port (the gateway); stays the same across releases.
    production_port: int = 3000
    # The staging server's port.
    staging_port: int = 3001
    # Seconds a new server may take to become ready.
    start_timeout_s: float = 180.0
    # Held-out test images sent to staging (serving correctness and served sanity are judged on them).
    accuracy_sample: int = 200
    # An in-process top-1 ahead of the runner-up by less than this may flip when served (a near tie).
    near_tie: float = 0.02
    # A release may evaluate at most this far below production's end-to-end accuracy on the same test split.
    release_max_drop: float = 0.02
    # Served answers on the held-out images must reach this macro-F1 (catches a release that is broken outright).
    min_served_macro_f1: float = 0.3
    # A child answering one species for at least this many routed images of two or more species is degenerate.
    degenerate_min_images: int = 10
    # Requests timed one after another for the latency check.
    latency_requests: int = 30
    # p95 latency budget of one /classify request on staging, milliseconds.
    p95_budget_ms: float = 1000.0
    # Serving settings written into each release (they travel with it, so staging and production agree).
    serving: ServingConfig = field(default_factory=ServingConfig)
    # What servers record (configs/monitor.yaml's `capture`, filled in by pipelines.deploy_runs.deploy_config).
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    # Where releases go live: `local` (servers on this machine) or `sagemaker` (endpoints; the SageMaker stack's
    # overlay configs/deploy_sagemaker.yaml sets it).
    target: str = "local"
    # The SageMaker endpoints, instance types and blue/green policy (target `sagemaker` only).
    sagemaker: EndpointSettings = field(default_factory=EndpointSettings)

    def __post_init__(self) -> None:
        if self.target not in ("local", "sagemaker"):
            raise ConfigError(f"deploy target {self.target!r}: use local or sagemaker")


@dataclass
class MonitorConfig:
    """Parameters of the monitor pipeline and of what servers record (configs/monitor.yaml)."""

    # What each server logs and keeps: log rotation, photo hold and samples, embedding components.
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    # When a model is ok, to watch, or recommended for retraining.
    thresholds: Thresholds = field(default_factory=Thresholds)
    # The window monitored when --since is not given (e.g. 24h, 90m, 7d).
    since: str = "24h"
    # The Evidently workspace the reports are added to; empty means <FIELDGUIDE_HOME>/evidently.
    workspace: str = ""


PARAMETERS: dict[str, type] = {
    "data": DataConfig,
    "parent": ModelPipelineConfig,
    "child": ModelPipelineConfig,
    "flat": ModelPipelineConfig,
    "release": ReleaseConfig,
    "deploy": DeployConfig,
    "monitor": MonitorConfig,
    "retrain": RetrainConfig,
}


@dataclass
class RunConfig(Generic[T]):
    """One pipeline's run config, read and validated once."""

    # The YAML it came from (errors name it).
    path: Path
    # The validated `parameters`, group overrides and the overlay's parameters merged in.
    params: T
    # The rest of ZenML's run config (enable_cache, settings, steps), the overlay's merged in.
    zenml: dict[str, Any] = field(default_factory=dict)
    # The cloud overlay as read (validated against ZenML's settings by the caller), or {}.
    overlay: dict[str, Any] = field(default_factory=dict)
    # The overlay's file (errors name it).
    overlay_path: Path | None = None


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `overlay` into a copy of `base` (overlay wins)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_path(root: Path, pipeline: str, given: str | Path | None = None) -> Path:
    """The config file to use: the one given, else configs/<pipeline>.yaml."""
    path = Path(given) if given else root / "configs" / f"{pipeline}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return path


def config_in(given: str | None, pipeline: str) -> str | None:
    """The config of `pipeline` in a run given `--config`.

    A file is used as is; a folder (`--pipeline all`) gives its <pipeline>.yaml, or None (configs/) where it has none.
    """
    if given and Path(given).is_dir():
        found = Path(given) / f"{pipeline}.yaml"
        return str(found) if found.is_file() else None
    return given


def load_run_config(
    root: Path, pipeline: str, given: str | Path | None = None, group: str = "", cloud: str = ""
) -> RunConfig[Any]:
    """Read configs/<pipeline>.yaml (or `given`) and, with `cloud`, configs/<pipeline>_<cloud>.yaml, once.

    Raises:
        ConfigError: for a missing file, malformed YAML, an unknown key or a wrong type, naming where.
    """
    path = config_path(root, pipeline, given)
    data = load_yaml(path)
    params = data.pop("parameters", None) or {}
    per_group = data.pop("groups", None) or {}
    if not isinstance(params, dict) or not isinstance(per_group, dict):
        raise ConfigError(f"{path}: 'parameters' and 'groups' must be mappings")
    if group and per_group.get(group):
        params = deep_merge(params, per_group[group])
    overlay_file = root / "configs" / f"{pipeline}_{cloud}.yaml" if cloud else None
    overlay = load_yaml(overlay_file) if overlay_file and overlay_file.is_file() else {}
    params = deep_merge(params, overlay.get("parameters") or {})
    typed = from_dict(PARAMETERS[pipeline], params, "parameters")
    return RunConfig(path, typed, data, overlay, overlay_file if overlay else None)
