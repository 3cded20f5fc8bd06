"""A model's identity: the router, the child of a group, or the flat baseline.

This is the one place that knows how a model is named in the registry, which view of a dataset it trains on,
and which models make up a two-stage release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fieldguide.errors import FieldguideError

Kind = Literal["router", "child", "flat"]
# The JSON metadata beside every exported model's weights (fieldguide.train.models.ModelMeta).
MODEL_META = "model.json"
CHILD_PREFIX = "child-"
# How model names are spelt, for help texts and errors.
NAMES_HELP = f"router, {CHILD_PREFIX}<group>, flat"
# What `run.py --pipeline` (and the console's run form) can run.
PIPELINES = ("data", "parent", "child", "flat", "all", "deploy", "monitor", "feedback", "retrain")


@dataclass(frozen=True, order=True)
class ModelKey:
    """The router (parent), the child model of one group, or the flat all-species baseline."""

    kind: Kind
    group: str = ""

    def __post_init__(self) -> None:
        if (self.kind == "child") != bool(self.group):
            raise FieldguideError(f"a {self.kind} model key {'needs' if self.kind == 'child' else 'takes no'} group")

    @classmethod
    def router(cls) -> ModelKey:
        """The parent model that picks a plant group."""
        return cls("router")

    @classmethod
    def child(cls, group: str) -> ModelKey:
        """The species model of `group`."""
        return cls("child", group)

    @classmethod
    def flat(cls) -> ModelKey:
        """One classifier over every species (the two-stage model's baseline)."""
        return cls("flat")

    @classmethod
    def parse(cls, name: str) -> ModelKey:
        """The key of a registry name (router, flat, child-<group>).

        Raises:
            FieldguideError: for any other name.
        """
        if name in ("router", "flat"):
            return cls(name)  # type: ignore[arg-type]
        if name.startswith(CHILD_PREFIX) and len(name) > len(CHILD_PREFIX):
            return cls.child(name[len(CHILD_PREFIX) :])
        raise FieldguideError(f"unknown model {name!r}: {NAMES_HELP}")

    @classmethod
    def from_view(cls, spec: dict[str, Any]) -> ModelKey:
        """The key of the model trained on a view spec ({"kind": "parent" | "child" | "flat", "group": ...})."""
        kind = spec.get("kind")
        if kind == "parent":
            return cls.router()
        if kind == "flat":
            return cls.flat()
        if kind == "child":
            return cls.child(str(spec.get("group", "")))
        raise FieldguideError(f"unknown view kind {kind!r} (parent, child or flat)")

    @property
    def name(self) -> str:
        """The registry (Model Control Plane) name; also the model's folder name inside a release."""
        return f"{CHILD_PREFIX}{self.group}" if self.kind == "child" else self.kind

    @property
    def pipeline(self) -> str:
        """The pipeline that trains it: parent, child or flat (configs/<pipeline>.yaml)."""
        return "parent" if self.kind == "router" else self.kind

    def view(self, per_group: int = 0) -> dict[str, Any]:
        """The JSON view spec of the data this model trains on."""
        if self.kind == "router":
            return {"kind": "parent", "per_group": per_group}
        if self.kind == "child":
            return {"kind": "child", "group": self.group}
        return {"kind": "flat"}

    def description(self) -> str:
        """One line for the registry."""
        return {
            "router": "Parent model: photo → plant group",
            "child": f"Child model: species of {self.group}",
            "flat": "Flat baseline: photo → species, one model",
        }[self.kind]

    def __str__(self) -> str:
        return self.name


def release_members(groups: list[str]) -> list[ModelKey]:
    """The models of a two-stage release over `groups`: the router, then one child per group."""
    return [ModelKey.router(), *(ModelKey.child(g) for g in groups)]
