#!/usr/bin/env python
"""fieldguide's one command line: pipelines, data tools, registry and rollout commands."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from fieldguide.keys import NAMES_HELP, PIPELINES

ROOT = Path(__file__).resolve().parent


def _configure_environment() -> None:
    """Project-local ZenML/MLflow state and no telemetry or hub downloads, unless the caller set otherwise."""
    state = Path(os.environ.get("FIELDGUIDE_HOME", ROOT / ".fieldguide"))
    os.environ.setdefault("FIELDGUIDE_HOME", str(state))
    os.environ.setdefault("ZENML_CONFIG_PATH", str(state / "zenml"))
    for key, value in {
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_ENABLE_RICH_TRACEBACK": "false",
        "ZENML_LOGGING_VERBOSITY": "INFO",
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "BENTOML_HOME": str(state / "bentoml"),
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(key, value)


# "\b" keeps click from re-wrapping the example block.
EXAMPLES = """\b
Examples:
  python run.py --stack local                        register and activate the local stack
  python run.py --pipeline data --catalog cat.csv    QA, version and shard a catalog
  python run.py --pipeline child --group succulents  train one child model
  python run.py --pipeline all --catalog cat.csv     retrain what changed (unchanged models are skipped)
  python run.py data qa cat.csv --json               QA outside any pipeline
  python run.py models                               registry: versions, stages, approval, metrics
  python run.py approve router 3 --by alice          approve a pending version (rolls it out)
  python run.py status                               staging and production: releases, ports, health
  python run.py rollback                             production back to the previous release
  python run.py traffic --n 300 --shift dusk --group succulents   demo traffic to production
  python run.py --pipeline monitor --since 24h       drift and verdicts per model on production traffic
  python run.py review list                          the review queue: flagged, uncertain, audit photos
  python run.py review label REQUEST_ID "Aloe vera" --by alice   label one photo
  python run.py review commit                        labels → catalog → new dataset version
  python run.py --pipeline retrain                   retrain only the models the labels concern
