"""Evaluation of one model on a split: predictions, metrics, calibration, latency, the quality gate, the HTML report."""

from __future__ import annotations

import base64
import hashlib
import html
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from tqdm import tqdm

from fieldguide.loader import ShardDataset
from fieldguide.models import ModelBundle, eval_transform
from fieldguide.shards import ShardSet, View

IMAGE_FEATURES = ("brightness", "contrast", "sharpness", "mean_r", "mean_g", "mean_b", "width", "height", "aspect")


def image_stats(img: Image.Image) -> dict[str, float]:
    """Per-image features for drift monitoring: brightness, contrast, sharpness (Laplacian variance), colour, size."""
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    means = rgb.reshape(-1, 3).mean(0)
    return {
        "brightness": float(gray.mean()),
        "contrast": float(gray.std()),
        "sharpness": float(lap.var()) if lap.size else 0.0,
        "mean_r": float(means[0]),
        "mean_g": float(means[1]),
        "mean_b": float(means[2]),
        "width": float(img.width),
        "height": float(img.height),
        "aspect": img.width / max(img.height, 1),
    }


def weights_sha256(model: torch.nn.Module) -> str:
    """A content hash of a model's weights (tells a retrained model from an unchanged, cached one)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Predictions:
    """A model's outputs on a split, one row per image."""

    keys: list[str]
    labels: np.ndarray  # (N,) true label ids in the view
    probs: np.ndarray  # (N, C) softmax probabilities
    embeddings: np.ndarray  # (N, D) penultimate-layer features
    stats: list[dict[str, float]]  # image_stats per image


