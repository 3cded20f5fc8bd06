"""The data pipeline: catalog → QA → manifest → shards."""

from typing import Any

from zenml import pipeline

from fieldguide.data.shards import LAYOUT
from steps.data import build_shards, ingest_catalog, validate_images, version_dataset

# Step ids in run order (cloud overlays are validated against them).
STEPS = ["ingest_catalog", "validate_images", "version_dataset", "build_shards"]


@pipeline(name="fieldguide_data")
def data_pipeline(
    catalog: str, fingerprint: str, taxonomy: str, rules: dict[str, Any], split: dict[str, Any], shards: dict[str, Any]
) -> Any:
    """QA and version a catalog, then pack the dataset version into shards."""
    rows = ingest_catalog(catalog=catalog, taxonomy=taxonomy, fingerprint=fingerprint)
    valid_images, qa_report = validate_images(rows, rules=rules)
    manifest = version_dataset(valid_images, qa_report)
    return build_shards(manifest, split=split, shards=shards, layout=LAYOUT)
