"""Rollout targets: where the promotion routine starts staging, sends its checks, and puts a release live.

`LocalTarget`: BentoML servers on this machine (staging on its port, production behind the gateway, supervised).
`SageMakerTarget`: SageMaker endpoints (a staging endpoint per candidate, production updated blue/green); the
malformed-request checks go to a local staging server of the same bento, since `invoke_endpoint` carries raw bytes
and cannot express a broken multipart body. The routine itself (registry records, failure handling) is
`registry.promotion`; a target only serves.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from fieldguide.errors import FieldguideError
from fieldguide.monitor.capture import staging_capture
from fieldguide.serve.endpoints import aws_error, push_image
from fieldguide.serve.servers import (
    ServingState,
    health,
    start_bento,
    stop,
    switch_production,
    warm_up,
)

if TYPE_CHECKING:
    from fieldguide.runconfig import DeployConfig
    from fieldguide.serve.endpoints import Endpoints
    from fieldguide.serve.release import Release
    from fieldguide.serve.staging import Transport


class Target(Protocol):
    """What the promotion routine needs of a place releases are served from."""

    folder: Path  # this machine's serving folder (state, logs, the stages releases report)

    def start_staging(self, release: Release, bento: str) -> dict[str, Any]:
        """Serve the candidate on staging; a description of it (the deploy pipeline's `staging_server`)."""
        ...

    def transport(self, staging: dict[str, Any], local: httpx.Client) -> Transport:
        """How the checks reach the candidate; `local` talks to the staging server of its bento on this machine."""
        ...

    def staging_serves(self, release: Release) -> bool:
        """The candidate's staging is still up and serving it."""
        ...

    def stop_staging(self, release_id: str) -> None:
        """Tear the candidate's staging down."""
        ...

    def go_live(self, release: Release, staging: dict[str, Any]) -> str:
        """Production serves the release (staging torn down); where production answers."""
        ...


class LocalTarget:
    """Servers on this machine: `bentoml serve` for staging, the gateway and a supervised backend for production."""

    def __init__(self, cfg: DeployConfig, folder: Path, monitor_root: Path) -> None:
        self.cfg, self.folder, self.monitor_root = cfg, folder, monitor_root

    def _state(self) -> ServingState:
        return ServingState.load(self.folder)

    def start_staging(self, release: Release, bento: str) -> dict[str, Any]:
        """The bento on the staging port, replacing any earlier staging server."""
        self.stop_staging(release.id)
        capture = (self.monitor_root / "staging", staging_capture(self.cfg.capture))
        server = start_bento(
            bento, release.id, self.cfg.staging_port, self.folder / "logs", self.cfg.start_timeout_s, capture=capture
        )
        state = self._state()
        state.staging = server
        state.save(self.folder)
        print(f"staging: {release.id} on {server.url} (pid {server.pid})", flush=True)
        return asdict(server)

    def transport(self, staging: dict[str, Any], local: httpx.Client) -> Transport:
        """Every check over HTTP against the staging server."""
        from fieldguide.serve.staging import HttpTransport

        return HttpTransport(local)

    def staging_serves(self, release: Release) -> bool:
        """The recorded staging server serves the release and is healthy."""
        staging = self._state().staging
        return staging is not None and staging.release == release.id and health(staging) == "healthy"

    def stop_staging(self, release_id: str = "") -> None:
        """Stop the staging server (whichever release it serves)."""
        state = self._state()
        stop(state.staging)
        state.staging = None
        state.save(self.folder)

    def go_live(self, release: Release, staging: dict[str, Any]) -> str:
        """A new supervised backend, warmed up, the gateway switched to it, the old one drained; staging stopped."""
        from fieldguide.ports import free_port

        state = self._state()
        green = start_bento(
            staging["bento"],
            release.id,
            free_port(),
            self.folder / "logs",
            self.cfg.start_timeout_s,
            supervised=True,
            capture=(self.monitor_root / "production", self.cfg.capture),
        )
        warm_up(green.url)
        switch_production(state, self.folder, green, self.cfg.production_port)
        self.stop_staging(release.id)
        return f"http://127.0.0.1:{self.cfg.production_port}"


class SageMakerTarget:
    """SageMaker endpoints for staging and production; a local staging server of the same bento for bad input."""

    def __init__(self, local: LocalTarget, endpoints: Endpoints) -> None:
        self.local, self.endpoints = local, endpoints
        self.folder = local.folder

    def start_staging(self, release: Release, bento: str) -> dict[str, Any]:
        """The local staging server, the release's image in ECR (pushed if missing), its staging endpoint InService."""
        server = self.local.start_staging(release, bento)
        try:
            if not self.endpoints.has_image(release.id):
                push_image(release.id, self.endpoints.settings, self.endpoints.clients)
            endpoint = self.endpoints.start_staging(release.id)
        except Exception as exc:  # noqa: BLE001 - AWS errors of any kind: staging did not start
            raise FieldguideError(f"the staging endpoint did not start: {aws_error(exc)}") from exc
        return {**server, "endpoint": endpoint}

    def transport(self, staging: dict[str, Any], local: httpx.Client) -> Transport:
        """Health, answers and latency through `invoke_endpoint` (malformed requests still go to `local`)."""
        from fieldguide.serve.staging import EndpointTransport

        return EndpointTransport(self.endpoints, staging["endpoint"])

    def staging_serves(self, release: Release) -> bool:
        """The staging endpoint is InService with the release's model."""
        name = self.endpoints.staging_name(release.id)
        info = self.endpoints.describe(name)
        return bool(info) and info["EndpointStatus"] == "InService" and self.endpoints.serving(info) == release.id

    def stop_staging(self, release_id: str) -> None:
        """Delete the candidate's staging endpoint and stop the local staging server (each tried on its own).

        Raises:
            FieldguideError: naming what could not be torn down (after both were tried).
        """
        problems = []
        try:
            self.endpoints.delete(self.endpoints.staging_name(release_id))
        except Exception as exc:  # noqa: BLE001 - an endpoint left running costs money: say so, then go on
            problems.append(f"staging endpoint {self.endpoints.staging_name(release_id)}: {aws_error(exc)}")
        try:
            self.local.stop_staging(release_id)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"local staging server: {type(exc).__name__}: {exc}")
        if problems:
            raise FieldguideError("staging not torn down: " + "; ".join(problems))

    def go_live(self, release: Release, staging: dict[str, Any]) -> str:
        """The production endpoint created or updated blue/green, then staging torn down.

        The teardown is best effort: production already serves the release, a teardown failure is only a warning.
        """
        try:
            where = self.endpoints.go_live(release.id)
        except FieldguideError:
            raise
        except Exception as exc:  # noqa: BLE001 - AWS errors: production did not take the release
            raise FieldguideError(f"updating the production endpoint failed: {aws_error(exc)}") from exc
        try:
            self.stop_staging(release.id)
        except FieldguideError as exc:
            print(f"warning: {exc}", flush=True)
        return where
