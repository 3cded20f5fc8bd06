"""The console's settings (configs/console.yaml); no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fieldguide.config import from_dict, load_yaml


@dataclass
class ConsoleConfig:
    """Parameters of `run.py console` (configs/console.yaml)."""

    # Loopback by default: put a TLS proxy in front before opening it to a network.
    host: str = "127.0.0.1"
    # The console's port (`run.py console --port` overrides it).
    port: int = 8090
    # Request bodies above this many bytes are refused with 413 before they are read.
    max_body_bytes: int = 65536
    # How long a browser sign-in lasts.
    session_hours: float = 12.0
    # Lines of a run's log shown on its page and returned by the API.
    log_tail_lines: int = 60
    # Deploy config the rollouts and rollbacks use ("": configs/deploy.yaml).
    deploy_config: str = ""
    # Folder of run configs (<pipeline>.yaml) for runs started here ("": each pipeline's default in configs/).
    run_configs: str = ""
    # The ZenML dashboard the pages link runs to (`make dashboard`).
    dashboard_url: str = "http://127.0.0.1:8237"
    # The MLflow UI the pages link versions' training runs to (`make mlflow-ui`).
    mlflow_url: str = "http://127.0.0.1:5000"


def load_console_config(root: Path, path: str | None = None) -> ConsoleConfig:
    """The console config at `path` (default configs/console.yaml), relative paths resolved against `root`."""
    data = load_yaml(path or root / "configs" / "console.yaml")
    cfg = from_dict(ConsoleConfig, data.get("parameters"), "console")
    for name in ("deploy_config", "run_configs"):
        value = getattr(cfg, name)
        if value and not Path(value).is_absolute():
            setattr(cfg, name, str(root / value))
    return cfg
