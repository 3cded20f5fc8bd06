"""ZenML steps: thin wrappers over fieldguide/, one per file, grouped by stage."""

from steps.data import build_shards, ingest_catalog, validate_images, version_dataset

__all__ = ["build_shards", "ingest_catalog", "validate_images", "version_dataset"]
