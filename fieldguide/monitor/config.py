"""Monitoring settings (configs/monitor.yaml): what servers record, and when a model is judged to drift.

Plain dataclasses with no heavy imports: every run config reads them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CaptureConfig:
    """What a server records and keeps (configs/monitor.yaml `capture`, passed to each server it starts)."""

    # Record answers at all (off: no prediction log, no photos kept, /feedback finds nothing; bench/monitor.py).
    enabled: bool = True
    # Prediction and feedback log files rotate at this size (bytes).
    log_max_bytes: int = 20_000_000
    # Rotated log files kept per server; older ones are deleted (the log's retention).
    log_backups: int = 20
    # Seconds an uploaded photo is held so that feedback can still flag it; then it is deleted unless sampled (0: none).
    feedback_hold_s: float = 600.0
    # Disk cap of the held photos (bytes); the oldest go first.
    hold_cap_bytes: int = 200_000_000
    # An answer whose top species probability is below this keeps its photo for review.
    low_confidence: float = 0.4
    # Share of the other answers whose photo is kept at random (the audit sample).
    audit_fraction: float = 0.02
    # Disk cap of the kept samples (bytes); the oldest go first.
    sample_cap_bytes: int = 500_000_000
    # Days a kept sample lives.
    retention_days: float = 30.0
    # Embedding components logged per model (each model's PCA is fitted on the release's evaluation split).
    components: int = 8


@dataclass
class Thresholds:
    """When a model is ok, to watch, or recommended for retraining (configs/monitor.yaml `thresholds`)."""

    # Fewer requests than this in the window: the model gets no verdict (too little to judge).
    min_requests: int = 30
    # KS p-value under which an image feature counts as drifted.
    feature_p: float = 0.001
    # Image features that must drift together to call it data drift.
    min_drifted_features: int = 2
    # KS p-value under which an embedding component counts as drifted.
    embedding_p: float = 0.01
    # Share of embedding components that must drift to call it embedding drift (Evidently's `ratio` method).
    embedding_share: float = 0.2
    # TVD permutation-test p-value under which the distribution of predicted classes has drifted.
    prediction_p: float = 0.01
    # Fall of the mean top-1 confidence (absolute) that counts as a drop, when KS also finds it significant.
    confidence_drop: float = 0.08
    # KS p-value for that change in confidence.
    confidence_p: float = 0.01
    # Answers with feedback needed before feedback accuracy is judged.
    min_feedback: int = 20
    # Feedback accuracy this far below the model's reference accuracy flags it.
    feedback_delta: float = 0.15
