"""Label Studio for labelling teams: its server in its own virtualenv, and a small HTTP client for push and pull.

The client speaks Label Studio's REST API with `requests` (token auth) rather than `label-studio-sdk`: the SDK
(2.1.2, what label-studio 1.23.2 installs) pins numpy < 2.3 through opencv-python-headless and urllib3 >= 2.5, which
clash with the project's pins, so it lives only in Label Studio's own virtualenv. ZenML's Label Studio annotator
needs that SDK in the project's environment, for the same reason it is not used.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import requests

from fieldguide.errors import FieldguideError
from fieldguide.review.queue import Entry, LabelRequest

URL_VAR, TOKEN_VAR = "LABEL_STUDIO_URL", "LABEL_STUDIO_USER_TOKEN"
USER_VAR, PASSWORD_VAR = "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD"
DEFAULT_URL = "http://127.0.0.1:8081"
PROJECT = "fieldguide review"
# Label Studio's telemetry and update checks stay off (and it keeps its files in its data folder).
QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
    "LATEST_VERSION_CHECK": "false",
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
}
SPECIES, NEW_SPECIES, GROUP = "species", "new_species", "group"


def label_config(taxonomy: dict[str, list[str]]) -> str:
    """The labelling interface: the photo, its species (one choice), or a new species' name and its group."""
    species = "".join(f"<Choice value={quoteattr(s)}/>" for names in taxonomy.values() for s in sorted(names))
    groups = "".join(f"<Choice value={quoteattr(g)}/>" for g in sorted(taxonomy))
    return (
        '<View><Image name="image" value="$image"/>'
        f'<Header value="Species"/><Choices name="{SPECIES}" toName="image" choice="single">{species}</Choices>'
        '<Header value="Not listed? The new species name and its group"/>'
        f'<TextArea name="{NEW_SPECIES}" toName="image" maxSubmissions="1"/>'
        f'<Choices name="{GROUP}" toName="image" choice="single">{groups}</Choices></View>'
    )


def task_of(entry: Entry) -> dict[str, Any]:
    """A Label Studio task for a queued photo: the photo inline, who answered what, the answer as a prediction."""
    image = base64.b64encode(entry.photo.read_bytes()).decode()
    return {
        "data": {
            "image": f"data:image/jpeg;base64,{image}",
            "sha256": entry.sha256,
            "request_id": entry.request_id,
            "reason": entry.reason,
            "answered_species": entry.species,
            "answered_group": entry.group,
            "child_model": entry.child_model,
            "feedback": entry.feedback,
        },
        "predictions": [
            {
                "model_version": f"{entry.release} {entry.child_model}",
                "score": round(entry.probability, 4),
                "result": [_choice(SPECIES, entry.species)],
            }
        ],
    }


def _choice(name: str, value: str) -> dict[str, Any]:
    return {"from_name": name, "to_name": "image", "type": "choices", "value": {"choices": [value]}}


def _older(annotation_time: str, label_time: str) -> bool:
    """True when an annotation was last changed before a label was recorded (it is that label, or older)."""
    try:
        return datetime.fromisoformat(annotation_time) <= datetime.fromisoformat(label_time)
    except ValueError:
        return False


def annotation_request(task: dict[str, Any], annotation: dict[str, Any], by: str) -> LabelRequest | None:
    """The label an annotation gives (None for a skipped or empty one)."""
    if annotation.get("was_cancelled"):
        return None
    values: dict[str, str] = {}
    for item in annotation.get("result") or []:
        value = item.get("value") or {}
        picked = value.get("choices") or value.get("text") or []
        if picked:
            values[item.get("from_name", "")] = str(picked[0]).strip()
    rid = str((task.get("data") or {}).get("request_id") or "")
    if not rid:
        return None
    if values.get(NEW_SPECIES):
        return LabelRequest(rid, by, group=values.get(GROUP, ""), new_species=values[NEW_SPECIES])
    if values.get(SPECIES):
        return LabelRequest(rid, by, species=values[SPECIES], group=values.get(GROUP, ""))
    return None


