"""Typed configuration: YAML → dataclasses, rejecting unknown keys so a misspelt setting fails loudly."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fieldguide.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass
class QARules:
    """Explicit rules that decide which catalog rows become part of a dataset version."""

    # Bumped whenever a rule changes meaning; it is part of the dataset version id.
    version: str = "1"
    # Container formats accepted, decided from the file's content (PIL's format name), never its suffix.
    allowed_formats: list[str] = dataclasses.field(default_factory=lambda: ["JPEG", "PNG", "WEBP"])
    # Images whose shorter side is below this cannot be resized up to training size without inventing detail.
    min_side: int = 32
    # Decompression-bomb guard: width*height above this is refused from the header, before decoding.
    max_pixels: int = 40_000_000
    # Species with fewer valid images than this are excluded: too few to split and learn.
    min_images_per_species: int = 5
    # Decoding processes; 0 means one per CPU core.
    workers: int = 0
    # Folders or URI prefixes, besides the catalog's own folder and s3://, that rows may point into: a catalog
    # row is never read from anywhere else. Not part of the dataset version id (it changes no valid image).
    allowed_roots: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        """Check that every allowed root is absolute.

        Raises:
            ConfigError: on an empty or relative root.
        """
        for root in self.allowed_roots:
            if "://" not in root and not Path(root).is_absolute():
                raise ConfigError(f"rules.allowed_roots: {root!r} must be an absolute path or a scheme:// URI")


@dataclasses.dataclass
class SplitConfig:
    """Stable, content-addressed split fractions."""

    # Fraction of each species' images used for training.
    train: float = 0.8
    # Fraction used for early stopping and tuning.
    val: float = 0.1
    # Fraction held out for evaluation and the quality gate.
    test: float = 0.1
    # Changing the salt reshuffles every split; keep it fixed for the life of a project.
    salt: str = "fieldguide-v1"


@dataclasses.dataclass
class ShardConfig:
    """How preprocessed images are packed into WebDataset shards."""

    # Shorter side of stored images in pixels; training crops are taken from these.
    store_size: int = 96
    # JPEG quality of stored images; 90 keeps artefacts well below what a 64 px model sees.
    jpeg_quality: int = 90
    # Maximum samples per shard file.
    max_count: int = 2000
    # Maximum bytes per shard file (~100 MB is a good object-store read size).
    max_bytes: int = 100_000_000
    # Preprocessing processes; 0 means one per CPU core.
    workers: int = 0


@dataclasses.dataclass
class DataConfig:
    """The data pipeline: where the catalog is and how it becomes a dataset version and shards."""

    # Catalog CSV, image folder, or s3:// URI; empty means the demo catalog that `make run` generates.
    catalog: str = ""
    # Taxonomy YAML (group -> species list); empty means taxonomy.yaml beside the catalog, if any.
    taxonomy: str = ""
    # QA rules applied to every row.
    rules: QARules = dataclasses.field(default_factory=QARules)
    # Split fractions and salt.
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    # Shard packing.
    shards: ShardConfig = dataclasses.field(default_factory=ShardConfig)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, recursing into nested dataclasses.

    Raises:
        ConfigError: on an unknown key or a value of the wrong type, naming the key's path.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown setting {where + '.' if where else ''}{unknown[0]!s}; known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(inner, v, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, inner = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(inner, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data
