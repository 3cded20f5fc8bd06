"""timm model factory and a pickle-free export format: safetensors weights + JSON metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from fieldguide.data.images import EvalTransform
from fieldguide.errors import FieldguideError
from fieldguide.keys import MODEL_META

WEIGHTS = "model.safetensors"
META = MODEL_META


@dataclass
class ModelMeta:
    """Everything needed to rebuild and use a trained model, stored beside its weights."""

    name: str  # registry model name: router, child-<group>, flat
    arch: str
    num_classes: int
    classes: list[str]  # label id → class name
    data_config: dict[str, Any]  # timm data config (input_size, mean, std, crop_pct, interpolation)
    dataset_version: str
    group: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    init: dict[str, str] = field(default_factory=dict)  # where the weights started (fieldguide.fingerprint.Init)


@dataclass
class ModelBundle:
    """A trained model with its metadata (the `model` artifact)."""

    model: torch.nn.Module
    meta: ModelMeta


def create_model(arch: str, num_classes: int, pretrained_file: str = "", drop_rate: float = 0.0) -> torch.nn.Module:
    """A timm model by name; pretrained weights only from a local file (never downloaded)."""
    if pretrained_file and not Path(pretrained_file).is_file():
        raise FieldguideError(f"pretrained weights file not found: {pretrained_file}")
    try:
        return timm.create_model(
            arch,
            pretrained=bool(pretrained_file),
            pretrained_cfg_overlay={"file": pretrained_file} if pretrained_file else None,
            num_classes=num_classes,
            drop_rate=drop_rate,
        )
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise FieldguideError(f"unknown timm architecture {arch!r} (see timm.list_models())") from None
        raise


def init_backbone(model: torch.nn.Module, start: ModelBundle, name: str) -> None:
    """Load another trained model's weights into `model` (`name`) except the classifier head, which stays fresh.

    Used to start a child from the router: same architecture, a different head (groups vs species).

    Raises:
        FieldguideError: when `start` is another architecture, naming both.
    """
    arch = model.pretrained_cfg.get("architecture")
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    is_head = lambda key: any(key == h or key.startswith(f"{h}.") for h in heads)  # noqa: E731
    refused = FieldguideError(
        f"{name} cannot start from {start.meta.name}: it is {start.meta.arch}, {name} trains {arch} "
        "(use the same arch, or `init: scratch` in the config)"
    )
    if start.meta.arch != arch:
        raise refused
    try:
        result = model.load_state_dict({k: v for k, v in start.model.state_dict().items() if not is_head(k)}, False)
    except RuntimeError:  # same name, other shapes (a variant built with other arguments)
        raise refused from None
    if [k for k in result.missing_keys if not is_head(k)] or result.unexpected_keys:
        raise refused


def data_config_for(model: torch.nn.Module, img_size: int) -> dict[str, Any]:
    """Timm's data config of `model` at `img_size` (JSON-able)."""
    cfg = resolve_data_config({"input_size": (3, img_size, img_size)}, model=model)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def train_transform(data_config: dict[str, Any], scale_min: float = 0.5, color_jitter: float = 0.2) -> Any:
    """Timm training transform: random resized crop (scale_min..1), flip, colour jitter, normalise."""
    return create_transform(
        **_tuples(data_config),
        is_training=True,
        scale=(scale_min, 1.0),
        color_jitter=color_jitter,
        hflip=0.5,
        re_prob=0.0,
        auto_augment=None,
    )


@dataclass(frozen=True)
class TensorTransform:
    """fieldguide.data.images.EvalTransform with a torch tensor out (for data loaders and in-process forwards)."""

    transform: EvalTransform  # the one evaluation preprocessing, shared with the torch-free HTTP front

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """An RGB image → the model's (3, H, W) input tensor."""
        return torch.from_numpy(self.transform(img))


def eval_transform(data_config: dict[str, Any]) -> TensorTransform:
    """The evaluation transform (timm's: resize, centre crop, normalise) of evaluation, validation and serving."""
    return TensorTransform(EvalTransform.of(_tuples(data_config)))


def _tuples(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def save_bundle(bundle: ModelBundle, directory: Path) -> None:
    """Write model.safetensors and model.json into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_model(bundle.model, str(directory / WEIGHTS))
    (directory / META).write_text(json.dumps(asdict(bundle.meta), indent=1))


def eval_device() -> torch.device:
    """Where evaluation runs: CUDA when this machine has it (a GPU instance on SageMaker), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_bundle(directory: Path, device: str = "cpu") -> ModelBundle:
    """Rebuild a model from its JSON metadata and load safetensors weights (no pickle involved)."""
    meta_path = directory / META
    if not meta_path.is_file():
        raise FieldguideError(f"no {META} in {directory}: not an exported fieldguide model")
    meta = ModelMeta(**json.loads(meta_path.read_text()))
    model = create_model(meta.arch, meta.num_classes)
    safetensors.torch.load_model(model, str(directory / WEIGHTS), device=device)
    return ModelBundle(model.eval(), meta)
