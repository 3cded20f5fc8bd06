"""Step: apply the QA rules to every catalog row."""

from typing import Annotated, Any

from zenml import step

from fieldguide.config import QARules, from_dict
from fieldguide.data.catalog import CatalogSnapshot
from fieldguide.data.qa import QAResult, ValidImages, run_qa
from steps.materializers import QAResultMaterializer, ValidImagesMaterializer


@step(output_materializers={"valid_images": ValidImagesMaterializer, "qa_report": QAResultMaterializer})
def validate_images(
    catalog_rows: CatalogSnapshot, rules: dict[str, Any]
) -> tuple[Annotated[ValidImages, "valid_images"], Annotated[QAResult, "qa_report"]]:
    """Decode every image under the QA rules; rejected rows are reported with reason codes, never dropped silently."""
    cfg = from_dict(QARules, rules, "rules")
    result = run_qa(catalog_rows.rows, cfg, catalog_rows.taxonomy, source=catalog_rows.source)
    return ValidImages(result.source, cfg.version, result.valid), result