"""


@click.group(invoke_without_command=True, epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--pipeline",
    type=click.Choice(PIPELINES),
    help="Pipeline to run: data (QA, manifest, shards), parent (router), child (one group), "
    "flat (one all-species baseline), all (data, parent, every child, two-stage evaluation), "
    "deploy (newest approved versions → staging → tests → production), "
    "monitor (production traffic against the release's reference: a verdict per model), "
    "feedback (reviewed labels into the catalog: a new dataset version; = review commit), "
    "retrain (the models reviewed labels and the monitor call for; configs/retrain.yaml).",
)
@click.option(
    "--group", "group", default=None, help="Child pipeline: a plant group name, or 'all' for one run per group."
)
@click.option(
    "--config",
    "config",
    type=click.Path(exists=True),
    default=None,
    help="Run config YAML (default: configs/<pipeline>.yaml); with --pipeline all, a folder of them "
    "(its data.yaml, parent.yaml, child.yaml, flat.yaml, release.yaml; configs/ for the rest).",
)
@click.option(
    "--stack",
    "stack",
    default=None,
    help="Stack to use: 'local' registers and activates fieldguide-local; any other name is activated.",
)
@click.option(
    "--catalog", "catalog", default=None, help="Catalog CSV, image folder or s3:// URI (overrides the config)."
)
@click.option(
    "--dataset",
    "dataset",
    default=None,
    help="Dataset version to train/deploy on (a unique prefix is enough; default: the last data pipeline run's).",
)
@click.option("--no-cache", is_flag=True, help="Run every step even when ZenML has cached outputs.")
@click.option(
    "--retrain",
    "retrain",
    default="",
    help="With --pipeline all: comma-separated models to train even when unchanged (e.g. router,child-ferns).",
)
@click.option(
    "--since",
    "since",
    default=None,
    help="With --pipeline monitor: the window, a duration back from now (30m, 24h, 7d) or an ISO time "
    "(default: configs/monitor.yaml's since).",
)
@click.option("--until", "until", default="", help="With --pipeline monitor: the window's end (default: now).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="With --stack sagemaker: print each step's instance type, image and settings; contacts nothing.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    pipeline: str | None,
    group: str | None,
    config: str | None,
    stack: str | None,
    catalog: str | None,
    dataset: str | None,
    no_cache: bool,
    retrain: str,
    since: str | None,
    until: str,
    dry_run: bool,
) -> None:
    """fieldguide: raw image catalog → tested two-stage species classifier."""
    ctx.ensure_object(dict)
    if retrain and pipeline != "all":
        raise click.UsageError("--retrain is for --pipeline all (a pipeline named on its own always trains)")
    if (since or until) and pipeline != "monitor":
        raise click.UsageError("--since and --until are for --pipeline monitor")
    if dry_run:
        from pipelines.runner import dry_run as plan_run

        if stack not in (None, "sagemaker") or not pipeline:
            raise click.UsageError("--dry-run plans SageMaker runs: --stack sagemaker --pipeline NAME --dry-run")
        if pipeline == "child" and not group:
            raise click.UsageError("--pipeline child needs --group NAME")
        click.echo("\n".join(plan_run(ROOT, pipeline, group, config)))
        return
    if stack:
        from stacks import activate_stack

        name = activate_stack(stack)
        click.echo(f"active stack: {name}", err=True)
    if ctx.invoked_subcommand is not None:
        if pipeline:
            raise click.UsageError("--pipeline cannot be combined with a subcommand")
        return
    if pipeline is None:
        if stack:
            return
        click.echo(ctx.get_help())
        return
    if pipeline == "deploy":
        from pipelines.deploy_runs import run_deploy
        from pipelines.runner import resolve_dataset

        if catalog:
            raise click.UsageError("--pipeline deploy takes --dataset VERSION, not --catalog")
        run_deploy(ROOT, config, dataset=resolve_dataset(ROOT, dataset, None) if dataset else None)
        return
    if pipeline == "monitor":
        from pipelines.monitor_runs import run_monitor

        if catalog or dataset or group:
            raise click.UsageError("--pipeline monitor takes --since (and --config), not --catalog/--dataset/--group")
        run_monitor(ROOT, since, config, until)
        return
    if pipeline in ("feedback", "retrain"):
        if dataset or group or retrain:
            raise click.UsageError(f"--pipeline {pipeline} takes --catalog and --config only")
        from pipelines.review_runs import commit_review, run_retrain

        if pipeline == "feedback":
            commit_review(ROOT, catalog, config)
        else:
            run_retrain(ROOT, config, catalog, no_cache)
        return
    from fieldguide.keys import ModelKey
    from pipelines.runner import run_pipeline

    names = tuple(ModelKey.parse(n.strip()).name for n in retrain.split(",") if n.strip())
    run_pipeline(
        ROOT, pipeline, group=group, config=config, catalog=catalog, no_cache=no_cache, dataset=dataset, retrain=names
    )


@cli.group()
def data() -> None:
    """Data tools outside any pipeline: demo catalog, QA, manifests."""


@data.command("demo")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to write the catalog into.")
@click.option(
    "--groups", default="succulents,ferns,flowers,grasses", show_default=True, help="Comma-separated plant groups."
)
@click.option("--species-per-group", type=click.IntRange(2, 8), default=5, show_default=True)
@click.option("--images-per-species", type=click.IntRange(1), default=60, show_default=True)
@click.option("--size", type=click.IntRange(16, 1024), default=96, show_default=True, help="Image side in pixels.")
@click.option(
    "--bad-fraction", type=click.FloatRange(0, 0.5), default=0.03, show_default=True, help="Share of planted bad rows."
)
@click.option("--seed", type=int, default=0, show_default=True)
def data_demo(
    out: str, groups: str, species_per_group: int, images_per_species: int, size: int, bad_fraction: float, seed: int
) -> None:
    """Generate the procedural demo catalog (images, catalog.csv, taxonomy.yaml, bad_rows.csv)."""
    from fieldguide.data.demo import generate

    names = [g.strip() for g in groups.split(",") if g.strip()]
    if len(names) < 1:
        raise click.UsageError("--groups needs at least one group name")
    res = generate(Path(out), names, species_per_group, images_per_species, size, bad_fraction, seed)
    click.echo(f"wrote {res.good} images and {res.bad} planted bad rows: {res.catalog} (taxonomy: {res.taxonomy})")


@data.command("qa")
@click.argument("catalog")
@click.option("--taxonomy", default=None, help="Taxonomy YAML (default: taxonomy.yaml beside the catalog, if any).")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="Data config with the QA rules (default: configs/data.yaml).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary with every rejected row.")
def data_qa(catalog: str, taxonomy: str | None, config: str | None, as_json: bool) -> None:
    """Run QA on CATALOG (CSV, image folder or s3:// URI) and report valid images and rejections."""
    import json

    from fieldguide.data.qa_report import qa_catalog, render_qa_text
    from fieldguide.runconfig import load_run_config

    cfg = load_run_config(ROOT, "data", config).params
    result, version = qa_catalog(catalog, taxonomy, cfg.rules, progress=not as_json)
    if as_json:
        payload = {
            "valid": len(result.valid),
            "rejected": result.reason_counts(),
            "rows": [
                {"uri": r.uri, "line": r.line, "label": r.label, "reason": r.reason, "detail": r.detail}
                for r in result.rejected
            ],
            "warnings": result.warnings,
            "dataset_version": version,
        }
        click.echo(json.dumps(payload, indent=1))
    else:
        render_qa_text(result, version)


@data.command("recreate")
@click.argument("manifest")
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Folder to rebuild the dataset version in."
)
def data_recreate(manifest: str, out: str) -> None:
    """Rebuild the dataset version of MANIFEST in OUT, verifying every sha256; exit 1 naming changed files."""
    from fieldguide.data.manifest import Manifest, recreate

    m = Manifest.load(manifest)
    res = recreate(m, Path(out))
    for uri in res.changed:
        click.echo(f"changed: {uri}", err=True)
    for uri in res.vanished:
        click.echo(f"vanished: {uri}", err=True)
    click.echo(f"{m.dataset_version}: {res.written} of {len(m.images)} images rebuilt in {out}")
    if not res.ok:
        click.echo(f"error: {len(res.changed)} changed and {len(res.vanished)} vanished source files", err=True)
        sys.exit(1)


