"""Evaluation stage: test-split report and gate, Evidently reports, registration, two-stage release evaluation."""

from steps.evaluate.evaluate_model import evaluate_model
from steps.evaluate.evaluate_release import evaluate_release
from steps.evaluate.register_model import register_model
from steps.evaluate.report_drift import report_drift

__all__ = ["evaluate_model", "evaluate_release", "register_model", "report_drift"]
