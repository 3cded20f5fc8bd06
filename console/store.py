"""The console's embedded database (SQLite): users with roles and token hashes, the audit log and the run queue.

Tokens are 256-bit random strings, so a SHA-256 hash is enough to store them (a password hash's slowness buys
nothing against a key that cannot be guessed); only the hash is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from fieldguide.errors import FieldguideError

ROLES = ("viewer", "approver", "operator", "admin")
# What each role may do beyond reading every page: decide on versions and label photos, or start runs and roll back.
GRANTS = {"viewer": set(), "approver": {"decide"}, "operator": {"operate"}, "admin": {"decide", "operate"}}
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, token_sha256 TEXT NOT NULL UNIQUE, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, detail TEXT NOT NULL, origin TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, spec TEXT NOT NULL, argv TEXT NOT NULL,
    status TEXT NOT NULL, requested_by TEXT NOT NULL, created TEXT NOT NULL, started TEXT, finished TEXT,
    exit_code INTEGER, attempts INTEGER NOT NULL DEFAULT 0, runs TEXT NOT NULL DEFAULT '[]', pid INTEGER);
"""


def now() -> str:
    """UTC now, ISO 8601 to the microsecond (job windows are compared with ZenML's run times)."""
    return datetime.now(UTC).isoformat()


def token_hash(token: str) -> str:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def session_key(token_sha256: str) -> str:
    """What a session cookie carries of its user's token: enough to notice a new token, useless to sign in."""
    return hashlib.sha256(f"session:{token_sha256}".encode()).hexdigest()[:24]


def console_dir() -> Path:
    """FIELDGUIDE_HOME/console: the database and the runs' logs."""
    return Path(os.environ.get("FIELDGUIDE_HOME", ".fieldguide")) / "console"


@dataclass(frozen=True)
class User:
    """A console user."""

    # Unique name, recorded as `by` on every decision they make.
    name: str
    # viewer, approver, operator or admin.
    role: str

    def may(self, grant: str) -> bool:
        """Whether the role carries `grant` ("decide" or "operate"); everyone may read."""
        return grant in GRANTS[self.role]