@data.command("diff")
@click.argument("a")
@click.argument("b")
def data_diff(a: str, b: str) -> None:
    """List rows added, removed, relabelled or changed between manifests A and B."""
    from fieldguide.data.manifest import Manifest, diff

    ma, mb = Manifest.load(a), Manifest.load(b)
    d = diff(ma, mb)
    click.echo(f"{ma.dataset_version} → {mb.dataset_version}")
    for img in d.added:
        click.echo(f"added      {img.uri}  {img.label} ({img.group})")
    for img in d.removed:
        click.echo(f"removed    {img.uri}  {img.label} ({img.group})")
    for x, y in d.relabelled:
        click.echo(f"relabelled {x.uri}  {x.label} ({x.group}) → {y.label} ({y.group})")
    for x, _ in d.content_changed:
        click.echo(f"changed    {x.uri}  content differs")
    if d.empty:
        click.echo("no differences")


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8237, show_default=True)
@click.option("--stop", is_flag=True, help="Shut the local dashboard down (and reconnect to the local store).")
def dashboard(port: int, stop: bool) -> None:
    """Start the local ZenML dashboard (a daemon server over the same local store) and print its URL."""
    import subprocess

    zenml = [str(Path(sys.executable).parent / "zenml")]
    env = {**os.environ, "ZENML_AUTO_OPEN_DASHBOARD": "false"}
    args = ["logout", "--local"] if stop else ["login", "--local", "--port", str(port)]
    res = subprocess.run([*zenml, *args], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise click.ClickException(f"zenml {' '.join(args)} failed: {last}")
    if stop:
        click.echo("dashboard stopped")
        return
    from stacks import skip_dashboard_survey

    skip_dashboard_survey(f"http://127.0.0.1:{port}")
    click.echo(f"ZenML dashboard: http://127.0.0.1:{port}/projects/default/runs")


@cli.command("mlflow-ui")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--print-uri", is_flag=True, help="Only print the tracking URI the runs write to.")
def mlflow_ui(port: int, print_uri: bool) -> None:
    """Serve the MLflow UI over the store that the stack's MLflow experiment tracker writes to, opening on runs."""
    import subprocess

    from stacks import tracking_uri

    uri = tracking_uri()
    if print_uri:
        click.echo(uri)
        return
    from stacks import tag_experiments

    tag_experiments(uri)  # stores written before experiments were tagged open on their runs too
    click.echo(f"MLflow UI on http://127.0.0.1:{port} (store: {uri})")
    subprocess.run(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        check=False,
    )


@cli.command("monitor-ui")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--config", "config", default=None, help="Monitor config YAML (default: configs/monitor.yaml).")
def monitor_ui(port: int, config: str | None) -> None:
    """Serve Evidently's UI over the workspace the monitor pipeline adds its reports to."""
    import subprocess

    from fieldguide.runconfig import load_run_config
    from pipelines.monitor_runs import workspace_dir

    folder = workspace_dir(load_run_config(ROOT, "monitor", config).params.workspace)
    folder.mkdir(parents=True, exist_ok=True)
    click.echo(f"Evidently UI on http://127.0.0.1:{port} (workspace: {folder})")
    evidently = str(Path(sys.executable).parent / "evidently")
    cmd = [evidently, "ui", "--workspace", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    subprocess.run(cmd, check=False)


@cli.command()
@click.option("--model", "model", default=None, help=f"Only this model ({NAMES_HELP}).")
def models(model: str | None) -> None:
    """List models and versions: stage, approval state, who decided, test metrics, where the weights started."""
    from rich.console import Console
    from rich.table import Table

    from registry.versions import models_rows

    rows = [r for r in models_rows() if model is None or r["model"] == model]
    if not rows:
        click.echo("no model versions yet: run `python run.py --pipeline all` (or `make run`)")
        return
    table = Table(title="fieldguide models (ZenML Model Control Plane)")
    columns = ("model", "version", "stage", "approval", "by", "top1", "macro_f1", "ece", "dataset", "init", "note")
    for col in columns:
        table.add_column(col, justify="right" if col in ("top1", "macro_f1", "ece") else "left", overflow="fold")
    styles = {"approved": "green", "rejected": "red", "gate_failed": "red", "pending": "yellow"}
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c] or "") for c in columns]
        table.add_row(*cells, style=styles.get(r["approval"].split(" ")[0], ""))
    Console(width=200).print(table)


