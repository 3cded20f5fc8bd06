"""ZenML materializers for fieldguide's artifacts: JSON (never pickle), with visualizations and metadata."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from fieldguide.data.catalog import CatalogSnapshot
from fieldguide.data.manifest import Manifest
from fieldguide.data.qa import QAResult, ValidImages
from fieldguide.data.qa_report import qa_html
from fieldguide.data.shards import SPLITS, ShardSet
from fieldguide.evaluate.metrics import Evaluation
from fieldguide.evaluate.plots import training_curves, trials_plot
from fieldguide.evaluate.report import render_report
from fieldguide.evaluate.two_stage import TwoStageTable
from fieldguide.serve.release import Release
from fieldguide.serve.staging import StagingReport
from fieldguide.train.job import TrainHistory
from fieldguide.train.models import META, WEIGHTS, ModelBundle, load_bundle, save_bundle
from fieldguide.train.tuning import TrialResult, TuningSummary


class JsonMaterializer(BaseMaterializer):
    """Stores a dataclass as one JSON file (its to_dict/from_dict when it has them); content-hashed for the cache."""

    SKIP_REGISTRATION: ClassVar[bool] = True
    FILENAME: ClassVar[str] = "data.json"

    def encode(self, data: Any) -> dict[str, Any]:
        """Object → JSON-able dict."""
        return data.to_dict() if hasattr(data, "to_dict") else dataclasses.asdict(data)

    def decode(self, data_type: type[Any], payload: dict[str, Any]) -> Any:
        """JSON-able dict → object (nested dataclasses need a from_dict)."""
        return data_type.from_dict(payload) if hasattr(data_type, "from_dict") else data_type(**payload)

    def load(self, data_type: type[Any]) -> Any:
        """Read the JSON file from the artifact store."""
        with self.artifact_store.open(os.path.join(self.uri, self.FILENAME), "r") as fh:
            return self.decode(data_type, json.load(fh))

    def save(self, data: Any) -> None:
        """Write the JSON file into the artifact store."""
        with self.artifact_store.open(os.path.join(self.uri, self.FILENAME), "w") as fh:
            json.dump(self.encode(data), fh, indent=1)

    def compute_content_hash(self, data: Any) -> str | None:
        """Hash of the JSON form, so equal content hits the cache even from another run."""
        return hashlib.sha256(json.dumps(self.encode(data), sort_keys=True).encode()).hexdigest()

    def _write_text(self, name: str, text: str) -> str:
        uri = os.path.join(self.uri, name)
        with self.artifact_store.open(uri, "w") as fh:
            fh.write(text)
        return uri

    def _write_bytes(self, name: str, data: bytes) -> str:
        uri = os.path.join(self.uri, name)
        with self.artifact_store.open(uri, "wb") as fh:
            fh.write(data)
        return uri


class CatalogSnapshotMaterializer(JsonMaterializer):
    """catalog_rows: the ingested catalog rows."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (CatalogSnapshot,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA
    FILENAME: ClassVar[str] = "catalog.json"

    def extract_metadata(self, data: CatalogSnapshot) -> dict[str, Any]:
        """Row count and source."""
        return {"rows": len(data.rows), "source": data.source, "taxonomy": data.taxonomy_source or "(none)"}


class ValidImagesMaterializer(JsonMaterializer):
    """valid_images: what passed QA."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (ValidImages,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA
    FILENAME: ClassVar[str] = "valid_images.json"

    def extract_metadata(self, data: ValidImages) -> dict[str, Any]:
        """Image count."""
        return {"images": len(data.images), "rules_version": data.rules_version}


class QAResultMaterializer(JsonMaterializer):
    """qa_report: rejections with reasons, and an HTML report with thumbnails."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (QAResult,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS
    FILENAME: ClassVar[str] = "qa_report.json"

    def save_visualizations(self, data: QAResult) -> dict[str, VisualizationType]:
        """The HTML QA report (reason counts, thumbnails of rejected rows)."""
        from fieldguide.data.manifest import dataset_version_id

        html = qa_html(data, dataset_version_id(data.valid, data.rules.version))
        return {self._write_text("qa_report.html", html): VisualizationType.HTML}

    def extract_metadata(self, data: QAResult) -> dict[str, Any]:
        """Counts per reason."""
        return {
            "valid": len(data.valid),
            "rejected": len(data.rejected),
            "reasons": data.reason_counts(),
            "warnings": len(data.warnings),
        }


