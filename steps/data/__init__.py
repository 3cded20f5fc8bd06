"""Data stage: ingest → QA → version → shards."""

from steps.data.build_shards import build_shards
from steps.data.ingest_catalog import ingest_catalog
from steps.data.validate_images import validate_images
from steps.data.version_dataset import version_dataset

__all__ = ["build_shards", "ingest_catalog", "validate_images", "version_dataset"]
