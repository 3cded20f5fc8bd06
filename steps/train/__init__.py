"""Training stage: tuning trials (fan-out), selection (fan-in), full training."""

from steps.train.select_best import select_best
from steps.train.train_model import train_model
from steps.train.tune_trial import tune_trial

__all__ = ["select_best", "train_model", "tune_trial"]
