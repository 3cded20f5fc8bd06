"""Training loop on timm's optimizer/scheduler factories, with atomic per-epoch checkpoints and resume."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import dispatch_clip_grad
from torch.utils.data import DataLoader
from tqdm import tqdm

from fieldguide.fingerprint import digest
from fieldguide.train.params import TrainParams


@dataclass
class FitResult:
    """What `fit` produced."""

    history: list[dict[str, float]]
    best_epoch: int
    best_val_acc: float
    resumed_from: int | None = None


def seed_everything(seed: int) -> None:
    """Seed every RNG training draws from: python's (timm's crop/flip), numpy's and torch's (weights, jitter).

    DataLoader workers derive their seeds from torch's RNG, so they follow; shard order has its own seeded RNG.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _autocast(device: torch.device, amp: bool) -> tuple[Any, torch.amp.GradScaler | None]:
    if device.type != "cuda" or not amp:
        return contextlib.nullcontext, None
    if torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None
    return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")


Location = Path | str  # a local path, or a URL of a remote artifact store (s3://…)


def _remote(path: Location) -> bool:
    """A URL of a remote filesystem (s3://…), not a local path."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def save_checkpoint(path: Location, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a crash leaves the previous one intact.

    Locally a temporary file renamed over the old one; remotely one whole-object upload (an S3 object is replaced
    only once its upload completes).
    """
    if _remote(path):
        import fsspec

        buffer = io.BytesIO()
        torch.save(state, buffer)
        with fsspec.open(str(path), "wb") as fh:
            fh.write(buffer.getvalue())
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def checkpoint_file(
    root: Location, name: str, dataset_version: str, params: TrainParams, init: dict[str, str] | None = None
) -> Location:
    """Deterministic checkpoint path: same model, data, parameters and start → same file, so a rerun resumes."""
    key = digest([name, dataset_version, asdict(params)] + ([init] if init else []))
    if _remote(root):
        return f"{str(root).rstrip('/')}/{name}-{key[:16]}/last.pt"
    return Path(root) / f"{name}-{key[:16]}" / "last.pt"


def load_checkpoint(path: Location) -> dict[str, Any] | None:
    """Load a checkpoint (local or remote) without unpickling arbitrary objects (weights_only); None if absent."""
    if _remote(path):
        import fsspec

        fs, bare = fsspec.core.url_to_fs(str(path))
        if not fs.exists(bare):
            return None
        with fs.open(bare, "rb") as fh:
            return torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)
    if not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def remove_checkpoint(path: Location) -> None:
    """Delete a checkpoint once training has produced its model (the step returns it for ZenML to store)."""
    if _remote(path):
        import fsspec

        fs, bare = fsspec.core.url_to_fs(str(path))
        if fs.exists(bare):
            fs.rm(bare)
        return
    Path(path).unlink(missing_ok=True)


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return (x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x), y


@torch.no_grad()
def evaluate_loader(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, loss_fn: Any = None, amp: bool = True
) -> dict[str, float]:
    """Loss and top-1 accuracy over a loader."""
    model.eval()
    autocast, _ = _autocast(device, amp)
    loss_fn = loss_fn or torch.nn.CrossEntropyLoss()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = _to_device(x, y, device)
        with autocast():
            logits = model(x)
        loss_sum += float(loss_fn(logits.float(), y)) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1), "n": float(total)}


def fit(
    model: torch.nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    params: TrainParams,
    *,
    checkpoint: Location | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    device: torch.device | None = None,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    is_main: bool = True,
) -> FitResult:
    """Train `model` in place; the best validation-accuracy weights are loaded at the end.

    With `checkpoint`, state is saved atomically after every epoch and a rerun resumes from it. For data-parallel
    training `wrap` wraps the model for the training forward (DistributedDataParallel, whose `join` covers ranks
    with fewer batches); every rank validates on the whole val split, so all take the same decisions, and only
    the main rank writes checkpoints and prints.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(params.threads or os.cpu_count() or 1)
    seed_everything(params.seed)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, opt=params.opt, lr=params.lr, weight_decay=params.weight_decay)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer,
        sched=params.sched,
        num_epochs=params.epochs,
        warmup_epochs=params.warmup_epochs,
        warmup_lr=params.lr * 0.1,
        min_lr=params.lr * 0.01,
    )
    num_epochs = min(num_epochs, params.epochs)
    loss_fn = (
        LabelSmoothingCrossEntropy(params.label_smoothing) if params.label_smoothing else torch.nn.CrossEntropyLoss()
    )
    autocast, scaler = _autocast(device, params.amp)
    history: list[dict[str, float]] = []
    best_acc, best_epoch, best_state, start, resumed = -1.0, -1, None, 0, None

    state = load_checkpoint(checkpoint) if checkpoint else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])
        history, best_acc, best_epoch = state["history"], state["best_acc"], state["best_epoch"]
        best_state, start = state["best_model"], state["epoch"] + 1
        resumed = start
        print(f"Resuming from checkpoint {checkpoint}: epoch {start} of {num_epochs} already done", flush=True)
    if scheduler is not None and start == 0:
        scheduler.step(0)

    trained = wrap(model) if wrap else model
    for epoch in range(start, num_epochs):
        if best_epoch >= 0 and params.patience and epoch - best_epoch > params.patience:
            if is_main:
                print(f"early stop at epoch {epoch}: no val-accuracy gain for {params.patience} epochs", flush=True)
            break
        model.train()
        if hasattr(train_loader.dataset, "set_epoch"):
            train_loader.dataset.set_epoch(epoch)
        seen, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch + 1}/{num_epochs}",
            unit="batch",
            disable=not (progress and is_main),
            dynamic_ncols=True,
            leave=False,
        )
        with trained.join() if wrap else contextlib.nullcontext():
            for x, y in bar:
                if len(y) < 2:
                    continue  # a lone trailing image: BatchNorm cannot train on a batch of one
                x, y = _to_device(x, y, device)
                with autocast():
                    logits = trained(x)
                    loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if params.grad_clip:
                        scaler.unscale_(optimizer)
                        dispatch_clip_grad(model.parameters(), params.grad_clip, mode="norm")
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if params.grad_clip:
                        dispatch_clip_grad(model.parameters(), params.grad_clip, mode="norm")
                    optimizer.step()
                seen += len(y)
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.detach().argmax(1) == y).sum())
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        elapsed = time.perf_counter() - t0
        metrics = {
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": seen / max(elapsed, 1e-9),
            "epoch_s": elapsed,
        }
        if val_loader is not None:
            val = evaluate_loader(model, val_loader, device, amp=params.amp)
            metrics.update({"val_loss": val["loss"], "val_acc": val["acc"]})
        score = metrics.get("val_acc", metrics["train_acc"])
        if score > best_acc:
            best_acc, best_epoch = score, epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        if scheduler is not None:
            scheduler.step(epoch + 1)
        history.append({"epoch": float(epoch), **metrics})
        if is_main:
            print(f"epoch {epoch + 1}/{num_epochs} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
        if on_epoch and is_main:
            on_epoch(epoch, metrics)
        if checkpoint and is_main:
            save_checkpoint(
                checkpoint,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "torch_rng": torch.get_rng_state(),
                    "py_rng": random.getstate(),
                    "history": history,
                    "best_acc": best_acc,
                    "best_epoch": best_epoch,
                    "best_model": best_state,
                },
            )
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(history=history, best_epoch=best_epoch, best_val_acc=best_acc, resumed_from=resumed)
