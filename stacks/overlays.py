"""Cloud overlays of the run configs (configs/<pipeline>_sagemaker.yaml): validation, merging, the dry-run plan.

Everything here works offline: settings are checked against the installed ZenML settings classes, nothing
contacts AWS or a ZenML server.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fieldguide.config import load_yaml
from fieldguide.errors import ConfigError

OVERLAY_KEYS = ("parameters", "settings", "steps", "schedule")
STEP_KEYS = ("settings",)
SCHEDULED = "monitor"  # the one pipeline whose overlay may carry a schedule (its runs resolve their own window)


def settings_classes() -> dict[str, type]:
    """Settings keys an overlay may use, with their ZenML classes."""
    from zenml.config import DockerSettings, ResourceSettings
    from zenml.integrations.aws.flavors.sagemaker_orchestrator_flavor import SagemakerOrchestratorSettings
    from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import MLFlowExperimentTrackerSettings

    return {
        "docker": DockerSettings,
        "resources": ResourceSettings,
        "orchestrator.sagemaker": SagemakerOrchestratorSettings,
        "experiment_tracker.mlflow": MLFlowExperimentTrackerSettings,
    }


def overlay_path(root: Path, pipeline: str, cloud: str = "sagemaker") -> Path:
    """configs/<pipeline>_<cloud>.yaml."""
    return root / "configs" / f"{pipeline}_{cloud}.yaml"


def validate_settings(settings: dict[str, Any], where: str) -> None:
    """Each settings block against its class: a misspelt key or a wrong value is a ConfigError."""
    classes = settings_classes()
    for key, values in settings.items():
        if key not in classes:
            raise ConfigError(f"{where}: unknown settings key {key!r}; known: {', '.join(classes)}")
        cls = classes[key]
        unknown = sorted(set(values or {}) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"{where}.{key}: unknown setting {unknown[0]!r} for {cls.__name__}")
        try:
            cls(**(values or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"{where}.{key}.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def validate_schedule(schedule: Any, where: str) -> None:
    """A ZenML Schedule (cron expression or start time and interval) that ZenML itself accepts."""
    from zenml.config.schedule import Schedule

    if not isinstance(schedule, dict):
        raise ConfigError(f"{where}: a mapping of zenml.config.schedule.Schedule fields")
    unknown = sorted(set(schedule) - set(Schedule.model_fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} of a ZenML Schedule")
    try:
        Schedule(**schedule)
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    cron = schedule.get("cron_expression")
    if cron and len(str(cron).split()) not in (6, 7):
        # ZenML's Schedule takes Unix cron; SageMaker's orchestrator (EventBridge) takes AWS cron only, and would
        # refuse it after creating the SageMaker pipeline.
        raise ConfigError(f"{where}: SageMaker schedules take AWS cron (6 fields, e.g. '0 * * * ? *'), not {cron!r}")


def load_overlay(path: Path, steps: list[str]) -> dict[str, Any]:
    """Read and validate an overlay against the pipeline's step ids (`tune_trial_*` patterns allowed)."""
    return validate_overlay(load_yaml(path), path, steps)


def validate_overlay(data: dict[str, Any], path: Path, steps: list[str]) -> dict[str, Any]:
    """Validate an overlay read from `path`; `parameters` are validated with the pipeline's by the runner."""
    unknown = sorted(set(data) - set(OVERLAY_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; an overlay holds {', '.join(OVERLAY_KEYS)}")
    validate_settings(data.get("settings") or {}, f"{path.name}: settings")
    if data.get("schedule") is not None:
        if not path.name.startswith(SCHEDULED):
            raise ConfigError(f"{path.name}: only the {SCHEDULED} pipeline runs on a schedule")
        validate_schedule(data["schedule"], f"{path.name}: schedule")
    for pattern, step_config in (data.get("steps") or {}).items():
        if not fnmatch.filter(steps, pattern):
            raise ConfigError(f"{path.name}: step {pattern!r} matches no step of the pipeline ({', '.join(steps)})")
        extra = sorted(set(step_config or {}) - set(STEP_KEYS))
        if extra:
            raise ConfigError(f"{path.name}: steps.{pattern}: unknown key {extra[0]!r}")
        validate_settings((step_config or {}).get("settings") or {}, f"{path.name}: steps.{pattern}.settings")
    return data


def run_config_part(overlay: dict[str, Any]) -> dict[str, Any]:
    """What of an overlay goes into ZenML's run config (everything but the pipeline parameters)."""
    return {k: v for k, v in overlay.items() if k != "parameters"}


def expand_steps(overlay: dict[str, Any], steps: list[str]) -> dict[str, Any]:
    """The overlay with step patterns replaced by every matching step id (ZenML wants exact ids)."""
    out = {k: v for k, v in overlay.items() if k != "steps"}
    expanded: dict[str, Any] = {}
    for pattern, step_config in (overlay.get("steps") or {}).items():
        for step in fnmatch.filter(steps, pattern):
            expanded[step] = step_config
    if expanded:
        out["steps"] = expanded
    return out


def step_settings(overlay: dict[str, Any], step: str) -> dict[str, dict[str, Any]]:
    """Pipeline-level settings with the step's own settings merged over them."""
    merged = {k: dict(v or {}) for k, v in (overlay.get("settings") or {}).items()}
    for key, values in ((overlay.get("steps") or {}).get(step, {}) or {}).get("settings", {}).items():
        merged[key] = {**merged.get(key, {}), **(values or {})}
    return merged


def plan(overlay: dict[str, Any], steps: list[str], pipeline_name: str, registry: str) -> list[dict[str, str]]:
    """Per step: SageMaker instance type, job kind, image and the other settings (for --dry-run)."""
    rows = []
    for step in steps:
        settings = step_settings(overlay, step)
        sm = settings.get("orchestrator.sagemaker", {})
        docker = settings.get("docker", {})
        rest = {k: v for k, v in sm.items() if k not in ("instance_type", "use_training_step", "tags")}
        rows.append(
            {
                "step": step,
                "instance_type": str(sm.get("instance_type", "(orchestrator default)")),
                "job": "training job" if sm.get("use_training_step") else "processing job",
                "image": f"{registry}/{docker.get('target_repository', 'zenml')}:{pipeline_name}-orchestrator"
                f" (built FROM {docker.get('parent_image', 'the ZenML default image')})",
                "settings": ", ".join(f"{k}={v}" for k, v in sorted(rest.items())),
            }
        )
    return rows
