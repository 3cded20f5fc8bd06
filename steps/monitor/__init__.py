"""Monitor stage: read a window of production traffic, judge each model against the release's reference, record."""

from steps.monitor.assess_model import assess_model
from steps.monitor.collect_traffic import collect_traffic
from steps.monitor.record_verdicts import record_verdicts

__all__ = ["assess_model", "collect_traffic", "record_verdicts"]
