"""Step: evaluate a trained model on the test split, compare it with production, apply the quality gate."""

from dataclasses import asdict
from typing import Annotated, Any

import pandas as pd
from zenml import step

from fieldguide.config import from_dict
from fieldguide.data.shards import ShardSet
from fieldguide.evaluate.gate import GateConfig, judge
from fieldguide.evaluate.metrics import (
    Evaluation,
    evaluate_predictions,
    feature_tables,
    measure_latency,
    predict,
    weights_sha256,
)
from fieldguide.evaluate.report import render_report
from fieldguide.train.job import view_from_spec
from fieldguide.train.models import ModelBundle
from registry.versions import production_model
from steps.materializers import EvaluationMaterializer
from steps.tracking import log_bytes, log_metrics, run_id


@step(enable_cache=False, output_materializers={"evaluation": EvaluationMaterializer})
def evaluate_model(
    shard_set: ShardSet, model: ModelBundle, view: dict[str, Any], gate: dict[str, Any]
) -> tuple[
    Annotated[Evaluation, "evaluation"],
    Annotated[pd.DataFrame, "reference_features"],
    Annotated[pd.DataFrame, "current_features"],
]:
    """Test-split metrics, calibration and latency; gate against the minima and the production version.

    Never cached: the gate compares with whatever is in production now.
    """
    spec = view_from_spec(shard_set, {**view, "per_group": 0})
    name, classes = model.meta.name, list(spec.labels)
    test = predict(model, shard_set, spec, "test")
    ev = evaluate_predictions(test, classes, model_name=name, dataset_version=shard_set.dataset_version, split="test")
    ev.metrics.update(measure_latency(model.model, model.meta.data_config["input_size"]))
    ev.weights_sha256 = weights_sha256(model.model)
    ev.mlflow_run_id = run_id()
    production, production_version = production_model(name)
    prod_ev = None
    if production is not None and list(production.meta.classes) == classes:
        prod_pred = predict(production, shard_set, spec, "test", progress=False)
        prod_ev = evaluate_predictions(
            prod_pred, classes, model_name=name, dataset_version=shard_set.dataset_version, split="test"
        )
    elif production is not None:
        print(f"production {name} {production_version} has other classes; no comparison on this split")
    ev.gate = asdict(judge(ev, from_dict(GateConfig, gate, "gate"), prod_ev, production_version))
    print(f"{name}: top1={ev.metrics['top1']:.3f} macro_f1={ev.metrics['macro_f1']:.3f} ece={ev.metrics['ece']:.3f}")
    print("quality gate:", "passed" if ev.gate["passed"] else "FAILED: " + "; ".join(ev.gate["reasons"]))
    log_metrics({f"test_{k}": v for k, v in ev.metrics.items()})
    page, pngs = render_report(ev)
    log_bytes(page, "evaluation_report.html")
    for file_name, png in pngs.items():
        log_bytes(png, file_name)
    reference, current = feature_tables(predict(model, shard_set, spec, "train"), test, classes)
    return ev, reference, current