class ManifestMaterializer(JsonMaterializer):
    """manifest: the dataset version (manifest.json in the artifact store)."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (Manifest,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA
    FILENAME: ClassVar[str] = "manifest.json"

    def load(self, data_type: type[Any]) -> Manifest:
        """Parse manifest.json."""
        with self.artifact_store.open(os.path.join(self.uri, self.FILENAME), "r") as fh:
            return Manifest.from_json(fh.read())

    def save(self, data: Manifest) -> None:
        """Write manifest.json."""
        self._write_text(self.FILENAME, data.to_json())

    def encode(self, data: Manifest) -> dict[str, Any]:
        """JSON form (for the content hash)."""
        return json.loads(data.to_json()) | {"created": ""}

    def extract_metadata(self, data: Manifest) -> dict[str, Any]:
        """The dataset version id and counts."""
        return {
            "dataset_version": data.dataset_version,
            "images": data.counts["images"],
            "species": data.counts["species"],
            "groups": data.counts["groups"],
            "manifest_uri": os.path.join(self.uri, self.FILENAME),
        }


class ShardSetMaterializer(JsonMaterializer):
    """shard_set: the tar shards themselves live in this artifact's folder, next to shardset.json."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (ShardSet,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA
    FILENAME: ClassVar[str] = "shardset.json"

    def save(self, data: ShardSet) -> None:
        """Copy shards into the artifact folder unless the step already wrote them there."""
        if os.path.normpath(data.location) != os.path.normpath(self.uri):
            for name in [n for s in SPLITS for n in data.shards[s]] + ["classes.json"]:
                fileio.copy(os.path.join(data.location, name), os.path.join(self.uri, name), overwrite=True)
        super().save(data)

    def load(self, data_type: type[Any]) -> ShardSet:
        """The shard set, located at this artifact's folder."""
        shard_set = super().load(data_type)
        shard_set.location = self.uri
        return shard_set

    def encode(self, data: ShardSet) -> dict[str, Any]:
        """JSON form without the (run-specific) location."""
        return data.to_dict() | {"location": ""}

    def save_visualizations(self, data: ShardSet) -> dict[str, VisualizationType]:
        """Class histogram per split (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        species = data.classes.species
        fig, ax = plt.subplots(figsize=(max(6, len(species) * 0.35), 4))
        width = 0.27
        for k, split in enumerate(SPLITS):
            ax.bar(
                [i + (k - 1) * width for i in range(len(species))],
                [data.counts[split].get(s, 0) for s in species],
                width,
                label=f"{split} ({data.total(split)})",
            )
        ax.set_xticks(range(len(species)), species, rotation=75, ha="right", fontsize=7)
        ax.set_ylabel("images")
        ax.set_title(f"{data.dataset_version}: images per species and split")
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return {self._write_bytes("class_histogram.png", buf.getvalue()): VisualizationType.IMAGE}

    def extract_metadata(self, data: ShardSet) -> dict[str, Any]:
        """Counts per split and the dataset version id."""
        meta: dict[str, Any] = {
            "dataset_version": data.dataset_version,
            "shards": sum(len(v) for v in data.shards.values()),
        }
        meta.update({f"{s}_images": data.total(s) for s in SPLITS})
        if data.skipped:
            meta["skipped"] = len(data.skipped)
        return meta


class TrialResultMaterializer(JsonMaterializer):
    """trial: one tuning trial's parameters and score."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (TrialResult,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA
    FILENAME: ClassVar[str] = "trial.json"

    def extract_metadata(self, data: TrialResult) -> dict[str, Any]:
        """Score and parameters."""
        return {"val_acc": data.val_acc, "val_loss": data.val_loss, **{f"param_{k}": v for k, v in data.params.items()}}


class TuningSummaryMaterializer(JsonMaterializer):
    """tuning_summary: every trial as a table and a plot."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (TuningSummary,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS
    FILENAME: ClassVar[str] = "tuning.json"

    def save_visualizations(self, data: TuningSummary) -> dict[str, VisualizationType]:
        """Trials table (HTML) and val accuracy against learning rate (PNG)."""
        import html

        keys = sorted({k for t in data.trials for k in t.params})
        rows = "".join(
            f"<tr style='{'font-weight:bold;background:#e8f5e9' if t.index == data.best_index else ''}'>"
            f"<td>tune_trial_{t.index}</td><td>{t.val_acc:.4f}</td><td>{t.val_loss:.4f}</td>"
            + "".join(f"<td>{html.escape(str(t.params[k]))}</td>" for k in keys)
            + "</tr>"
            for t in data.trials
        )
        table = (
            "<html><body style='font-family:sans-serif'><h3>Tuning trials (best in bold)</h3><table border=1 "
            "cellpadding=4 style='border-collapse:collapse'><tr><th>step</th><th>val acc</th><th>val loss</th>"
            + "".join(f"<th>{k}</th>" for k in keys)
            + f"</tr>{rows}</table></body></html>"
        )
        return {
            self._write_text("trials.html", table): VisualizationType.HTML,
            self._write_bytes("trials.png", trials_plot(data.trials, data.best_index)): VisualizationType.IMAGE,
        }

    def extract_metadata(self, data: TuningSummary) -> dict[str, Any]:
        """The winner."""
        return {"trials": len(data.trials), "best_trial": data.best_index, "best_val_acc": data.best.val_acc}


class TrainHistoryMaterializer(JsonMaterializer):
    """training_history: per-epoch metrics, shown as curves."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (TrainHistory,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS
    FILENAME: ClassVar[str] = "history.json"

    def save_visualizations(self, data: TrainHistory) -> dict[str, VisualizationType]:
        """Loss and accuracy curves."""
        png = training_curves(data.history, f"{data.model_name}: training curves")
        return {self._write_bytes("curves.png", png): VisualizationType.IMAGE}

    def extract_metadata(self, data: TrainHistory) -> dict[str, Any]:
        """Epochs and best epoch."""
        return {"epochs": len(data.history), "best_epoch": data.best_epoch}


