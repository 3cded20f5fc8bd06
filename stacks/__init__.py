"""Stack definitions (YAML beside this file) and their idempotent registration with ZenML."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from fieldguide.errors import ConfigError

STACK_DIR = Path(__file__).resolve().parent
ALIASES = {"local": "local.yaml", "sagemaker": "sagemaker.yaml", "sagemaker-deploy": "sagemaker-deploy.yaml"}
_ENV_REF = re.compile(r"\$\{([A-Z0-9_]+)\}")


def load_stack_spec(path: Path) -> dict[str, Any]:
    """Read a stack YAML: {name, components: {type: {name, flavor, configuration}}}."""
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec.get("components"), dict) or not spec.get("name"):
        raise ConfigError(f"{path}: a stack needs a name and a components mapping")
    return spec


def expand_env(spec: Any, environ: dict[str, str] | None = None, what: str = "") -> Any:
    """Replace every ${VAR} in a stack spec (or another mapping, named in errors by `what`) with the environment's.

    Raises:
        ConfigError: naming every variable that is not set.
    """
    environ = dict(os.environ) if environ is None else environ
    missing: set[str] = set()

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str):
            missing.update(name for name in _ENV_REF.findall(value) if not environ.get(name))
            return _ENV_REF.sub(lambda m: environ.get(m.group(1), ""), value)
        return value

    out = walk(spec)
    if missing:
        names = ", ".join(sorted(missing))
        where = what or f"stack {spec.get('name')!r}"
        raise ConfigError(f"{where} needs these environment variables: {names}")
    return out


def flavor_config_class(flavor: str, component_type: str) -> type:
    """The installed ZenML config class of a component flavor (no store or network involved)."""
    from zenml.stack.flavor_registry import FlavorRegistry

    registry = FlavorRegistry()
    for cls in registry.builtin_flavors + registry.integration_flavors:
        candidate = cls()
        if candidate.name == flavor and candidate.type.value == component_type:
            return candidate.config_class
    raise ConfigError(f"no installed ZenML flavor {flavor!r} for {component_type}")


def validate_stack_spec(spec: dict[str, Any]) -> None:
    """Check every component against its installed flavor: known flavor, known keys, valid values.

    Raises:
        ConfigError: naming the component and the offending key or value.
    """
    from pydantic import ValidationError

    for type_name, comp in spec["components"].items():
        cls = flavor_config_class(comp["flavor"], type_name)
        config = comp.get("configuration") or {}
        unknown = sorted(set(config) - set(cls.model_fields))
        if unknown:
            raise ConfigError(
                f"{type_name} {comp['name']!r} ({comp['flavor']}): unknown setting {unknown[0]!r}; "
                f"known: {', '.join(sorted(cls.model_fields))}"
            )
        # Secret references ({{secret.key}}) resolve only against a store; their shape is checked, not their value.
        plain = {k: "<secret>" if isinstance(v, str) and v.startswith("{{") else v for k, v in config.items()}
        try:
            cls(**plain)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = f"{type_name} {comp['name']!r} ({comp['flavor']}): {'.'.join(map(str, first['loc']))}"
            raise ConfigError(f"{where}: {first['msg']}") from None


def ensure_repository(root: Path) -> None:
    """Make `root` a ZenML repository (the .zen marker), once."""
    from zenml.client import Client

    if not (root / ".zen").exists():
        Client.initialize(root=root)


def register_stack(spec: dict[str, Any]) -> str:
    """Register the components and stack of `spec`, or bring registered ones up to date; return the stack name.

    Running it again with the same spec changes nothing; a changed setting (a new bucket, another role) updates
    that component and says so; a same-named component of another flavor is an error rather than silently reused.
    """
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    components: dict[StackComponentType, str] = {}
    for type_name, comp in spec["components"].items():
        ctype = StackComponentType(type_name)
        name, flavor, wanted = comp["name"], comp["flavor"], comp.get("configuration") or {}
        existing = client.list_stack_components(type=ctype, name=name)
        if existing.items and existing.items[0].flavor_name != flavor:
            raise ConfigError(
                f"stack component {name!r} exists with flavor {existing.items[0].flavor_name!r}, "
                f"not {flavor!r}: rename it in the stack YAML or delete it with `zenml {type_name} delete {name}`"
            )
        try:
            if not existing.items:
                client.create_stack_component(name=name, flavor=flavor, component_type=ctype, configuration=wanted)
            else:
                have = client.get_stack_component(ctype, name).configuration
                changed = {k: v for k, v in wanted.items() if have.get(k) != v}
                if changed:
                    client.update_stack_component(name, ctype, configuration=changed)
                    print(f"updated {type_name} {name!r}: {', '.join(sorted(changed))}", flush=True)
        except KeyError as exc:  # a {{secret.key}} reference to a secret the store does not have
            raise ConfigError(
                f"{type_name} {name!r}: {exc.args[0]} Create it first, e.g. "
                "`zenml secret create fieldguide_mlflow --token=<MLflow token>` (README: Running on AWS SageMaker)"
            ) from None
        components[ctype] = name
    stacks = client.list_stacks(name=spec["name"])
    if not stacks.items:
        client.create_stack(name=spec["name"], components=components)
    else:
        registered = client.get_stack(spec["name"]).components
        have = {ctype: registered[ctype][0].name for ctype in components if registered.get(ctype)}
        if have != components:
            client.update_stack(spec["name"], component_updates={t: [n] for t, n in components.items()})
            print(f"updated stack {spec['name']!r}: its components are now the YAML's", flush=True)
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
        spec = expand_env(load_stack_spec(path))
        validate_stack_spec(spec)
        name = register_stack(spec)
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


# MLflow 3 opens an experiment without this tag on its GenAI trace overview; with it, on runs and their curves.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def tag_experiments(uri: str) -> int:
    """Tag every experiment of an MLflow store as model training (see EXPERIMENT_KIND); how many were untagged."""
    from mlflow.tracking import MlflowClient

    client, (key, value), tagged = MlflowClient(uri), EXPERIMENT_KIND, 0
    for experiment in client.search_experiments():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
            tagged += 1
    return tagged


def skip_dashboard_survey(url: str) -> None:
    """Mark the local dashboard's default user as onboarded, newsletter off, so the dashboard opens on the runs.

    ZenML's dashboard shows its first-run form ("Add your account details", a news sign-up box ticked) while the
    user's `email_opted_in` is unset or the onboarding survey is not finished. `PUT /users/{id}` drops the email
    setting, `PUT /current-user` keeps it; the local daemon server needs no credentials.
    """
    import httpx

    me = httpx.get(f"{url}/api/v1/current-user", timeout=30)
    me.raise_for_status()
    metadata = {
        **(me.json().get("body", {}).get("user_metadata") or me.json().get("metadata", {}).get("user_metadata") or {})
    }
    body = {"email_opted_in": False, "user_metadata": {**metadata, "finished_onboarding_survey": True}}
    httpx.put(f"{url}/api/v1/current-user", json=body, timeout=30).raise_for_status()