@dataclass
class Job:
    """A queued pipeline run, rollout or rollback: the run.py arguments it executes, and what became of it."""

    id: int
    kind: str
    spec: dict[str, Any]
    argv: list[str]
    status: str
    requested_by: str
    created: str
    started: str | None
    finished: str | None
    exit_code: int | None
    attempts: int
    runs: list[dict[str, str]]
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the API (argv are run.py's arguments)."""
        return asdict(self)


class Store:
    """The console database; one short connection per call (the worker thread and requests share the file)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or console_dir() / "console.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    def console_lock(self) -> FileLock:
        """Held by the console serving this database (one run queue per database)."""
        return FileLock(self.path.with_suffix(".lock"))

    def in_use(self) -> bool:
        """Whether a console holds this database now."""
        lock = self.console_lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    # users

    def add_user(self, name: str, role: str) -> str:
        """Create a user; returns their API token, which is not stored and cannot be shown again.

        Raises:
            FieldguideError: for an unknown role, an empty name or a name already taken.
        """
        name = name.strip()
        if role not in ROLES:
            raise FieldguideError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        if not name or len(name) > 64 or not name.isprintable():
            raise FieldguideError("a user name is 1-64 printable characters")
        token = "fg_" + secrets.token_urlsafe(32)
        try:
            with self._db() as db:
                db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (name, role, token_hash(token), now()))
        except sqlite3.IntegrityError as exc:
            raise FieldguideError(f"user {name!r} exists; remove it first to issue a new token") from exc
        return token

    def remove_user(self, name: str) -> bool:
        """Delete a user (their token and sessions stop working at once); False when there was none."""
        with self._db() as db:
            return db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0

    def users(self) -> list[dict[str, str]]:
        """Every user: name, role, created."""
        with self._db() as db:
            return [dict(r) for r in db.execute("SELECT name, role, created FROM users ORDER BY name")]

    def user_by_token(self, token: str) -> User | None:
        """The user a token belongs to, or None."""
        with self._db() as db:
            row = db.execute("SELECT name, role FROM users WHERE token_sha256 = ?", (token_hash(token),)).fetchone()
        return User(row["name"], row["role"]) if row else None

    def session_user(self, name: str, key: str) -> User | None:
        """The user of a browser session, while their token is the one the session was opened with.

        `key` is the start of the token's hash (see `session_key`): a removed user, or one issued a new token,
        is signed out at once.
        """
        with self._db() as db:
            row = db.execute("SELECT name, role, token_sha256 FROM users WHERE name = ?", (name,)).fetchone()
        if row is None or not key or session_key(row["token_sha256"]) != key:
            return None
        return User(row["name"], row["role"])

    # audit

    def audit(self, user: str, action: str, target: str, detail: str, origin: str) -> None:
        """Append one line to the audit log: who did what to what, when, and from where."""
        with self._db() as db:
            db.execute(
                "INSERT INTO audit (at, user, action, target, detail, origin) VALUES (?, ?, ?, ?, ?, ?)",
                (now(), user, action, target, detail, origin),
            )

    def audit_log(self, limit: int = 500) -> list[dict[str, Any]]:
        """The newest audit lines first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
            return [dict(r) for r in rows]

    # jobs

    def enqueue(self, kind: str, spec: dict[str, Any], argv: list[str], by: str) -> Job:
        """Queue a job behind every other queued one."""
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO jobs (kind, spec, argv, status, requested_by, created) VALUES (?, ?, ?, ?, ?, ?)",
                (kind, json.dumps(spec), json.dumps(argv), QUEUED, by, now()),
            )
            job_id = int(cur.lastrowid or 0)
        return self.job(job_id)

    def claim_next(self) -> Job | None:
        """Mark the oldest queued job running and return it (None when nothing waits)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM jobs WHERE status = ? ORDER BY id LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            db.execute(
                "UPDATE jobs SET status = ?, started = ?, attempts = attempts + 1 WHERE id = ?",
                (RUNNING, now(), row["id"]),
            )
            db.execute("COMMIT")
        return self.job(row["id"])

    def finish(self, job_id: int, exit_code: int, runs: list[dict[str, str]]) -> None:
        """Record a job's end: succeeded on exit code 0, else failed."""
        with self._db() as db:
            db.execute(
                "UPDATE jobs SET status = ?, finished = ?, exit_code = ?, runs = ? WHERE id = ?",
                (SUCCEEDED if exit_code == 0 else FAILED, now(), exit_code, json.dumps(runs), job_id),
            )

    def set_pid(self, job_id: int, pid: int) -> None:
        """Remember the process running a job (a console that died leaves it to be stopped at the next start)."""
        with self._db() as db:
            db.execute("UPDATE jobs SET pid = ? WHERE id = ?", (pid, job_id))

    def requeue_running(self) -> list[Job]:
        """Put jobs left running by a stopped console back in the queue (oldest first, as before); those jobs."""
        with self._db() as db:
            rows = list(db.execute("SELECT * FROM jobs WHERE status = ?", (RUNNING,)))
            db.execute("UPDATE jobs SET status = ?, started = NULL, pid = NULL WHERE status = ?", (QUEUED, RUNNING))
        return [_job(r) for r in rows]

    def job(self, job_id: int) -> Job:
        """A job by id.

        Raises:
            FieldguideError: when there is no such job.
        """
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise FieldguideError(f"no run {job_id}")
        return _job(row)

    def jobs(self, limit: int = 100) -> list[Job]:
        """The newest jobs first."""
        with self._db() as db:
            return [_job(r) for r in db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    for key in ("spec", "argv", "runs"):
        data[key] = json.loads(data[key])
    return Job(**data)
