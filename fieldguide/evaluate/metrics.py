"""Evaluation of one model on a split: predictions, metrics, calibration, latency, the quality gate, the HTML report."""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from tqdm import tqdm

from fieldguide.data.images import IMAGE_FEATURES, image_stats
from fieldguide.data.loader import ShardDataset
from fieldguide.data.shards import ShardSet, View
from fieldguide.train.models import ModelBundle, eval_device, eval_transform


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
    """Run the model over a split of a view with the serving transform; keep probabilities, embeddings, features.

    On CUDA when present; the model is back on the CPU afterwards.
    """
    transform = eval_transform(bundle.meta.data_config)
    dataset = ShardDataset(shard_set, split, view, lambda img: (transform(img), image_stats(img)), with_keys=True)
    device = eval_device()
    model = bundle.model.eval().to(device)
    keys: list[str] = []
    labels: list[int] = []
    probs: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    stats: list[dict[str, float]] = []
    batch: list[tuple[torch.Tensor, int]] = []

    def flush() -> None:
        logits, pre = forward_with_embedding(model, torch.stack([b[0] for b in batch]).to(device))
        probs.append(logits.float().softmax(1).cpu().numpy())
        embeddings.append(pre.float().cpu().numpy())
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
    bundle.model.to("cpu")
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
