"""Step: fan-in of the tuning trials; records all of them and passes the best parameters on."""

from typing import Annotated, Any

from zenml import log_metadata, step

from fieldguide.evaluate.plots import trials_plot
from fieldguide.train.tuning import TrialResult, TuningSummary
from steps.materializers import TuningSummaryMaterializer
from steps.tracking import log_bytes, log_metrics


@step(output_materializers={"tuning_summary": TuningSummaryMaterializer})
def select_best(
    trials: list[TrialResult],
) -> tuple[Annotated[TuningSummary, "tuning_summary"], Annotated[dict[str, Any], "best_params"]]:
    """Pick the trial with the best validation accuracy."""
    summary = TuningSummary.of(trials)
    for t in summary.trials:
        log_metrics({f"trial_{t.index}_val_acc": t.val_acc})
    log_bytes(trials_plot(summary.trials, summary.best_index), "tuning_trials.png")
    log_metadata(metadata={"best_trial": summary.best_index, "best_val_acc": summary.best.val_acc})
    print(f"best trial: tune_trial_{summary.best_index} val_acc={summary.best.val_acc:.4f} {summary.best.params}")
    return summary, dict(summary.best.params)
