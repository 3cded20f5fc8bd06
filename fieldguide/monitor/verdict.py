"""One model's window of traffic against its reference: Evidently drift, confidence, feedback → a verdict.

Evidently computes every drift statistic (image features, embeddings, predicted classes, confidence) in one
report, which is also what people read (ZenML visualization, Evidently workspace). The verdict is ours:

- `retrain_recommended`: feedback accuracy fell below the reference's by more than the delta, or confidence
  dropped, or the images drifted (features) and the model sees them differently (embeddings) at once;
- `watch`: one drift signal alone (features, embeddings or predicted classes);
- `ok`: none.

A model with fewer requests than `min_requests` in the window gets no verdict (too little to judge).

The tests are chosen so that in-distribution traffic rarely raises anything (bench/monitor.py measures the
false-alarm rate): two-sample KS tests at small p for features, confidence and embedding components (Evidently's
`ratio` embedding method), and a TVD permutation test for the predicted classes (Evidently's default chi-square
treats the reference proportions as exact and fires on most windows of this size).
"""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from fieldguide.data.images import IMAGE_FEATURES
from fieldguide.monitor.config import Thresholds
from fieldguide.monitor.window import CONFIDENCE, PREDICTED, model_embedding

OK, WATCH, RETRAIN = "ok", "watch", "retrain_recommended"
EMBEDDINGS = "embedding"


@dataclass
class Assessment:
    """A model's verdict on a window, with the reasons and the figures behind them."""

    model: str
    n: int  # requests of the window this model answered
    n_reference: int
    verdict: str  # ok, watch, retrain_recommended; "" when there was too little traffic to judge
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # drifted features, embedding score, confidence, feedback

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Assessment:
        """Inverse of to_dict."""
        return cls(**data)

    def line(self) -> str:
        """`model: verdict (n requests): reasons`."""
        verdict = self.verdict or "no verdict"
        reasons = "; ".join(self.reasons) or "no drift, confidence and feedback as in evaluation"
        return f"{self.model}: {verdict} ({self.n} requests) — {reasons}"


def drift_report(
    reference: pd.DataFrame, current: pd.DataFrame, width: int, t: Thresholds, name: str, at: datetime | None = None
) -> Any:
    """The Evidently report of one model's window (a Snapshot): features, embeddings, predictions, confidence.

    `at` (the window's end) places it on the Evidently UI's time axis. The drifted-columns count is for people
    reading the report; the verdict counts the per-feature tests itself (fieldguide.monitor.verdict.judge).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import ratio
    from evidently.metrics import DriftedColumnsCount, EmbeddingsDrift, ValueDrift
    from evidently.tests import lte

    embedding = model_embedding(width)
    definition = DataDefinition(
        numerical_columns=[*IMAGE_FEATURES, *embedding, CONFIDENCE],
        categorical_columns=[PREDICTED],
        embeddings={EMBEDDINGS: embedding},
    )
    features = list(IMAGE_FEATURES)
    metrics: list[Any] = [
        DriftedColumnsCount(
            columns=features,
            num_method="ks",
            num_threshold=t.feature_p,
            drift_share=t.min_drifted_features / len(features),
        ),
        *[ValueDrift(column=c, method="ks", threshold=t.feature_p) for c in features],
        EmbeddingsDrift(
            embeddings_name=EMBEDDINGS,
            drift_method=ratio(
                component_stattest="ks", component_stattest_threshold=t.embedding_p, threshold=t.embedding_share
            ),
            tests=[lte(t.embedding_share)],
        ),
        ValueDrift(column=PREDICTED, method="TVD", threshold=t.prediction_p),
        ValueDrift(column=CONFIDENCE, method="ks", threshold=t.confidence_p),
    ]

    def dataset(df: pd.DataFrame) -> Any:
        return Dataset.from_pandas(df[[*features, *embedding, PREDICTED, CONFIDENCE]], data_definition=definition)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant columns (every image the same size) make scipy warn
        report = Report(metrics, include_tests=True)
        naive = at.astimezone(UTC).replace(tzinfo=None) if at else None  # Evidently's own timestamps are naive
        return report.run(dataset(current), dataset(reference), name=name, timestamp=naive)


def read_report(snapshot: Any) -> dict[str, Any]:
    """Drift score and flag of each column, the embedding score and flag, from a report's results and tests."""
    data = snapshot.dict()
    failed = {t["metric_config"]["metric_id"] for t in data["tests"] if t["status"] == "FAIL"}
    out: dict[str, Any] = {"columns": {}}
    for metric in data["metrics"]:
        kind = metric["config"]["type"].split(":")[-1]
        if kind == "ValueDrift":
            out["columns"][metric["config"]["column"]] = {
                "score": float(metric["value"]),
                "drift": metric["id"] in failed,
            }
        elif kind == "EmbeddingsDrift":
            out[EMBEDDINGS] = {"score": float(metric["value"]), "drift": metric["id"] in failed}
    return out