def _decide(
    action: str,
    model: str,
    version: str,
    by: str,
    note: str,
    force: bool,
    deploy: bool = False,
    config: str | None = None,
) -> None:
    if action == "approve":
        from pipelines.deploy_runs import approve as do_approve

        found = do_approve(ROOT, model, version, by, note, force, deploy, config)
    else:
        from registry.lock import registry_lock
        from registry.versions import record_decision

        with registry_lock(what=f"rejecting {model} {version}"):
            found = record_decision(model, version, action, by, note, force)
    record = found.run_metadata["approval"]
    forced = " (forced past the quality gate)" if record.get("forced") else ""
    click.echo(f"{model} v{found.number}: {record['state']} by {record['by']} at {record['at']}{forced}")


_decision_options = [
    click.argument("model"),
    click.argument("version"),
    click.option("--by", "by", required=True, help="Who decides (recorded with the version)."),
    click.option("--note", default="", help="Why (recorded with the version)."),
]


def _with_decision_options(fn: object) -> object:
    for option in reversed(_decision_options):
        fn = option(fn)
    return fn


@cli.command()
@_with_decision_options
@click.option("--force", is_flag=True, help="Approve even though the version failed the quality gate (recorded).")
@click.option("--no-deploy", is_flag=True, help="Only record the approval; never rolled out (not by `watch` either).")
@click.option("--config", "config", default=None, help="Deploy config YAML (default: configs/deploy.yaml).")
def approve(model: str, version: str, by: str, note: str, force: bool, no_deploy: bool, config: str | None) -> None:
    """Approve a model version and roll it out (MODEL: a release member, e.g. router; VERSION: e.g. 3 or v3).

    Approvals and rollouts take turns: a second `approve` waits for the first one's rollout.
    """
    _decide("approve", model, version, by, note, force, deploy=not no_deploy, config=config)


@cli.command()
@_with_decision_options
def reject(model: str, version: str, by: str, note: str) -> None:
    """Reject a model version, recording who and why."""
    _decide("reject", model, version, by, note, False)


