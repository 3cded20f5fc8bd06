"""Stack definitions (YAML beside this file) and their idempotent registration with ZenML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fieldguide.errors import ConfigError

STACK_DIR = Path(__file__).resolve().parent
ALIASES = {"local": "local.yaml"}


def load_stack_spec(path: Path) -> dict[str, Any]:
    """Read a stack YAML: {name, components: {type: {name, flavor, configuration}}}."""
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec.get("components"), dict) or not spec.get("name"):
        raise ConfigError(f"{path}: a stack needs a name and a components mapping")
    return spec


def ensure_repository(root: Path) -> None:
    """Make `root` a ZenML repository (the .zen marker), once."""
    from zenml.client import Client

    if not (root / ".zen").exists():
        Client.initialize(root=root)


def register_stack(spec: dict[str, Any]) -> str:
    """Register the components and stack of `spec` unless they exist; return the stack name.

    Running it again changes nothing; a same-named component of another flavor is an error rather than
    silently reused.
    """
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    components: dict[StackComponentType, str] = {}
    for type_name, comp in spec["components"].items():
        ctype = StackComponentType(type_name)
        name, flavor = comp["name"], comp["flavor"]
        existing = client.list_stack_components(type=ctype, name=name)
        if existing.items:
            if existing.items[0].flavor_name != flavor:
                raise ConfigError(
                    f"stack component {name!r} exists with flavor {existing.items[0].flavor_name!r}, "
                    f"not {flavor!r}: rename it in the stack YAML or delete it with `zenml {type_name} delete {name}`"
                )
        else:
            client.create_stack_component(
                name=name, flavor=flavor, component_type=ctype, configuration=comp.get("configuration") or {}
            )
        components[ctype] = name
    stacks = client.list_stacks(name=spec["name"])
    if not stacks.items:
        client.create_stack(name=spec["name"], components=components)
    return spec["name"]


def activate_stack(name: str, root: Path | None = None) -> str:
    """Register (if needed) and activate a stack by alias ('local'), YAML path, or registered name."""
    from zenml.client import Client

    root = root or STACK_DIR.parent
    ensure_repository(root)
    path = STACK_DIR / ALIASES[name] if name in ALIASES else Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"stack file not found: {path}")
        name = register_stack(load_stack_spec(path))
    client = Client()
    if client.active_stack_model.name != name:
        try:
            client.activate_stack(name)
        except KeyError:
            known = ", ".join(s.name for s in client.list_stacks().items)
            raise ConfigError(f"unknown stack {name!r}; registered: {known}; or use 'local'") from None
    return name


def tracking_uri() -> str:
    """The MLflow tracking URI of the active stack's experiment tracker."""
    from zenml.client import Client

    tracker = Client().active_stack.experiment_tracker
    if tracker is None:
        raise ConfigError("the active stack has no experiment tracker: run `python run.py --stack local`")
    return tracker.get_tracking_uri()
