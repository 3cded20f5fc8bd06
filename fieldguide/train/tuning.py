"""Hyperparameter search: a search space, trials sampled up front for a seed, and trial results."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from fieldguide.train.params import TrainParams


@dataclass
class SearchSpace:
    """Ranges the trials sample from."""

    # Learning-rate bounds, sampled log-uniformly.
    lr: list[float] = field(default_factory=lambda: [1e-3, 1e-2])
    # Weight-decay bounds, sampled log-uniformly.
    weight_decay: list[float] = field(default_factory=lambda: [1e-4, 5e-2])
    # Label-smoothing bounds, sampled uniformly.
    label_smoothing: list[float] = field(default_factory=lambda: [0.0, 0.2])
    # Augmentation strength (RandomResizedCrop minimum scale) bounds, sampled uniformly.
    aug_scale_min: list[float] = field(default_factory=lambda: [0.3, 0.8])
    # timm architectures to choose from.
    arch: list[str] = field(default_factory=lambda: ["mobilenetv3_small_050"])


@dataclass
class TuneConfig:
    """How many small trials, and how small."""

    # Number of trials (each one its own pipeline step, fanned out).
    trials: int = 4
    # Seed of the trial sampler: same seed, same trials.
    seed: int = 0
    # Epochs per trial.
    epochs: int = 2
    # Fraction of the train split each trial trains on (by content hash).
    train_subset: float = 0.5
    # Fraction of the val split each trial is scored on.
    val_subset: float = 1.0
    # The search space.
    space: SearchSpace = field(default_factory=SearchSpace)


def sample_trials(cfg: TuneConfig) -> list[dict[str, Any]]:
    """Sample `cfg.trials` parameter sets up front (deterministic for `cfg.seed`)."""
    rng = random.Random(cfg.seed)
    s = cfg.space

    def log_uniform(lo: float, hi: float) -> float:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    return [
        {
            "lr": round(log_uniform(*s.lr), 6),
            "weight_decay": round(log_uniform(*s.weight_decay), 6),
            "label_smoothing": round(rng.uniform(*s.label_smoothing), 4),
            "aug_scale_min": round(rng.uniform(*s.aug_scale_min), 3),
            "arch": rng.choice(s.arch),
        }
        for _ in range(cfg.trials)
    ]


def apply_params(base: TrainParams, overrides: dict[str, Any]) -> TrainParams:
    """`base` with tuned values replaced."""
    return TrainParams(**{**asdict(base), **overrides})


@dataclass
class TrialResult:
    """One trial's parameters and its validation score."""

    index: int
    params: dict[str, Any]
    val_acc: float
    val_loss: float
    images_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TuningSummary:
    """Every trial, and which one won."""

    trials: list[TrialResult]
    best_index: int

    @property
    def best(self) -> TrialResult:
        """The winning trial."""
        return next(t for t in self.trials if t.index == self.best_index)

    @classmethod
    def of(cls, trials: list[TrialResult]) -> TuningSummary:
        """Pick the best trial: highest val accuracy, then lowest val loss, then lowest index."""
        best = min(trials, key=lambda t: (-t.val_acc, t.val_loss, t.index))
        return cls(sorted(trials, key=lambda t: t.index), best.index)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuningSummary:
        """Rebuild from its JSON form (dataclasses.asdict)."""
        return cls([TrialResult(**t) for t in data["trials"]], data["best_index"])
