"""Step: Evidently data drift + data summary and classification quality reports, through ZenML's integration."""

import warnings
from typing import Annotated, Any

import pandas as pd
from zenml import step
from zenml.types import HTMLString

from fieldguide.data.images import IMAGE_FEATURES
from steps.tracking import log_bytes

# Classification metrics of Evidently that hold up when the test split lacks a class.
ROBUST_QUALITY_METRICS = (
    "ClassificationQualityMetric",
    "ClassificationClassBalance",
    "ClassificationConfusionMatrix",
    "ClassificationRocCurve",
    "ClassificationPRCurve",
    "ClassificationClassSeparationPlot",
)


@step
def report_drift(
    reference_features: pd.DataFrame, current_features: pd.DataFrame
) -> tuple[
    Annotated[HTMLString, "drift_report"],
    Annotated[HTMLString, "quality_report"],
    Annotated[dict[str, Any], "drift_summary"],
]:
    """Train split (reference) against test split (current): feature drift and summary, prediction quality."""
    from zenml.integrations.evidently.column_mapping import EvidentlyColumnMapping
    from zenml.integrations.evidently.data_validators import EvidentlyDataValidator
    from zenml.integrations.evidently.metrics import EvidentlyMetricConfig

    features = [c for c in reference_features.columns if c in IMAGE_FEATURES or c.startswith("embedding_")]
    classes = [c for c in reference_features.columns if c not in features and c != "target"]
    mapping = EvidentlyColumnMapping(
        target="target", prediction=classes, numerical_features=features, task="classification", pos_label=classes[0]
    ).to_evidently_column_mapping()
    validator = EvidentlyDataValidator.get_active_data_validator()

    def profile(*metrics: str) -> tuple[Any, str]:
        report = validator.data_profiling(
            dataset=reference_features,
            comparison_dataset=current_features,
            profile_list=[EvidentlyMetricConfig.metric(m) for m in metrics],
            column_mapping=mapping,
        )
        return report, report.get_html()  # metrics are computed lazily: errors surface here

    with warnings.catch_warnings():
        # Constant columns (every image the same size) and classes never predicted make Evidently's correlations
        # and sklearn's precision warn about 0/0; the reports show those cases as they are.
        warnings.simplefilter("ignore")
        drift, drift_html = profile("DataDriftPreset", "DataQualityPreset")
        try:
            _, quality_html = profile("ClassificationPreset")
        except (KeyError, ValueError, ZeroDivisionError) as exc:
            # Evidently's per-class metrics fail when a class is absent from the test split (small groups).
            print(f"Evidently ClassificationPreset failed ({type(exc).__name__}: {exc}); using its robust metrics")
            _, quality_html = profile(*ROBUST_QUALITY_METRICS)
    result = drift.as_dict()["metrics"][0]["result"]
    summary = {
        "dataset_drift": bool(result["dataset_drift"]),
        "drifted_columns": int(result["number_of_drifted_columns"]),
        "columns": int(result["number_of_columns"]),
        "share_drifted": float(result["share_of_drifted_columns"]),
    }
    print(f"Evidently: {summary['drifted_columns']}/{summary['columns']} feature columns drifted (train → test)")
    log_bytes(drift_html, "evidently_drift_report.html")
    log_bytes(quality_html, "evidently_quality_report.html")
    return HTMLString(drift_html), HTMLString(quality_html), summary
