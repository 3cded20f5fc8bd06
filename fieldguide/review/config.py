"""The retrain policy's settings (configs/retrain.yaml); no heavy imports: every run config reads them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RetrainConfig:
    """Parameters of `--pipeline retrain` (configs/retrain.yaml)."""

    # Committed labels that must concern a model (since its newest version) before it is retrained.
    min_labels: int = 20
    # Hours after a model's newest version before it is retrained again (a burst of labels retrains once).
    cooldown_h: float = 24.0
    # Retrain only a model the monitor flagged (verdict retrain_recommended, or feedback accuracy below its
    # reference); false: enough labels alone retrain it.
    require_signal: bool = True
