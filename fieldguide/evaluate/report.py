"""The evaluation report: one HTML page with metrics, per-class table and plots (confusion matrix, reliability)."""

from __future__ import annotations

import base64
import html
from typing import Any

from fieldguide.evaluate.metrics import Evaluation


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def report_html(ev: Evaluation, images: dict[str, str]) -> str:
    """The evaluation report as one HTML page; `images` maps captions to base64 PNGs."""
    gate = ev.gate
    verdict = ""
    if gate:
        reasons = "<br>".join(map(html.escape, gate.get("reasons", [])))
        verdict = (
            "<p class='pass'>Quality gate: passed</p>"
            if gate["passed"]
            else f"<p class='fail'>Quality gate: FAILED<br>{reasons}</p>"
        )
        if gate.get("production_top1") is not None:
            prod, top1 = gate["production_top1"], ev.metrics["top1"]
            verdict += (
                f"<p>Against production {html.escape(str(gate.get('production_version', '')))} on the same "
                f"{html.escape(ev.split)} split: top-1 {top1:.3f} vs {prod:.3f} ({top1 - prod:+.3f})</p>"
            )
    plots = "".join(
        f"<figure><img src='data:image/png;base64,{data}'><figcaption>{html.escape(cap)}</figcaption></figure>"
        for cap, data in images.items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(ev.model_name)} evaluation</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}.pass{{color:#070}}.fail{{color:#b00}}
figure{{display:inline-block;margin:0 1em}}img{{max-width:520px}}</style></head><body>
<h1>{html.escape(ev.model_name)}: evaluation on the {html.escape(ev.split)} split</h1>
<p>dataset version {html.escape(ev.dataset_version)} · {ev.n} images · {len(ev.classes)} classes ·
weights sha256 {html.escape(ev.weights_sha256[:16])}</p>{verdict}
<h2>Metrics</h2>{_table(["metric", "value"], [[k, v] for k, v in ev.metrics.items()])}
<h2>Per class</h2>{_table(["class", "precision", "recall", "f1", "support"], [list(r.values()) for r in ev.per_class])}
<h2>Most confused pairs</h2>{_table(["true", "predicted", "count"], [list(p.values()) for p in ev.confused_pairs])}
<h2>Plots</h2>{plots}</body></html>"""


def render_report(ev: Evaluation) -> tuple[str, dict[str, bytes]]:
    """The HTML report and its plots (confusion matrix, reliability diagram) as PNG files by name."""
    from fieldguide.evaluate.plots import confusion_plot, reliability_plot

    pngs = {
        "confusion_matrix.png": confusion_plot(ev.confusion, ev.classes, f"{ev.model_name}: confusion matrix"),
        "reliability.png": reliability_plot(ev.reliability, ev.metrics["ece"], f"{ev.model_name}: reliability"),
    }
    captions = {"confusion_matrix.png": "Confusion matrix", "reliability.png": "Reliability diagram"}
    images = {captions[name]: base64.b64encode(data).decode() for name, data in pngs.items()}
    return report_html(ev, images), pngs