@cli.command("evaluate-release")
@click.option("--router", "router", default=None, help="Router version (default: latest).")
@click.option("--child", "children", multiple=True, help="GROUP=VERSION for a child (default: latest of each).")
@click.option("--config", "config", default=None, help="Release config YAML (default: configs/release.yaml).")
@click.option("--dataset", "dataset", default=None, help="Dataset version (default: the last data pipeline run's).")
def evaluate_release(router: str | None, children: tuple[str, ...], config: str | None, dataset: str | None) -> None:
    """Two-stage evaluation of a release on the test split: router, oracle child, end-to-end for each k."""
    from fieldguide.keys import ModelKey, release_members
    from pipelines.runner import resolve_dataset, run_release_eval
    from registry.versions import find_version, latest_version

    ds = resolve_dataset(ROOT, dataset, None)
    picked = dict(c.split("=", 1) for c in children if "=" in c)
    bad = [c for c in children if "=" not in c]
    if bad:
        raise click.UsageError(f"--child takes GROUP=VERSION, got {bad[0]!r}")
    chosen = {ModelKey.router(): router} | {ModelKey.child(g): picked.pop(g, None) for g in ds.groups}
    if picked:
        raise click.UsageError(f"unknown group(s) in --child: {', '.join(picked)}")
    versions = {
        key.name: str((find_version(key, number) if number else latest_version(key)).id)
        for key, number in chosen.items()
        if key in release_members(ds.groups)
    }
    run_release_eval(ROOT, config, ds, versions)


@cli.command("approve-pending")
@click.option("--by", "by", required=True, help="Who approves (recorded; `make run` uses the demo approver make-run).")
@click.option("--note", default="", help="Why (recorded with every version).")
def approve_pending(by: str, note: str) -> None:
    """Approve the newest pending version of the router and of every child, then roll them out as one release."""
    from pipelines.deploy_runs import approve_pending_and_deploy

    url = approve_pending_and_deploy(ROOT, by, note)
    demo = sorted((Path(os.environ["FIELDGUIDE_HOME"]) / "demo-catalog" / "images").glob("*/*/*.jpg"))
    photo = os.path.relpath(demo[0]) if demo else "photo.jpg"
    click.echo(f"production: {url}")
    click.echo(f"  try: curl -F file=@{photo} {url}/classify")


@cli.command()
def releases() -> None:
    """List releases: id, status (production, archived, failed), model versions, created, approved by, accuracy."""
    from rich.console import Console
    from rich.table import Table

    from registry.releases import releases_rows

    rows = releases_rows()
    if not rows:
        click.echo("no releases yet: approve model versions (or run `make run`)")
        return
    table = Table(title="fieldguide releases")
    columns = ("release", "status", "models", "created", "approved by", "end-to-end acc")
    for col in columns:
        table.add_column(col, overflow="fold")
    styles = {"production": "green", "failed": "red"}
    for row in rows:
        table.add_row(*(row[c] for c in columns), style=styles.get(row["status"], ""))
    Console(width=200).print(table)


@cli.command()
@click.option("--config", "config", default=None, help="Deploy config YAML (default: configs/deploy.yaml).")
@click.option("--from", "expect", default="", help="Only if this release is still in production (queued rollbacks).")
def rollback(config: str | None, expect: str) -> None:
    """Switch production back to the previous release (staging, tests, blue/green swap)."""
    from pipelines.deploy_runs import rollback as do_rollback

    click.echo(f"production is now {do_rollback(ROOT, config, expect)}")


@cli.command()
@click.option("--config", "config", default=None, help="Deploy config YAML (default: configs/deploy.yaml).")
def status(config: str | None) -> None:
    """Staging and production: release, URL, pid, health, and restarts of the supervised production processes.

    On the SageMaker target: each endpoint (production, the staging ones), the release it serves and its status.
    """
    from pipelines.deploy_runs import deploy_config

    cfg = deploy_config(ROOT, config)
    if cfg.target == "sagemaker":
        from fieldguide.serve.endpoints import Endpoints

        for row in Endpoints(cfg.sagemaker).status_rows():
            cells = (row[k] or "-" for k in ("role", "endpoint", "release", "status"))
            click.echo("{:<12} {:<40} {:<18} {}".format(*cells))
        return
    from fieldguide.serve.servers import status_rows
    from registry.promotion import serving_dir

    for row in status_rows(serving_dir()):
        cells = (row["role"], row["release"] or "-", row["url"] or "-", f"pid {row['pid'] or '-'}", row["health"])
        line = "{:<22} {:<18} {:<24} {:<10} {:<16}".format(*cells)
        click.echo(f"{line} restarts {row['restarts']}" if row["restarts"] else line.rstrip())


