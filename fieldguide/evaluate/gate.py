"""The quality gate: minima a model version must reach, and no drop against production on the same split."""

from __future__ import annotations

from dataclasses import dataclass

from fieldguide.evaluate.metrics import Evaluation


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