def forward_with_embedding(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the pre-logits embedding of a timm model in one pass."""
    pre = model.forward_head(model.forward_features(x), pre_logits=True)
    return model.get_classifier()(pre), pre


@torch.no_grad()
def predict(
    bundle: ModelBundle,
    shard_set: ShardSet,
    view: View,
    split: str,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> Predictions:
    """Run the model over a split of a view with the serving transform; keep probabilities, embeddings, features."""
    transform = eval_transform(bundle.meta.data_config)
    dataset = ShardDataset(shard_set, split, view, lambda img: (transform(img), image_stats(img)), with_keys=True)
    model = bundle.model.eval()
    keys: list[str] = []
    labels: list[int] = []
    probs: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    stats: list[dict[str, float]] = []
    batch: list[tuple[torch.Tensor, int]] = []

    def flush() -> None:
        logits, pre = forward_with_embedding(model, torch.stack([b[0] for b in batch]))
        probs.append(logits.float().softmax(1).numpy())
        embeddings.append(pre.float().numpy())
        labels.extend(b[1] for b in batch)
        batch.clear()

    bar = tqdm(desc=f"evaluate {bundle.meta.name} on {split}", unit="img", disable=not progress)
    for (x, feats), label, key in dataset:
        batch.append((x, label))
        keys.append(key)
        stats.append(feats)
        if len(batch) == batch_size:
            flush()
        bar.update()
    if batch:
        flush()
    bar.close()
    n_classes = len(view.labels)
    return Predictions(
        keys,
        np.asarray(labels, dtype=np.int64),
        np.concatenate(probs) if probs else np.zeros((0, n_classes), np.float32),
        np.concatenate(embeddings) if embeddings else np.zeros((0, 0), np.float32),
        stats,
    )


@torch.no_grad()
def measure_latency(model: torch.nn.Module, input_size: list[int], n: int = 30) -> dict[str, float]:
    """Per-image forward latency at batch size 1 on the CPU (median and p95, milliseconds)."""
    model = model.eval()
    x = torch.rand(1, *input_size)
    for _ in range(3):
        model(x)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"latency_ms_p50": statistics.median(times), "latency_ms_p95": times[int(0.95 * (len(times) - 1))]}


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of rows whose true label is among the k most probable classes."""
    if not len(labels):
        return 0.0
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error of the top-1 confidence and the reliability-diagram bins."""
    conf = probs.max(1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(1) == labels) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0, 1, bins + 1)
    ece, rows = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        count = int(inside.sum())
        if count:
            acc, mean_conf = float(correct[inside].mean()), float(conf[inside].mean())
            ece += count / len(conf) * abs(acc - mean_conf)
            rows.append({"lo": float(lo), "hi": float(hi), "confidence": mean_conf, "accuracy": acc, "count": count})
    return ece, rows


@dataclass
class Evaluation:
    """Everything measured about one model version on one split (the `evaluation` artifact)."""

    model_name: str
    dataset_version: str
    split: str
    classes: list[str]
    n: int
    metrics: dict[str, float]  # top1, top5 (≥ 5 classes), macro_f1, ece, latency_ms_p50/p95
    per_class: list[dict[str, Any]]  # class, precision, recall, f1, support
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    reliability: list[dict[str, float]]  # calibration bins
    confused_pairs: list[dict[str, Any]]  # most frequent (true, predicted) mistakes
    weights_sha256: str = ""
    mlflow_run_id: str = ""
    gate: dict[str, Any] = field(default_factory=dict)  # GateResult as a dict, filled by the gate


def evaluate_predictions(
    pred: Predictions, classes: list[str], *, model_name: str, dataset_version: str, split: str
) -> Evaluation:
    """Metrics of a set of predictions against their labels."""
    ids = list(range(len(classes)))
    labels, predicted = pred.labels, pred.probs.argmax(1) if len(pred.probs) else np.zeros(0, np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=ids, zero_division=0)
    ece, bins = calibration(labels, pred.probs)
    matrix = confusion_matrix(labels, predicted, labels=ids) if len(labels) else np.zeros((len(ids), len(ids)), int)
    metrics = {
        "top1": top_k_accuracy(labels, pred.probs, 1),
        "macro_f1": float(np.mean(f1)) if len(f1) else 0.0,
        "ece": ece,
    }
    if len(classes) >= 5:
        metrics["top5"] = top_k_accuracy(labels, pred.probs, 5)
    pairs = [
        {"true": classes[i], "predicted": classes[j], "count": int(matrix[i, j])}
        for i in ids
        for j in ids
        if i != j and matrix[i, j]
    ]
    pairs.sort(key=lambda p: -p["count"])
    per_class = [
        {
            "class": classes[i],
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in ids
    ]
    return Evaluation(
        model_name=model_name,
        dataset_version=dataset_version,
        split=split,
        classes=list(classes),
        n=len(labels),
        metrics=metrics,
        per_class=per_class,
        confusion=matrix.tolist(),
        reliability=bins,
        confused_pairs=pairs[:10],
    )


@dataclass
class GateConfig:
    """The quality gate a model version must pass to be eligible for approval."""

    # Minimum top-1 accuracy on the test split.
    min_top1: float = 0.0
    # Minimum macro-F1 on the test split (catches a model that ignores rare classes).
    min_macro_f1: float = 0.0
    # Maximum expected calibration error (served probabilities must mean something).
    max_ece: float = 1.0
    # Allowed top-1 drop against the production version of the same model on the same split.
    max_drop: float = 0.02


@dataclass
class GateResult:
    """Outcome of the quality gate, recorded with the model version."""

    passed: bool
    reasons: list[str]
    production_version: str = ""
    production_top1: float | None = None


def judge(
    ev: Evaluation, cfg: GateConfig, production: Evaluation | None = None, production_version: str = ""
) -> GateResult:
    """Apply the gate: configured minima, then "not worse than production by more than max_drop"."""
    m, reasons = ev.metrics, []
    if m["top1"] < cfg.min_top1:
        reasons.append(f"top1 {m['top1']:.3f} < min_top1 {cfg.min_top1:.3f}")
    if m["macro_f1"] < cfg.min_macro_f1:
        reasons.append(f"macro_f1 {m['macro_f1']:.3f} < min_macro_f1 {cfg.min_macro_f1:.3f}")
    if m["ece"] > cfg.max_ece:
        reasons.append(f"ece {m['ece']:.3f} > max_ece {cfg.max_ece:.3f}")
    prod_top1 = None
    if production is not None:
        prod_top1 = production.metrics["top1"]
        if m["top1"] < prod_top1 - cfg.max_drop:
            reasons.append(
                f"top1 {m['top1']:.3f} is more than {cfg.max_drop:.3f} below production {production_version} "
                f"({prod_top1:.3f}) on the same test split"
            )
    return GateResult(not reasons, reasons, production_version, prod_top1)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def report_html(ev: Evaluation, images: dict[str, str]) -> str:
    """The evaluation report as one HTML page; `images` maps captions to base64 PNGs."""
    gate = ev.gate
    verdict = ""
    if gate:
        reasons = "<br>".join(map(html.escape, gate.get("reasons", [])))
        verdict = (
            "<p class='pass'>Quality gate: passed</p>"
            if gate["passed"]
            else f"<p class='fail'>Quality gate: FAILED<br>{reasons}</p>"
        )
    plots = "".join(
        f"<figure><img src='data:image/png;base64,{data}'><figcaption>{html.escape(cap)}</figcaption></figure>"
        for cap, data in images.items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(ev.model_name)} evaluation</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}.pass{{color:#070}}.fail{{color:#b00}}
figure{{display:inline-block;margin:0 1em}}img{{max-width:520px}}</style></head><body>
<h1>{html.escape(ev.model_name)}: evaluation on the {html.escape(ev.split)} split</h1>
<p>dataset version {html.escape(ev.dataset_version)} · {ev.n} images · {len(ev.classes)} classes ·
weights sha256 {html.escape(ev.weights_sha256[:16])}</p>{verdict}
<h2>Metrics</h2>{_table(["metric", "value"], [[k, v] for k, v in ev.metrics.items()])}
<h2>Per class</h2>{_table(["class", "precision", "recall", "f1", "support"], [list(r.values()) for r in ev.per_class])}
<h2>Most confused pairs</h2>{_table(["true", "predicted", "count"], [list(p.values()) for p in ev.confused_pairs])}
<h2>Plots</h2>{plots}</body></html>"""


def feature_tables(
    reference: Predictions, current: Predictions, classes: list[str], components: int = 4
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-image feature tables for Evidently: image features, embedding components, target, class probabilities.

    One probability column per class, named by the class, as Evidently's probabilistic classification expects.

    The PCA is fitted on the reference (train) embeddings so both tables share one projection.
    """
    from sklearn.decomposition import PCA

    n = min(components, reference.embeddings.shape[1], max(len(reference.keys) - 1, 1))
    pca = PCA(n_components=n, random_state=0).fit(reference.embeddings)

    def table(pred: Predictions) -> pd.DataFrame:
        df = pd.DataFrame(pred.stats, columns=list(IMAGE_FEATURES))
        if len(pred.keys):
            for i, col in enumerate(pca.transform(pred.embeddings).T):
                df[f"embedding_{i}"] = col
        df["target"] = [classes[i] for i in pred.labels]
        for i, name in enumerate(classes):
            df[name] = pred.probs[:, i] if len(pred.keys) else []
        return df

    return table(reference), table(current)


def render_report(ev: Evaluation) -> tuple[str, dict[str, bytes]]:
    """The HTML report and its plots (confusion matrix, reliability diagram) as PNG files by name."""
    from fieldguide.plots import confusion_plot, reliability_plot

    pngs = {
        "confusion_matrix.png": confusion_plot(ev.confusion, ev.classes, f"{ev.model_name}: confusion matrix"),
        "reliability.png": reliability_plot(ev.reliability, ev.metrics["ece"], f"{ev.model_name}: reliability"),
    }
    captions = {"confusion_matrix.png": "Confusion matrix", "reliability.png": "Reliability diagram"}
    images = {captions[name]: base64.b64encode(data).decode() for name, data in pngs.items()}
    return report_html(ev, images), pngs