@cli.command("push-image")
@click.option("--release", "release_id", required=True, help="The release whose bento becomes the image (its id).")
@click.option("--config", "config", default=None, help="Deploy config YAML (default: configs/deploy.yaml).")
def push_image(release_id: str, config: str | None) -> None:
    """Build the SageMaker image of a release (`bentoml containerize`) and push it to ECR, tagged with its id."""
    from fieldguide.serve.endpoints import push_image as push
    from pipelines.deploy_runs import deploy_config

    cfg = deploy_config(ROOT, config)
    if cfg.target != "sagemaker":
        raise click.UsageError("the deploy target is local: images are for SageMaker (`--stack sagemaker-deploy`)")
    click.echo(push(release_id, cfg.sagemaker))


@cli.command()
def stop() -> None:
    """Stop the staging, production and gateway servers this project started, and their supervisord."""
    from fieldguide.serve.servers import stop_all
    from registry.promotion import forget_held_photos, serving_dir

    stopped = stop_all(serving_dir())
    click.echo("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
    held = forget_held_photos()
    if held:
        click.echo(f"deleted {held} photos held for feedback (kept samples stay)")


@cli.command()
@click.option("--n", "n", type=click.IntRange(1), required=True, help="Requests to send.")
@click.option(
    "--rate",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Requests per second (default: as fast as it answers).",
)
@click.option("--shift", type=click.Choice(["dusk", "blur", "new-species"]), default=None, help="Send shifted photos.")
@click.option("--group", "group", default=None, help="Only this group's photos (with --shift: all of them shifted).")
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Photo seed (default: a new one, printed; traffic never repeats training images).",
)
@click.option(
    "--size", type=click.IntRange(16, 1024), default=96, show_default=True, help="Photo side: the demo catalog's size."
)
@click.option("--url", default=None, help="Server to send to (default: the production URL of configs/deploy.yaml).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write one JSON line per answer: request id, truth, answer.",
)
def traffic(
    n: int,
    rate: float | None,
    shift: str | None,
    group: str | None,
    seed: int | None,
    size: int,
    url: str | None,
    out: str | None,
) -> None:
    """Send N fresh demo photos to production, in distribution or shifted (how the demo tells the monitoring story)."""
    import json
    import time

    from fieldguide.monitor.traffic import release_taxonomy, send, traffic_photos
    from fieldguide.serve.servers import release_folder
    from pipelines.deploy_runs import deploy_config
    from registry.releases import production_release

    live = production_release()
    if live is None:
        raise click.ClickException("no release in production: run `make run` first")
    url = url or f"http://127.0.0.1:{deploy_config(ROOT, None).production_port}"
    seed = int(time.time()) if seed is None else seed
    taxonomy = release_taxonomy(release_folder(live.id))
    photos = traffic_photos(taxonomy, n, seed, size, shift or "", group or "")
    what = f"{shift} photos" if shift else "in-distribution photos"
    click.echo(
        f"sending {n} {what}{f' of {group}' if group else ''} to {url} (seed {seed}; --seed {seed} repeats them)"
    )
    sent = send(url, photos, n, rate or 0.0)
    click.echo(sent.line())
    if out:
        Path(out).write_text("".join(json.dumps(a) + "\n" for a in sent.answers))
    if sent.statuses.get(200, 0) < n:
        raise click.ClickException(f"{n - sent.statuses.get(200, 0)} of {n} requests did not get an answer")


@cli.group()
def review() -> None:
    """Human review of production's uncertain answers: queue, labels, Label Studio, commit into the catalog."""


@review.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also list photos already committed into a dataset.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
def review_list(show_all: bool, as_json: bool) -> None:
    """The review queue: feedback-flagged photos first, then the least confident answers, then the audit sample."""
    import json

    from pipelines.review_runs import queue_rows

    rows = queue_rows(show_all)
    if as_json:
        for entry in rows:
            click.echo(json.dumps(entry.to_dict()))
        return
    if not rows:
        click.echo("the review queue is empty (photos are kept for low confidence, the audit sample and feedback)")
        return
    click.echo(f"{'request id':<34} {'why':<14} {'answer (p)':<32} {'model':<18} {'feedback':<18} status")
    for e in rows:
        answer = f"{e.species} ({e.probability:.2f})"
        status = e.status if e.label is None else f"{e.status}: {e.label.species} by {e.label.by}"
        click.echo(f"{e.request_id:<34} {e.reason:<14} {answer:<32} {e.child_model:<18} {e.feedback:<18} {status}")
    open_ = sum(e.status == "open" for e in rows)
    click.echo(f"{len(rows)} photos, {open_} to label")


