"""The registry lock: approval decisions and rollouts happen one at a time on this machine.

A real file lock (filelock) under the state folder: a second `approve` waits for the first one's rollout, so it
composes its release from what is in production after it, and two rollouts never share the staging port.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from fieldguide.errors import FieldguideError

# One lock object per file in this process: FileLock counts re-entries, so a rollout started under an approval's
# lock does not wait for itself.
_LOCKS: dict[str, FileLock] = {}


def lock_file() -> Path:
    """The lock's file, beside the project's state (FIELDGUIDE_HOME)."""
    return Path(os.environ.get("FIELDGUIDE_HOME", ".fieldguide")) / "locks" / "registry.lock"


@contextlib.contextmanager
def registry_lock(timeout_s: float = 3600, what: str = "") -> Iterator[None]:
    """Hold the registry lock; waits (printing once) while another process holds it.

    Raises:
        FieldguideError: after `timeout_s` seconds of waiting.
    """
    path = lock_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _LOCKS.setdefault(str(path), FileLock(str(path)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another approval or rollout to finish{f' before {what}' if what else ''}", flush=True)
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise FieldguideError(f"the registry lock {path} was held for over {timeout_s:.0f} s") from None
    try:
        yield
    finally:
        lock.release()
