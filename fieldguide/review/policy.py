"""When a model is retrained from reviewed labels (configs/retrain.yaml): a signal, enough labels, a cooldown."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fieldguide.fingerprint import RETRAIN_VERDICT
from fieldguide.keys import ModelKey
from fieldguide.review.config import RetrainConfig
from fieldguide.review.queue import Label


@dataclass
class Decision:
    """Whether one model is retrained, and why (printed by the run)."""

    # The model's name.
    model: str
    # Whether this run trains it.
    retrain: bool
    # Why (labels counted, the monitor's signal, the cooldown).
    reasons: list[str] = field(default_factory=list)
    # Committed labels that concern the model since its newest version.
    labels: int = 0

    def line(self) -> str:
        """`model: retraining — reasons` or `model: skipped — reasons`."""
        return f"{self.model}: {'retraining' if self.retrain else 'skipped'} — {'; '.join(self.reasons)}"


def concerns(key: ModelKey, label: Label) -> bool:
    """A label concerns a child when its photo belongs to the child's group, the router when it changed groups."""
    if key.kind == "router":
        return label.rerouted
    return key.kind == "child" and label.group == key.group


def signal(monitoring: dict[str, Any], min_feedback: int = 20) -> str:
    """Why the monitor asks for a retrain ('' when it does not).

    Its verdict, or feedback accuracy below the model's reference accuracy on at least `min_feedback` answers (the
    monitor's own threshold: a handful of corrections, which users send mostly for wrong answers, is no signal).
    """
    if monitoring.get("verdict") == RETRAIN_VERDICT:
        return f"monitor verdict {RETRAIN_VERDICT} ({monitoring.get('window', 'last window')})"
    fb = monitoring.get("feedback") or {}
    if fb and fb.get("answers", 0) >= min_feedback and fb.get("accuracy", 1.0) < fb.get("reference", 0.0):
        return f"feedback accuracy {fb['accuracy']:.2f} below the reference {fb['reference']:.2f}"
    return ""


def decide(
    key: ModelKey,
    committed: list[Label],
    monitoring: dict[str, Any],
    newest: datetime | None,
    cfg: RetrainConfig,
    now: datetime,
    min_feedback: int = 20,
) -> Decision:
    """Decide one model.

    Args:
        key: the model.
        committed: every committed label.
        monitoring: the `monitoring` metadata of its production version ({} when none).
        newest: when its newest version was created (None: it has none).
        cfg: the policy.
        now: the time of the decision.
        min_feedback: answers with feedback before feedback accuracy counts (the monitor's thresholds).
    """
    since = [lab for lab in committed if concerns(key, lab)]
    if newest is not None:
        since = [lab for lab in since if datetime.fromisoformat(lab.committed_at) > newest]
    n = len(since)
    counted = f"{n} new label{'s' * (n != 1)} concern it"
    if key.kind == "router":
        counted = f"{n} new label{'s' * (n != 1)} moved a photo to another group"
    reasons, ok = [counted], n >= cfg.min_labels and n > 0
    if not ok:
        reasons[0] += f" (needs {max(cfg.min_labels, 1)})"
    why = signal(monitoring, min_feedback)
    if cfg.require_signal and not why:
        reasons.append("no monitoring signal (verdict retrain_recommended or fallen feedback accuracy)")
        ok = False
    elif why:
        reasons.append(why)
    if newest is not None:
        waited = (now - newest).total_seconds() / 3600
        if waited < cfg.cooldown_h:
            reasons.append(f"cooling down: newest version {waited:.1f} h old (< {cfg.cooldown_h:g} h)")
            ok = False
    return Decision(key.name, ok, reasons, n)
