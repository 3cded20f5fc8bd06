"""ZenML steps: thin wrappers over fieldguide/, one per file, grouped by stage."""

from steps.data import build_shards, ingest_catalog, validate_images, version_dataset
from steps.train import select_best, train_model, tune_trial

__all__ = [
    "build_shards",
    "ingest_catalog",
    "select_best",
    "train_model",
    "tune_trial",
    "validate_images",
    "version_dataset",
]