@review.command("label")
@click.argument("request_id")
@click.argument("species", required=False, default="")
@click.option("--by", "by", required=True, help="Who labels (recorded with the label).")
@click.option("--group", "group", default="", help="The photo's group, when the router sent it elsewhere.")
@click.option("--species", "species_opt", default="", help="The species (with --group).")
@click.option("--new-species", "new_species", default="", help="A species the taxonomy lacks (with --group).")
def review_label(request_id: str, species: str, by: str, group: str, species_opt: str, new_species: str) -> None:
    """Label the photo of REQUEST_ID as SPECIES (or --group G --species S, or --new-species NAME --group G)."""
    from fieldguide.review.queue import LabelRequest, ReviewStore, record_label, release_taxonomies
    from registry.promotion import monitoring_dir

    if species and species_opt and species != species_opt:
        raise click.UsageError("give the species once: as SPECIES or as --species")
    species = species or species_opt
    if bool(species) == bool(new_species):
        raise click.UsageError("give SPECIES (or --species S), or --new-species NAME --group G")
    req = LabelRequest(request_id, by, species=species, group=group, new_species=new_species)
    label, replaced = record_label(ReviewStore(), monitoring_dir("production"), req, release_taxonomies())
    what = f"new species {label.species!r}" if label.new_species else repr(label.species)
    click.echo(f"{request_id}: labelled {what} ({label.group}) by {label.by}")
    if replaced is not None:
        click.echo(f"  (replaces {replaced.species!r} by {replaced.by})")


@review.command("push")
@click.option("--url", default=None, help="Label Studio (default: LABEL_STUDIO_URL or http://127.0.0.1:8081).")
def review_push(url: str | None) -> None:
    """Import the open photos of the queue into Label Studio's review project (the answer pre-filled)."""
    from fieldguide.review.labelstudio import LabelStudio, push
    from fieldguide.review.queue import ReviewStore, release_taxonomies
    from registry.promotion import monitoring_dir

    client = LabelStudio.from_env(url)
    done = push(ReviewStore(), monitoring_dir("production"), client, release_taxonomies())
    click.echo(f"Label Studio project {done.project} at {client.url}: {done.done} photos added, {done.unchanged} there")


@review.command("pull")
@click.option("--url", default=None, help="Label Studio (default: LABEL_STUDIO_URL or http://127.0.0.1:8081).")
def review_pull(url: str | None) -> None:
    """Record Label Studio's finished annotations as labels (by each annotator's email)."""
    from fieldguide.review.labelstudio import LabelStudio, pull
    from fieldguide.review.queue import ReviewStore, release_taxonomies
    from registry.promotion import monitoring_dir

    client = LabelStudio.from_env(url)
    done = pull(ReviewStore(), monitoring_dir("production"), client, release_taxonomies())
    for line in done.refused:
        click.echo(f"  refused: {line}")
    click.echo(f"Label Studio project {done.project}: {done.done} labels recorded, {done.unchanged} unchanged")


@review.command("label-studio")
@click.option("--venv", default=".venv-label-studio", show_default=True, help="Label Studio's virtualenv.")
@click.option("--port", type=click.IntRange(1, 65535), default=8081, show_default=True)
@click.option("--stop", is_flag=True, help="Stop the Label Studio this command started.")
def review_label_studio(venv: str, port: int, stop: bool) -> None:
    """Start Label Studio on 127.0.0.1 (data under FIELDGUIDE_HOME/label-studio), admin and token from the env."""
    import os

    from fieldguide.review.labelstudio import PASSWORD_VAR, TOKEN_VAR, USER_VAR, Server

    server = Server(ROOT / venv, Path(os.environ["FIELDGUIDE_HOME"]) / "label-studio", port)
    if stop:
        click.echo("Label Studio stopped" if server.stop() else "Label Studio was not running")
        return
    env = os.environ.get
    url = server.start(env(USER_VAR, ""), env(PASSWORD_VAR, ""), env(TOKEN_VAR, ""))
    click.echo(f"Label Studio: {url} (log in as {env(USER_VAR)}); `make label-studio-stop` stops it")


