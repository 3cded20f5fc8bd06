"""Step: fan-in of the models' assessments; each verdict is recorded on the model's production version."""

from datetime import UTC, datetime
from typing import Annotated, Any

from zenml import step

from fieldguide.monitor.verdict import Assessment
from registry.versions import record_monitoring


@step(enable_cache=False)
def record_verdicts(assessments: list[dict[str, Any]], window: dict[str, Any]) -> Annotated[dict[str, Any], "verdicts"]:
    """Write `monitoring` metadata (verdict, reasons, window) on each judged model's production version."""
    at = datetime.now(UTC).isoformat(timespec="seconds")
    verdicts = {}
    for item in assessments:
        a = Assessment.from_dict(item)
        verdicts[a.model] = a.verdict
        if not a.verdict:  # too little traffic: nothing to record
            continue
        record = {
            "verdict": a.verdict,
            "reasons": a.reasons,
            "requests": a.n,
            "release": window["release"],
            "window": f"{window['since']} → {window['until']}",
            "at": at,
        }
        if "feedback" in a.figures:  # accuracy on the answers users corrected, beside the reference (retrain policy)
            record["feedback"] = a.figures["feedback"]
        record_monitoring(window["version_ids"][a.model], record)
    return verdicts
