"""Step: turn QA's valid images into a versioned manifest."""

from typing import Annotated

from zenml import log_metadata, step

from fieldguide.data.manifest import Manifest
from fieldguide.data.qa import QAResult, ValidImages
from steps.materializers import ManifestMaterializer


@step(output_materializers=ManifestMaterializer)
def version_dataset(valid_images: ValidImages, qa_report: QAResult) -> Annotated[Manifest, "manifest"]:
    """Write the manifest; its dataset version id becomes artifact and run metadata."""
    manifest = Manifest.build(
        valid_images.images, valid_images.rules_version, valid_images.source, len(qa_report.rejected)
    )
    log_metadata(metadata={"dataset_version": manifest.dataset_version, "images": manifest.counts["images"]})
    return manifest