class ModelBundleMaterializer(BaseMaterializer):
    """model: safetensors weights + JSON metadata (loads without pickle)."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (ModelBundle,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data: ModelBundle) -> None:
        """Export locally, then copy both files into the artifact store."""
        with self.get_temporary_directory(delete_at_exit=True) as tmp:
            save_bundle(data, Path(tmp))
            for name in (WEIGHTS, META):
                fileio.copy(os.path.join(tmp, name), os.path.join(self.uri, name), overwrite=True)

    def load(self, data_type: type[Any]) -> ModelBundle:
        """Copy both files to a local folder and rebuild the model."""
        with self.get_temporary_directory(delete_at_exit=True) as tmp:
            for name in (WEIGHTS, META):
                fileio.copy(os.path.join(self.uri, name), os.path.join(tmp, name), overwrite=True)
            return load_bundle(Path(tmp))

    def extract_metadata(self, data: ModelBundle) -> dict[str, Any]:
        """Architecture, classes and dataset version."""
        return {
            "arch": data.meta.arch,
            "num_classes": data.meta.num_classes,
            "dataset_version": data.meta.dataset_version,
            "classes": ", ".join(data.meta.classes),
            **data.meta.metrics,
        }


class EvaluationMaterializer(JsonMaterializer):
    """evaluation: metrics, per-class results and gate verdict; the HTML report and plots as visualizations."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (Evaluation,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS
    FILENAME: ClassVar[str] = "evaluation.json"

    def save_visualizations(self, data: Evaluation) -> dict[str, VisualizationType]:
        """The report page, then the confusion matrix and the reliability diagram."""
        page, pngs = render_report(data)
        out = {self._write_text("report.html", page): VisualizationType.HTML}
        out.update({self._write_bytes(name, png): VisualizationType.IMAGE for name, png in pngs.items()})
        return out

    def extract_metadata(self, data: Evaluation) -> dict[str, Any]:
        """Headline metrics and the gate verdict."""
        return {**data.metrics, "test_images": data.n, "gate_passed": bool(data.gate.get("passed"))}


class TwoStageTableMaterializer(JsonMaterializer):
    """two_stage_evaluation: the release's two-stage table, shown as HTML."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (TwoStageTable,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS
    FILENAME: ClassVar[str] = "two_stage.json"

    def save_visualizations(self, data: TwoStageTable) -> dict[str, VisualizationType]:
        """The table as HTML."""
        import html

        rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{value:.4f}</td></tr>" for name, value in data.rows())
        versions = ", ".join(f"{k} {v}" for k, v in data.versions.items())
        page = (
            "<html><body style='font-family:sans-serif'><h3>Two-stage evaluation on the test split "
            f"({data.n} images)</h3><p>{html.escape(versions)}</p><table border=1 cellpadding=4 "
            f"style='border-collapse:collapse'>{rows}</table></body></html>"
        )
        return {self._write_text("two_stage.html", page): VisualizationType.HTML}

    def extract_metadata(self, data: TwoStageTable) -> dict[str, Any]:
        """Every measure."""
        return {name: value for name, value in data.rows()}


class ReleaseMaterializer(JsonMaterializer):
    """release: the release record (ids, model versions, two-stage evaluation, serving config)."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (Release,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA
    FILENAME: ClassVar[str] = "release.json"

    def extract_metadata(self, data: Release) -> dict[str, Any]:
        """Id and versions."""
        return {"release": data.id, **data.versions}


class StagingReportMaterializer(JsonMaterializer):
    """staging_report: every staging check, shown as a table."""

    ASSOCIATED_TYPES: ClassVar[tuple[type, ...]] = (StagingReport,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS
    FILENAME: ClassVar[str] = "staging.json"

    def save_visualizations(self, data: StagingReport) -> dict[str, VisualizationType]:
        """The checks as an HTML table."""
        import html

        rows = "".join(
            f"<tr style='color:{'#070' if c.passed else '#b00'}'><td>{html.escape(c.name)}</td>"
            f"<td>{'ok' if c.passed else 'FAIL'}</td><td>{html.escape(c.detail)}</td></tr>"
            for c in data.checks
        )
        page = (
            f"<html><body style='font-family:sans-serif'><h3>Staging tests of {html.escape(data.release)}: "
            f"{'passed' if data.passed else 'FAILED'}</h3><table border=1 cellpadding=4 "
            f"style='border-collapse:collapse'>{rows}</table></body></html>"
        )
        return {self._write_text("staging.html", page): VisualizationType.HTML}

    def extract_metadata(self, data: StagingReport) -> dict[str, Any]:
        """The verdict."""
        return {"passed": data.passed, "failed_checks": ", ".join(c.name for c in data.checks if not c.passed)}
