"""The Evidently workspace that keeps every monitor report (`make monitor-ui` serves it with `evidently ui`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROJECT_PREFIX = "fieldguide "


def project_name(model: str) -> str:
    """One Evidently project per model: its runs are that model's monitor windows."""
    return f"{PROJECT_PREFIX}{model}"


def add_snapshot(folder: Path, model: str, snapshot: Any, assessment: Any, window: dict[str, Any]) -> str:
    """Add a model's report to the workspace (created on first use), tagged with its verdict; return the run id."""
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(folder))
    name = project_name(model)
    found = workspace.search_project(name)
    project = found[0] if found else workspace.create_project(name, description=f"fieldguide monitoring of {model}")
    snapshot._tags = [*snapshot._tags, model, assessment.verdict or "no-verdict"]  # noqa: SLF001 - no public setter
    snapshot._metadata = {  # noqa: SLF001
        **snapshot._metadata,  # noqa: SLF001
        "model": model,
        "release": window["release"],
        "window": f"{window['since']} → {window['until']}",
        "verdict": assessment.verdict,
        "reasons": "; ".join(assessment.reasons),
        "requests": str(assessment.n),
    }
    ref = workspace.add_run(project.id, snapshot, include_data=False)
    return str(ref.id)
