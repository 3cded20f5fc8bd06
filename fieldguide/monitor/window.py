"""A window of production traffic, read back from the prediction and feedback logs, per model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from fieldguide.data.images import IMAGE_FEATURES
from fieldguide.errors import FieldguideError
from fieldguide.monitor.capture import FEEDBACK, PREDICTIONS, read_records
from fieldguide.monitor.reference import ROUTER, Reference, embedding_columns

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(since: str, now: datetime | None = None) -> datetime:
    """A window start from a duration back from now (`90m`, `24h`, `7d`) or an ISO time (UTC when naive).

    Raises:
        FieldguideError: neither form.
    """
    now = now or datetime.now(UTC)
    if match := _DURATION.match(since.strip()):
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        at = datetime.fromisoformat(since.strip())
    except ValueError:
        raise FieldguideError(f"--since {since!r}: give a duration (30m, 24h, 7d) or an ISO time") from None
    return as_utc(at)


def as_utc(at: datetime) -> datetime:
    """`at` with a time zone: a naive time is UTC (ZenML and ISO strings without an offset store them so)."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass
class Window:
    """The logged answers of one release in [since, until), and the feedback on them (latest per request)."""

    release: str
    since: str
    until: str
    predictions: pd.DataFrame  # one row per answer: features, router_emb_*, child_emb_*, answers, confidences
    feedback: pd.DataFrame  # one row per request with feedback: wrong, group_given, answered_*, child_model
    other_releases: int = 0  # answers in the window from other releases (not compared with this reference)


def answers_in(folder: Path, release: str, since: datetime, until: datetime) -> tuple[list[dict], int]:
    """One release's logged answers in [since, until) from every server under `folder`.

    Returns:
        The answers, and how many answers of other releases the window holds.
    """
    records = read_records(folder, PREDICTIONS, since, until)
    mine = [r for r in records if r.get("release") == release]
    return mine, len(records) - len(mine)


def load_window(folder: Path, release: str, width: int, since: datetime, until: datetime | None = None) -> Window:
    """Read the logs of every production server under `folder` for one release's answers in the window."""
    until = until or datetime.now(UTC)
    mine, others = answers_in(folder, release, since, until)
    predictions = window_frame(mine, width)
    answered = set(predictions["request_id"]) if len(predictions) else set()
    feedback = [f for f in read_records(folder, FEEDBACK, since) if f.get("request_id") in answered]
    latest = {f["request_id"]: f for f in feedback}  # records are in time order: the last one wins
    return Window(
        release,
        since.isoformat(timespec="seconds"),
        until.isoformat(timespec="seconds"),
        predictions,
        pd.DataFrame(list(latest.values())),
        others,
    )


def window_frame(records: list[dict], width: int) -> pd.DataFrame:
    """Prediction-log records as a table: answers, confidences, features, and the embeddings as columns."""
    rows = []
    for r in records:
        row = {k: r.get(k) for k in ("request_id", "timestamp", "group", "group_probability", "child_model")}
        row |= {k: r.get(k) for k in ("child_species", "child_confidence", "species", "species_probability")}
        row |= {k: r.get(k, np.nan) for k in IMAGE_FEATURES}
        for prefix in ("router", "child"):
            values = list(r.get(f"{prefix}_embedding") or [])[:width]
            row |= dict(zip(embedding_columns(prefix, width), values + [0.0] * (width - len(values)), strict=True))
        rows.append(row)
    return pd.DataFrame(rows)


# The columns one model is judged on, in the reference and in the window alike.
PREDICTED, CONFIDENCE = "predicted", "confidence"


def model_embedding(width: int) -> list[str]:
    """The embedding columns of a model frame (the router's or the child's reduced embedding)."""
    return [f"emb_{i}" for i in range(width)]


def model_frame(table: pd.DataFrame, model: str, width: int) -> pd.DataFrame:
    """A model's rows in the shape the drift report compares: image features, its embedding, answer, confidence.

    The router sees every row and answers a group with its probability. A child sees the rows routed to it; its
    class is its own top-1 species, its confidence that of the answers it gave (the two-stage top-1 probability,
    what the user was told): a photo the child does not know shows there even when the child alone stays sure.
    """
    if not len(table):
        return pd.DataFrame(columns=[*IMAGE_FEATURES, *model_embedding(width), PREDICTED, CONFIDENCE])
    router = model == ROUTER
    rows = table if router else table[table["child_model"] == model]
    prefix = "router" if router else "child"
    out = rows[list(IMAGE_FEATURES)].astype(float).reset_index(drop=True)
    emb = rows[embedding_columns(prefix, width)].to_numpy(dtype=float)
    out[model_embedding(width)] = emb
    out[PREDICTED] = rows["group" if router else "child_species"].astype(str).to_numpy()
    out[CONFIDENCE] = rows["group_probability" if router else "species_probability"].astype(float).to_numpy()
    return out


def reference_accuracy(reference: Reference, model: str) -> float:
    """A model's accuracy on its reference rows, as feedback measures it (router: the group; child: the answer)."""
    rows = reference.rows_of(model)
    column = "router_correct" if model == ROUTER else "correct"
    return float(rows[column].mean()) if len(rows) else float("nan")


def feedback_accuracy(feedback: pd.DataFrame, model: str) -> tuple[float, int]:
    """The share of a model's answers that feedback confirmed, and how many answers had feedback.

    A child is judged on the answers it gave (`wrong` or a different species is a miss); the router on the
    corrections that name a species (its group was right when the named species is of the group it chose).
    """
    if not len(feedback):
        return float("nan"), 0
    if model == ROUTER:
        named = feedback[feedback["group_given"].astype(str) != ""]
        right = named["group_given"] == named["answered_group"]
    else:
        right = ~feedback.loc[feedback["child_model"] == model, "wrong"].astype(bool)
    return (float(right.mean()), len(right)) if len(right) else (float("nan"), 0)
