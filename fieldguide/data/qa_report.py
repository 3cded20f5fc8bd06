"""QA outside any pipeline, and the QA report as text (terminal) and HTML (ZenML visualization)."""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.table import Table

from fieldguide.config import QARules
from fieldguide.data.catalog import default_taxonomy, load_taxonomy, read_bytes, read_catalog
from fieldguide.data.manifest import dataset_version_id
from fieldguide.data.qa import REASONS, QAResult, run_qa

EXAMPLES_PER_REASON = 5


def qa_catalog(
    catalog: str,
    taxonomy: str | None,
    rules: QARules,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[QAResult, str]:
    """Ingest and QA a catalog; return the result and its dataset version id."""
    tax_path = taxonomy if taxonomy else default_taxonomy(catalog, storage_options)
    tax = load_taxonomy(tax_path, storage_options) if tax_path else None
    result = run_qa(
        read_catalog(catalog, storage_options),
        rules,
        tax,
        source=catalog,
        storage_options=storage_options,
        progress=progress,
    )
    return result, dataset_version_id(result.valid, rules.version)


def examples_by_reason(result: QAResult, n: int = EXAMPLES_PER_REASON) -> dict[str, list]:
    """Up to `n` rejected rows per reason, in catalog order."""
    out: dict[str, list] = defaultdict(list)
    for rej in result.rejected:
        if len(out[rej.reason]) < n:
            out[rej.reason].append(rej)
    return out


def render_qa_text(result: QAResult, version: str, console: Console | None = None) -> None:
    """Print a readable QA report: counts per reason with examples, warnings, and the dataset version."""
    console = console or Console()
    console.print(f"[bold]QA of {result.source}[/bold]  rules v{result.rules.version}")
    console.print(
        f"valid images: [green]{len(result.valid)}[/green]   rejected rows: [red]{len(result.rejected)}[/red]"
    )
    if result.rejected:
        table = Table("reason", "rows", "meaning", "examples (line: uri — detail)")
        examples = examples_by_reason(result, 3)
        for reason, count in result.reason_counts().items():
            lines = "\n".join(f"{r.line}: {r.uri} — {r.detail}" for r in examples[reason])
            table.add_row(reason, str(count), REASONS.get(reason, ""), lines)
        console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"dataset version: [bold]{version}[/bold]")


def _thumbnail(uri: str, storage_options: dict[str, Any] | None, size: int = 64) -> str:
    """A data: URI thumbnail of a rejected file, or '' when it cannot be shown (never decodes a bomb)."""
    from PIL import Image

    try:
        data = read_bytes(uri, storage_options)
        if len(data) > 20_000_000:
            return ""
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > 50_000_000:
                return ""
            img.draft("RGB", (size, size))
            img.load()
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, "PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a report must render even when a rejected file is hostile
        return ""


def qa_html(result: QAResult, version: str, storage_options: dict[str, Any] | None = None) -> str:
    """Self-contained HTML report: reason counts, warnings, and thumbnails of rejected examples."""
    esc = html.escape
    parts = [
        "<html><head><meta charset='utf-8'><style>body{font-family:sans-serif}td,th{padding:4px 8px;"
        "border-bottom:1px solid #ddd;text-align:left}.ex{display:inline-block;margin:4px;width:150px;"
        "font-size:11px;vertical-align:top}.ex img{width:64px;height:64px;image-rendering:pixelated}"
        ".noimg{width:64px;height:64px;background:#eee;display:flex;align-items:center;justify-content:center}"
        "</style></head><body>",
        f"<h2>QA report — {esc(version)}</h2><p>source: {esc(result.source)}; rules v{esc(result.rules.version)}</p>",
        f"<p><b>{len(result.valid)}</b> valid images, <b>{len(result.rejected)}</b> rejected rows.</p>",
    ]
    if result.warnings:
        parts.append("<ul>" + "".join(f"<li>⚠ {esc(w)}</li>" for w in result.warnings) + "</ul>")
    parts.append("<table><tr><th>reason</th><th>rows</th><th>meaning</th></tr>")
    for reason, count in result.reason_counts().items():
        parts.append(f"<tr><td>{esc(reason)}</td><td>{count}</td><td>{esc(REASONS.get(reason, ''))}</td></tr>")
    parts.append("</table>")
    for reason, rows in examples_by_reason(result).items():
        parts.append(f"<h3>{esc(reason)}</h3>")
        for rej in rows:
            unshown = ("too_many_pixels", "missing", "uri_not_allowed")
            thumb = _thumbnail(rej.uri, storage_options) if rej.reason not in unshown else ""
            img = f"<img src='{thumb}'>" if thumb else "<div class='noimg'>no preview</div>"
            parts.append(f"<div class='ex'>{img}<br>line {rej.line}: {esc(rej.label)}<br>{esc(rej.detail)}</div>")
    parts.append("</body></html>")
    return "".join(parts)
