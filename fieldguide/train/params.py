"""Training parameters (plain data, no torch: run configs and the registry read them without loading models)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainParams:
    """Hyperparameters of one training run (tuning samples some of them)."""

    # timm architecture name; small models keep CPU training in minutes.
    arch: str = "mobilenetv3_small_050"
    # Training and evaluation crop size in pixels.
    img_size: int = 64
    # Maximum epochs; early stopping may end sooner.
    epochs: int = 10
    # Images per optimisation step.
    batch_size: int = 64
    # Peak learning rate after warm-up.
    lr: float = 3e-3
    # Decoupled weight decay (AdamW-style).
    weight_decay: float = 0.01
    # timm optimizer name (create_optimizer_v2).
    opt: str = "adamw"
    # timm scheduler name (create_scheduler_v2), stepped per epoch.
    sched: str = "cosine"
    # Linear warm-up epochs at the start of the schedule.
    warmup_epochs: int = 1
    # Label smoothing of the cross-entropy loss.
    label_smoothing: float = 0.1
    # Dropout before the classifier.
    drop_rate: float = 0.1
    # Augmentation strength: lower bound of RandomResizedCrop's area scale.
    aug_scale_min: float = 0.5
    # Augmentation strength: colour jitter factor.
    color_jitter: float = 0.2
    # Gradient-norm clipping threshold (0 disables).
    grad_clip: float = 1.0
    # Early stopping: epochs without validation-accuracy improvement before stopping (0 disables).
    patience: int = 4
    # DataLoader worker processes for decoding and augmentation.
    workers: int = 1
    # Seed for weights init and data order.
    seed: int = 0
    # Local file with pretrained weights for `arch` (nothing is downloaded); empty trains from scratch.
    pretrained_file: str = ""
    # Mixed precision (bf16 autocast, fp16 with loss scaling where bf16 is missing) when training on CUDA.
    amp: bool = True
    # CPU threads for torch (0: all cores).
    threads: int = 0
    # GPUs to train on: above 1, one DistributedDataParallel process per GPU (fieldguide.train.distributed).
    gpus: int = 0
