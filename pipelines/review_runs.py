"""Reviewed labels into a new dataset version (`review commit`, `--pipeline feedback`), then `--pipeline retrain`."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fieldguide.errors import FieldguideError
from fieldguide.keys import release_members
from fieldguide.review.queue import Label, ReviewStore, build_queue
from fieldguide.runconfig import config_in, load_run_config


def default_catalog(configured: str, catalog: str | None) -> str:
    """Where reviewed labels go: --catalog, else the data config's (`configured`), else the last data run's."""
    from registry.datasets import catalog_of_run, last_data_run

    return catalog or configured or catalog_of_run(last_data_run())


def commit_review(root: Path, catalog: str | None, config: str | None) -> str:
    """Write every labelled, uncommitted photo into the catalog and run the data pipeline on it.

    Prints the manifest diff of the new dataset version against the catalog's version before the commit; returns the
    new dataset version.

    Raises:
        FieldguideError: nothing to commit, a catalog that is not a local CSV, or a failed data pipeline (labels then
            stay uncommitted; the rows already written are not written twice by the next commit).
    """
    from fieldguide.data.catalog import default_taxonomy
    from fieldguide.data.manifest import diff
    from fieldguide.data.shards import split_of
    from fieldguide.monitor.capture import SampleStore
    from fieldguide.monitor.config import CaptureConfig
    from fieldguide.review.commit import add_photos, append_rows, extend_taxonomy, local_csv
    from fieldguide.review.queue import new_species_of
    from pipelines.runner import pipeline_errors, run_data, summarise_run
    from registry.datasets import manifest_of_run, qa_of_run
    from registry.promotion import monitoring_dir
    from stacks import ensure_repository

    ensure_repository(root)
    store = ReviewStore()
    data_config = config_in(config, "data")
    with store.locked(), pipeline_errors():
        waiting = [lab for lab in store.labels().values() if not lab.committed_at]
        if not waiting:
            raise FieldguideError("nothing to commit: no labelled photo is waiting (`run.py review list`)")
        cfg = load_run_config(root, "data", data_config).params
        path = local_csv(default_catalog(cfg.catalog, catalog))
        print(f"committing {len(waiting)} labels into {path}", flush=True)
        before = run_data(root, data_config, str(path), no_cache=False)
        old = manifest_of_run(before)
        samples = SampleStore(monitoring_dir("production"), CaptureConfig())
        addition = add_photos(path, waiting, lambda sha: store.photo(sha) or samples.kept(sha))
        for lab in addition.missing:
            print(f"not committed: {lab.request_id}: its photo is gone", flush=True)
        new_species = new_species_of({lab.sha256: lab for lab in addition.labels})
        taxonomy = cfg.taxonomy or default_taxonomy(str(path))
        if new_species and taxonomy:
            added = extend_taxonomy(Path(taxonomy), new_species)
            print(f"taxonomy {taxonomy}: added {', '.join(added) or 'nothing (already there)'}", flush=True)
        append_rows(path, addition.rows)
        after = run_data(root, data_config, str(path), no_cache=False)
        summarise_run(after)
        new = manifest_of_run(after)
        change = diff(old, new)
        uris = {str((path.parent / row["uri"]).resolve()) for row in addition.rows}
        held = [r for r in qa_of_run(after).rejected if r.uri in uris]
        splits = Counter(split_of(img.sha256, cfg.split) for img in change.added)
        print(
            f"dataset {old.dataset_version} → {new.dataset_version}: {len(change.added)} rows added "
            f"({', '.join(f'{n} {s}' for s, n in sorted(splits.items())) or 'none'}), {len(change.removed)} removed, "
            f"{len(change.relabelled)} relabelled, {len(change.content_changed)} changed",
            flush=True,
        )
        for img in change.added:
            print(f"  added {img.uri}  {img.label} ({img.group})", flush=True)
        for rej in held:
            print(f"  held back by QA: {rej.uri} {rej.label}: {rej.reason} ({rej.detail})", flush=True)
        stamp = datetime.now(UTC).isoformat()
        done = [*addition.labels, *addition.present]
        store.append([_committed(lab, new.dataset_version, stamp) for lab in done])
        for lab in done:
            store.unpin(lab.sha256)
        print(f"{len(done)} labels committed into dataset {new.dataset_version}", flush=True)
        return new.dataset_version


def _committed(label: Label, dataset_version: str, at: str) -> Label:
    from dataclasses import replace

    return replace(label, dataset_version=dataset_version, committed_at=at)


def run_retrain(root: Path, config: str | None, catalog: str | None, no_cache: bool) -> dict[str, str]:
    """Retrain the models the policy selects on the catalog's current dataset version; returns name → version id.

    Every model of the dataset's release is decided and printed (retraining or skipped, and why); a selected model
    whose data did not change is still skipped (`--pipeline all`'s fingerprints), the router excepted: its
    fingerprint does not follow rows, and labels moving photos between groups are what selects it.
    """
    from fieldguide.monitor.window import as_utc
    from fieldguide.review.policy import decide
    from pipelines.runner import pipeline_errors, resolve_dataset, train_models
    from registry.versions import list_versions, production_version
    from stacks import ensure_repository

    if config and not Path(config).is_dir():
        raise FieldguideError(f"--pipeline retrain takes --config DIR (its retrain.yaml, data.yaml, …): {config}")
    ensure_repository(root)
    policy = load_run_config(root, "retrain", config_in(config, "retrain")).params
    min_feedback = load_run_config(root, "monitor", config_in(config, "monitor")).params.thresholds.min_feedback
    data_config = config_in(config, "data")
    with pipeline_errors():
        configured = load_run_config(root, "data", data_config).params.catalog
        ds = resolve_dataset(root, None, default_catalog(configured, catalog), no_cache, data_config=data_config)
        store = ReviewStore()
        with store.locked():  # no commit between reading the labels and deciding
            committed = [lab for lab in store.labels().values() if lab.committed_at]
        now = datetime.now(UTC)
        selected, before = [], {}
        for key in release_members(ds.groups):
            versions = list_versions(key)
            before[key.name] = versions[-1].number if versions else 0
            production = production_version(key)
            monitoring = dict(production.run_metadata.get("monitoring") or {}) if production is not None else {}
            newest = as_utc(versions[-1].created) if versions else None
            decision = decide(key, committed, monitoring, newest, policy, now, min_feedback)
            print(decision.line(), flush=True)
            if decision.retrain:
                selected.append(key)
        if not selected:
            print("nothing to retrain", flush=True)
            return {}
        produced = train_models(
            root, selected, ds, lambda key: config_in(config, key.pipeline), no_cache, lambda k: k.kind != "router"
        )
    _print_new(produced, before)
    return produced


def _print_new(produced: dict[str, str], before: dict[str, int]) -> None:
    """One line per version this run registered (a reused, unchanged version was already said so)."""
    from registry.versions import approval_of, get_version

    for name, version_id in produced.items():
        version = get_version(version_id)
        if version.number <= before.get(name, 0):
            continue
        state = approval_of(version).get("state", "?")
        print(f"{name} v{version.number}: {state} (a person approves it: run.py approve {name} {version.number})")


def queue_rows(show_all: bool) -> list[Any]:
    """The review queue (committed photos only with `show_all`)."""
    from registry.promotion import monitoring_dir

    queue = build_queue(monitoring_dir("production"), ReviewStore())
    return [e for e in queue if show_all or e.status != "committed"]