@dataclass
class LabelStudio:
    """A Label Studio server's REST API, authenticated by an API token."""

    # Its base URL (http://127.0.0.1:8081).
    url: str
    # An API token (a legacy token, sent as `Authorization: Token ...`).
    token: str
    # Seconds one call may take (an import carries the photos inline).
    timeout_s: float = 60.0
    # One connection pool for all calls.
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    @classmethod
    def from_env(cls, url: str | None = None) -> LabelStudio:
        """The server at --url / LABEL_STUDIO_URL (default 127.0.0.1:8081), the token from LABEL_STUDIO_USER_TOKEN.

        Raises:
            FieldguideError: when no token is set.
        """
        token = os.environ.get(TOKEN_VAR, "")
        if not token:
            raise FieldguideError(f"set {TOKEN_VAR} to the Label Studio API token (the one `make label-studio` used)")
        return cls((url or os.environ.get(URL_VAR) or DEFAULT_URL).rstrip("/"), token)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; the JSON answer.

        Raises:
            FieldguideError: Label Studio unreachable, the token refused, or an error answer (its detail quoted).
        """
        try:
            response = self.session.request(
                method,
                f"{self.url}{path}",
                headers={"Authorization": f"Token {self.token}"},
                timeout=self.timeout_s,
                **kwargs,
            )
        except requests.RequestException as exc:
            raise FieldguideError(
                f"Label Studio at {self.url} is not reachable ({type(exc).__name__}); start it with `make label-studio`"
            ) from None
        if response.status_code in (401, 403):
            raise FieldguideError(f"Label Studio at {self.url} refused the token in {TOKEN_VAR}")
        if response.status_code >= 400:
            raise FieldguideError(
                f"Label Studio {method} {path}: HTTP {response.status_code}: {response.text[:300].strip()}"
            )
        try:
            return response.json() if response.content else None
        except ValueError:
            raise FieldguideError(f"{self.url}{path} did not answer JSON: is that Label Studio?") from None

    def project(self, title: str, config: str) -> int:
        """The id of the project titled `title`, created or its label config updated to `config`."""
        project = self._titled(title)
        if project is None:
            return int(self.call("POST", "/api/projects", json={"title": title, "label_config": config})["id"])
        if project.get("label_config") != config:
            self.call("PATCH", f"/api/projects/{project['id']}", json={"label_config": config})
        return int(project["id"])

    def find_project(self, title: str) -> int | None:
        """The id of the project titled `title`, if there is one."""
        project = self._titled(title)
        return None if project is None else int(project["id"])

    def _titled(self, title: str) -> dict[str, Any] | None:
        """The project titled exactly `title` (Label Studio's `title` filter matches substrings)."""
        return next((p for p in self._pages("/api/projects", {"title": title}) if p.get("title") == title), None)

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            answer = self.call("GET", path, params={**params, "page": page, "page_size": 100})
            yield from answer["results"]
            if not answer.get("next"):
                return
            page += 1

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Import tasks (with their predictions); returns the new task ids."""
        answer = self.call("POST", f"/api/projects/{project}/import", params={"return_task_ids": "true"}, json=tasks)
        return [int(t) for t in answer.get("task_ids", [])]

    def annotated(self, project: int) -> list[dict[str, Any]]:
        """Every task of the project with at least one annotation (skipped ones included), with its annotations."""
        return list(self.call("GET", f"/api/projects/{project}/export", params={"exportType": "JSON"}) or [])

    def users(self) -> dict[int, str]:
        """User id → email (username when no email)."""
        users = self.call("GET", "/api/users")
        return {int(u["id"]): u.get("email") or u.get("username") or str(u["id"]) for u in users}


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:`port`."""
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@dataclass
class Server:
    """How `make label-studio` runs Label Studio: its virtualenv, data folder, port and admin account."""

    # The virtualenv holding label-studio (requirements-label-studio.txt).
    venv: Path
    # Its database and uploads.
    data_dir: Path
    # Where it listens (127.0.0.1 only).
    port: int = 8081

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        """The running server's process id."""
        return self.data_dir / "fieldguide.pid"

    def start(self, user: str, password: str, token: str, timeout_s: float = 300.0) -> str:
        """Start it in the background (a no-op when it already answers) and wait until /health answers.

        The first start creates the admin account with `token` as its API token (`--enable-legacy-api-token`, so
        the token given is accepted as is). Returns the URL.

        Raises:
            FieldguideError: no virtualenv, missing credentials, or a server that did not come up (its log named).
        """
        exe = self.venv / "bin" / "label-studio"
        if not exe.is_file():
            raise FieldguideError(f"no Label Studio in {self.venv}: run `make label-studio-install`")
        if self.healthy():
            return self.url
        missing = [name for name, v in ((USER_VAR, user), (PASSWORD_VAR, password), (TOKEN_VAR, token)) if not v]
        if missing:
            raise FieldguideError(f"set {', '.join(missing)}: the admin account and API token Label Studio starts with")
        if not port_free(self.port):  # Label Studio would silently take the next port up
            raise FieldguideError(f"port {self.port} is in use by something that is not Label Studio: pick --port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port)]
        args += ["--data-dir", str(self.data_dir)]
        env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "USERNAME", "PASSWORD")}
        env |= QUIET_ENV | {"LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir)}
        # The account and token go through the environment (not argv, which `ps` shows to every user).
        env |= {
            USER_VAR: user,
            PASSWORD_VAR: password,
            TOKEN_VAR: token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        }
        log = self.data_dir / "label-studio.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FieldguideError(f"Label Studio exited with {proc.returncode}; see {log}")
            if self.healthy():
                return self.url
            time.sleep(1.0)
        self.stop()
        raise FieldguideError(f"Label Studio did not answer /health within {timeout_s:.0f} s; see {log}")

    def healthy(self) -> bool:
        """True when it answers /health."""
        try:
            return requests.get(f"{self.url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the server this data folder's pid file names (its whole process group); False when none ran."""
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid_file.unlink(missing_ok=True)
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


@dataclass
class Sync:
    """What a push or a pull did."""

    # The review project's id.
    project: int
    # Push: tasks created. Pull: labels recorded.
    done: int = 0
    # Push: photos already in the project. Pull: annotations already recorded (or of committed photos).
    unchanged: int = 0
    # Pull: annotations refused, with the reason.
    refused: list[str] = field(default_factory=list)


def push(store: Any, monitor: Path, client: LabelStudio, taxonomy_of: Any, title: str = PROJECT) -> Sync:
    """Create or update the review project and import every open photo not yet in it.

    The project's choices are the answering releases' taxonomies and the species reviewers added; each task carries
    the model's answer as a prediction (pre-filled for the annotator).
    """
    from fieldguide.review.queue import OPEN, build_queue, new_species_of

    with store.locked():
        queue = build_queue(monitor, store)
        taxonomy: dict[str, list[str]] = {}
        for release in sorted({e.release for e in queue}):
            for group, names in taxonomy_of(release).items():
                taxonomy[group] = sorted(set(taxonomy.get(group, [])) | set(names))
        for species, group in new_species_of(store.labels()).items():
            taxonomy[group] = sorted(set(taxonomy.get(group, [])) | {species})
        project = client.project(title, label_config(taxonomy))
        state = store.state("labelstudio")
        key = f"{client.url}#{project}"
        tasks: dict[str, int] = state.setdefault(key, {})
        waiting = [e for e in queue if e.status == OPEN]
        new = [e for e in waiting if e.sha256 not in tasks]
        for start in range(0, len(new), 50):
            batch, payload = [], []
            for entry in new[start : start + 50]:
                with contextlib.suppress(FileNotFoundError):  # swept since the queue was read
                    payload.append(task_of(entry))
                    batch.append(entry)
            ids = client.import_tasks(project, payload) if payload else []
            tasks.update({e.sha256: t for e, t in zip(batch, ids, strict=False)})
            store.save_state("labelstudio", state)
    return Sync(project, len(new), len(waiting) - len(new))


def pull(store: Any, monitor: Path, client: LabelStudio, taxonomy_of: Any, title: str = PROJECT) -> Sync:
    """Record the finished annotations of the review project as labels, by their annotators' emails.

    Everything is read from Label Studio before the queue changes: when it is down, nothing is recorded.
    """
    from fieldguide.review.queue import build_queue, make_label, new_species_of

    project = client.find_project(title)
    if project is None:
        raise FieldguideError(f"Label Studio at {client.url} has no project {title!r}: run `run.py review push` first")
    tasks, users = client.annotated(project), client.users()
    out = Sync(project)
    with store.locked():
        queue = {e.sha256: e for e in build_queue(monitor, store)}
        labels = store.labels()
        known_new = new_species_of(labels)
        recorded = []
        for task in tasks:
            done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
            if not done:
                continue
            annotation = max(done, key=lambda a: a.get("updated_at") or a.get("created_at") or "")
            by = users.get(int(annotation.get("completed_by") or 0), str(annotation.get("completed_by")))
            req = annotation_request(task, annotation, by)
            entry = queue.get(str((task.get("data") or {}).get("sha256", "")))
            if req is None or entry is None:
                out.refused.append(f"task {task['id']}: {'no species chosen' if req is None else 'photo not queued'}")
                continue
            current = entry.label
            when = annotation.get("updated_at") or annotation.get("created_at") or ""
            if current is not None and (current.committed_at or _older(when, current.at)):
                out.unchanged += 1
                continue
            try:
                label = make_label(req, entry, taxonomy_of(entry.release), known_new, "label-studio")
            except FieldguideError as exc:
                out.refused.append(f"task {task['id']}: {exc}")
                continue
            if label.new_species:
                known_new[label.species] = label.group
            store.pin(entry.sha256, entry.photo)
            recorded.append(label)
        store.append(recorded)
        out.done = len(recorded)
    return out
