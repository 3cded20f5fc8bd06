"""Approval rules of the registry: who may approve what, and the record each decision leaves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fieldguide.errors import FieldguideError

PENDING, APPROVED, REJECTED, GATE_FAILED, DUPLICATE = "pending", "approved", "rejected", "gate_failed", "duplicate"
STATES = (PENDING, APPROVED, REJECTED, GATE_FAILED, DUPLICATE)


class ApprovalError(FieldguideError):
    """A decision the registry refuses (unknown version, not eligible, already decided)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def initial_approval(gate: dict[str, Any], same_as: str = "") -> dict[str, Any]:
    """Approval record of a freshly evaluated version: pending when it passed the gate, else not eligible."""
    if same_as:
        return {"state": DUPLICATE, "by": "", "at": _now(), "note": f"same weights as {same_as}", "forced": False}
    if not gate.get("passed"):
        reasons = "; ".join(gate.get("reasons", [])) or "no gate verdict"
        return {"state": GATE_FAILED, "by": "", "at": _now(), "note": reasons, "forced": False}
    return {"state": PENDING, "by": "", "at": _now(), "note": "", "forced": False}


def decide(
    label: str, current: dict[str, Any], gate_passed: bool, action: str, by: str, note: str = "", force: bool = False
) -> dict[str, Any]:
    """The approval record after `action` ("approve" or "reject") by `by` on a version whose record is `current`.

    Raises:
        ApprovalError: when `by` is empty, the version is a duplicate or already in that state, or (approving) it
            did not pass the quality gate and `force` is not set.
    """
    if not by.strip():
        raise ApprovalError("--by NAME is required: approvals record who decided")
    state = current.get("state", "")
    target = APPROVED if action == "approve" else REJECTED
    if state == DUPLICATE:
        raise ApprovalError(f"{label} is not eligible: {current.get('note', 'a duplicate')}; decide on that version")
    if state == target:
        raise ApprovalError(f"{label} is already {target} (by {current.get('by') or '?'} at {current.get('at')})")
    forced = action == "approve" and not gate_passed
    if forced and not force:
        why = current.get("note") if state == GATE_FAILED else "no passing evaluation recorded"
        raise ApprovalError(f"{label} failed the quality gate ({why}); pass --force to approve it anyway")
    return {"state": target, "by": by.strip(), "at": _now(), "note": note, "forced": forced, "previous": state}
