"""DDP training on CPU: two gloo processes against one process on the same demo subset."""

import pytest

from fieldguide.data.shards import parent_view
from fieldguide.train.fit import TrainParams
from fieldguide.train.job import train_on_view

# Two processes see the same images per step as one process with twice the batch; small data and seeds differ
# in which images share a step, so the accuracies agree within this tolerance rather than exactly.
TOLERANCE = 0.15


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    from bench.loader import build

    return build(tmp_path_factory.mktemp("ddp"), 30)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(shard_set):
    from fieldguide.train.distributed import train_distributed

    view = parent_view(shard_set)
    base = {"arch": "mobilenetv3_small_050", "img_size": 48, "epochs": 12, "lr": 0.005, "workers": 0, "patience": 0}
    single, single_fit = train_on_view(shard_set, view, TrainParams(**base, batch_size=32), "router", progress=False)
    ddp, ddp_fit = train_distributed(
        shard_set, view, TrainParams(**base, batch_size=16), "router", world_size=2, backend="gloo"
    )
    assert ddp.meta.classes == single.meta.classes and len(ddp_fit.history) == len(single_fit.history)
    # Each rank read half of the train split per epoch.
    assert ddp_fit.history[0]["images_per_s"] > 0
    assert single_fit.best_val_acc > 0.4  # learnt something (4 groups: chance 0.25)
    assert abs(ddp_fit.best_val_acc - single_fit.best_val_acc) <= TOLERANCE, (
        ddp_fit.best_val_acc,
        single_fit.best_val_acc,
    )