def judge(
    model: str,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    results: dict[str, Any] | None,
    feedback: tuple[float, int],
    reference_accuracy: float,
    t: Thresholds,
) -> Assessment:
    """The verdict of one model from its report's results, its confidence and its feedback accuracy."""
    n = len(current)
    if results is None or n < t.min_requests:
        reason = f"too few requests to judge ({n} < {t.min_requests})"
        return Assessment(model, n, len(reference), "", [reason])
    columns = results["columns"]
    drifted = [c for c in IMAGE_FEATURES if columns[c]["drift"]]
    figures: dict[str, Any] = {
        "drifted_features": {c: columns[c]["score"] for c in drifted},
        "embedding_drift_share": results[EMBEDDINGS]["score"],
        "prediction_p": columns[PREDICTED]["score"],
        "confidence": {"reference": float(reference[CONFIDENCE].mean()), "window": float(current[CONFIDENCE].mean())},
        "confidence_p": columns[CONFIDENCE]["score"],
    }
    reasons, strong, weak = [], [], []
    data_drift = len(drifted) >= t.min_drifted_features
    if data_drift:
        weak.append(f"image features drifted: {', '.join(drifted)} (KS p < {t.feature_p:g})")
    if results[EMBEDDINGS]["drift"]:
        share = results[EMBEDDINGS]["score"]
        weak.append(f"embedding drift: {share:.0%} of components drifted (KS p < {t.embedding_p:g})")
    if data_drift and results[EMBEDDINGS]["drift"]:
        strong.append("the photos and the model's view of them both drifted")
    fall = figures["confidence"]["reference"] - figures["confidence"]["window"]
    if fall >= t.confidence_drop and columns[CONFIDENCE]["drift"]:
        conf = figures["confidence"]
        strong.append(f"confidence drop: mean {conf['reference']:.2f} → {conf['window']:.2f}")
    if columns[PREDICTED]["drift"]:
        weak.append(f"predicted classes shifted (TVD p = {columns[PREDICTED]['score']:.3g})")
    accuracy, count = feedback
    if count:
        figures["feedback"] = {"accuracy": accuracy, "answers": count, "reference": reference_accuracy}
    if count >= t.min_feedback and accuracy < reference_accuracy - t.feedback_delta:
        strong.append(
            f"feedback accuracy {accuracy:.2f} on {count} answers, below the reference {reference_accuracy:.2f} "
            f"- {t.feedback_delta:g}"
        )
    reasons = strong + weak
    verdict = RETRAIN if strong else WATCH if weak else OK
    return Assessment(model, n, len(reference), verdict, reasons, figures)


def assess(
    model: str,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    feedback: tuple[float, int],
    reference_accuracy: float,
    width: int,
    t: Thresholds,
    name: str = "",
    at: datetime | None = None,
) -> tuple[Assessment, Any]:
    """Report and verdict of one model's window; the report is None when there is too little traffic."""
    if len(current) < t.min_requests or len(reference) < 2:
        return judge(model, reference, current, None, feedback, reference_accuracy, t), None
    snapshot = drift_report(reference, current, width, t, name or model, at)
    return judge(model, reference, current, read_report(snapshot), feedback, reference_accuracy, t), snapshot


def report_html(assessment: Assessment, snapshot: Any, window: str) -> str:
    """The verdict, its reasons and the feedback figures above Evidently's own report (one self-contained page)."""
    colour = {OK: "#2e7d32", WATCH: "#ef6c00", RETRAIN: "#c62828"}.get(assessment.verdict, "#555")
    items = "".join(f"<li>{html.escape(r)}</li>" for r in assessment.reasons) or "<li>no signal</li>"
    fb = assessment.figures.get("feedback")
    feedback = (
        f"<p>Feedback: accuracy {fb['accuracy']:.2f} on {fb['answers']} answers (reference {fb['reference']:.2f})</p>"
        if fb and not math.isnan(fb["accuracy"])
        else "<p>Feedback: none in this window</p>"
    )
    header = (
        f'<div style="font-family:sans-serif;padding:12px;border-left:6px solid {colour}">'
        f"<h2>{html.escape(assessment.model)}: {html.escape(assessment.verdict or 'no verdict')}</h2>"
        f"<p>{assessment.n} requests in {html.escape(window)}; reference: {assessment.n_reference} evaluation "
        f"images</p><ul>{items}</ul>{feedback}</div>"
    )
    if snapshot is None:
        return f"<html><body>{header}</body></html>"
    page = snapshot.get_html_str(as_iframe=False)
    at = page.find("<body")
    at = page.find(">", at) + 1 if at >= 0 else 0
    return page[:at] + header + page[at:]
