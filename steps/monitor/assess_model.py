"""Step: one model's window against the release's reference: Evidently report, verdict, workspace snapshot."""

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from zenml import log_metadata, step
from zenml.types import HTMLString

from fieldguide.config import from_dict
from fieldguide.monitor.config import Thresholds
from fieldguide.monitor.reference import load_reference
from fieldguide.monitor.verdict import assess, report_html
from fieldguide.monitor.window import feedback_accuracy, model_frame, reference_accuracy
from fieldguide.monitor.workspace import add_snapshot
from fieldguide.serve.servers import release_folder


@step(enable_cache=False)
def assess_model(
    predictions: pd.DataFrame,
    feedback: pd.DataFrame,
    window: dict[str, Any],
    model: str,
    thresholds: dict[str, Any],
    workspace: str,
) -> tuple[Annotated[HTMLString, "monitor_report"], Annotated[dict[str, Any], "assessment"]]:
    """Drift of the image features, embeddings, predicted classes and confidence, and feedback accuracy."""
    t = from_dict(Thresholds, thresholds, "thresholds")
    reference = load_reference(release_folder(window["release"]))
    width = int(reference.meta["width"])
    span = f"{window['since']} → {window['until']}"
    assessment, snapshot = assess(
        model,
        model_frame(reference.table, model, width),
        model_frame(predictions, model, width),
        feedback_accuracy(feedback, model),
        reference_accuracy(reference, model),
        width,
        t,
        name=f"{model} {span}",
        at=datetime.fromisoformat(window["until"]),
    )
    print(assessment.line())
    if snapshot is not None:
        run = add_snapshot(Path(workspace), model, snapshot, assessment, window)
        print(f"  Evidently workspace {workspace}: run {run}")
    log_metadata(metadata={"assessment": assessment.to_dict()})
    return HTMLString(report_html(assessment, snapshot, span)), assessment.to_dict()
