"""Step: record the evaluated version on the Model Control Plane: metrics, gate verdict, approval state."""

from typing import Any

from zenml import get_step_context, log_metadata, step
from zenml.client import Client

from fieldguide.evaluate.metrics import Evaluation
from registry.approvals import initial_approval
from registry.versions import same_weights_version


@step(enable_cache=False)
def register_model(
    evaluation: Evaluation,
    drift_summary: dict[str, Any],
    fingerprint: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
) -> None:
    """Write metrics, gate, approval (pending, or not eligible), fingerprint and start onto the model version."""
    version = get_step_context().model
    same_as = same_weights_version(version.name, evaluation.weights_sha256, version.number)
    approval = initial_approval(evaluation.gate, same_as)
    metadata: dict[str, Any] = {
        **{f"test_{k}": v for k, v in evaluation.metrics.items()},
        "dataset_version": evaluation.dataset_version,
        "weights_sha256": evaluation.weights_sha256,
        "gate": evaluation.gate,
        "approval": approval,
        "drift": drift_summary,
        "mlflow_run_id": evaluation.mlflow_run_id,
        "fingerprint": fingerprint or {},
        "init": init or {"mode": "scratch"},
    }
    tracker = Client().active_stack.experiment_tracker
    if tracker is not None and evaluation.mlflow_run_id:
        metadata["mlflow_tracking_uri"] = tracker.get_tracking_uri()
    if same_as:
        metadata["duplicate_of"] = same_as
    log_metadata(metadata=metadata, infer_model=True)
    Client().update_model_version(version.model_id, version.id, add_tags=[approval["state"]])
    print(f"registered {version.name} v{version.number}: approval {approval['state']}")