@review.command("commit")
@click.option("--catalog", "catalog", default=None, help="Catalog CSV (default: the last data pipeline run's).")
@click.option("--config", "config", default=None, help="Config folder with data.yaml (default: configs/).")
def review_commit(catalog: str | None, config: str | None) -> None:
    """Copy labelled photos into the catalog (feedback/ area, source=review rows) and run the data pipeline."""
    from pipelines.review_runs import commit_review

    commit_review(ROOT, catalog, config)


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: configs/console.yaml's).")
@click.option("--config", "config", default=None, help="Console config YAML (default: configs/console.yaml).")
def console(port: int | None, config: str | None) -> None:
    """Serve the operations console: versions, approvals, releases, runs, monitoring, review (and /api/v1)."""
    import uvicorn

    from console.app import create_app
    from console.config import load_console_config
    from console.store import Store
    from fieldguide.ports import port_in_use

    cfg = load_console_config(ROOT, config)
    cfg.port = port or cfg.port
    if port_in_use(cfg.port):
        raise click.ClickException(f"port {cfg.port} is taken: stop what listens there or pass --port")
    store = Store()
    if store.in_use():
        raise click.ClickException(f"another console runs over {store.path}: one console per state folder")
    click.echo(f"fieldguide console on http://{cfg.host}:{cfg.port} (API docs: /api/v1/docs); Ctrl-C stops it")
    uvicorn.run(create_app(cfg, ROOT, store), host=cfg.host, port=cfg.port, log_level="warning")


@cli.group()
def users() -> None:
    """Console users: each has a role (viewer, approver, operator, admin) and an API token."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "approver", "operator", "admin"]), required=True)
def users_add(name: str, role: str) -> None:
    """Create a console user and print their API token (once: only its hash is stored)."""
    from console.store import Store

    token = Store().add_user(name, role)
    click.echo(f"user {name} ({role}) created; their token, shown only now:")
    click.echo(token)


@users.command("list")
def users_list() -> None:
    """List console users and their roles."""
    from console.store import Store

    rows = Store().users()
    for row in rows:
        click.echo(f"{row['name']:<24} {row['role']:<10} created {row['created'][:19]}")
    if not rows:
        click.echo("no users yet: python run.py users add NAME --role ROLE")


@users.command("remove")
@click.argument("name")
def users_remove(name: str) -> None:
    """Remove a console user (their token and sign-ins stop working at once)."""
    from console.store import Store

    if not Store().remove_user(name):
        raise click.ClickException(f"no user {name!r}")
    click.echo(f"user {name} removed")


@cli.command()
@click.option("--interval", type=click.FloatRange(1), default=15, show_default=True, help="Seconds between polls.")
@click.option("--once", is_flag=True, help="Poll once and exit.")
@click.option("--config", "config", default=None, help="Deploy config YAML (default: configs/deploy.yaml).")
def watch(interval: float, once: bool, config: str | None) -> None:
    """Roll out approvals made anywhere (CLI, console, dashboard tag `approved`) by polling the registry.

    With --once, exit 2 when a rollout it attempted failed.
    """
    from pipelines.deploy_runs import watch as do_watch

    do_watch(ROOT, interval, once, config)


@cli.command()
@click.option("--config", "config", default=None, help="Deploy config YAML (default: configs/deploy.yaml).")
def serve(config: str | None) -> None:
    """Serve the current production release (starting it if it is not running) and print its URL."""
    from pipelines.deploy_runs import deploy_config
    from registry.promotion import serve_production, serving_dir

    url = serve_production(deploy_config(ROOT, config), serving_dir())
    click.echo(f"production: {url}  (try: curl -F file=@photo.jpg {url}/classify)")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2."""
    _configure_environment()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # health polls would print one line each
    sys.path.insert(0, str(ROOT))
    from fieldguide.errors import FieldguideError

    try:
        cli.main(args=argv, prog_name="run.py", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except FieldguideError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
