"""Step: read a catalog's rows (CSV or image folder, local or s3://)."""

from typing import Annotated

from zenml import step

from fieldguide.data.catalog import CatalogSnapshot, snapshot
from steps.materializers import CatalogSnapshotMaterializer


@step(output_materializers=CatalogSnapshotMaterializer)
def ingest_catalog(
    catalog: str, taxonomy: str = "", fingerprint: str = ""
) -> Annotated[CatalogSnapshot, "catalog_rows"]:
    """Read the catalog rows and the taxonomy.

    Args:
        catalog: CSV, image folder, or s3:// URI.
        taxonomy: taxonomy YAML; empty for taxonomy.yaml beside the catalog.
        fingerprint: content fingerprint of the catalog and its files (part of the cache key only).
    """
    return snapshot(catalog, taxonomy)
