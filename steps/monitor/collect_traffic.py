"""Step: the production answers of one release in a time window, with the feedback on them."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from zenml import log_metadata, step

from fieldguide.errors import FieldguideError
from fieldguide.monitor.reference import load_reference
from fieldguide.monitor.window import load_window, parse_since
from fieldguide.serve.servers import release_folder
from registry.releases import get_release, production_release


@step(enable_cache=False)
def collect_traffic(
    monitor_dir: str, since: str, until: str = "", release_id: str = ""
) -> tuple[
    Annotated[pd.DataFrame, "predictions"], Annotated[pd.DataFrame, "feedback"], Annotated[dict[str, Any], "window"]
]:
    """Read every production server's prediction and feedback logs for [since, until).

    `since` is a duration back from now or an ISO time, `until` an ISO time or '' for now, `release_id` '' for the
    release in production now: all resolved when the step runs, so a scheduled run watches its own last window.
    """
    release = get_release(release_id) if release_id else production_release()
    if release is None:
        raise FieldguideError("no release in production: nothing to monitor")
    now = datetime.now(UTC)
    start, end = parse_since(since, now), parse_since(until, now) if until else now
    width = int(load_reference(release_folder(release.id)).meta["width"])
    window = load_window(Path(monitor_dir), release.id, width, start, end)
    info = {
        "release": release.id,
        "version_ids": release.version_ids,
        "since": window.since,
        "until": window.until,
        "requests": len(window.predictions),
        "feedback": len(window.feedback),
        "other_releases": window.other_releases,
    }
    print(
        f"window {window.since} → {window.until}: {info['requests']} answers of {release.id}, {info['feedback']} "
        f"with feedback ({window.other_releases} answers of other releases left out)"
    )
    log_metadata(metadata={"window": info})
    return window.predictions, window.feedback, info
