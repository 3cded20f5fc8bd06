"""ZenML steps: thin wrappers over fieldguide/, one per file, grouped by stage."""

from steps.data import build_shards, ingest_catalog, validate_images, version_dataset
from steps.deploy import assemble_release, build_bento, promote_release, start_staging, test_staging
from steps.evaluate import evaluate_model, evaluate_release, register_model, report_drift
from steps.train import select_best, train_model, tune_trial

__all__ = [
    "assemble_release",
    "build_bento",
    "promote_release",
    "start_staging",
    "test_staging",
    "build_shards",
    "evaluate_model",
    "evaluate_release",
    "ingest_catalog",
    "register_model",
    "report_drift",
    "select_best",
    "train_model",
    "tune_trial",
    "validate_images",
    "version_dataset",
]
