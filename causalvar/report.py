"""One self-contained HTML page for a run folder: ``causalvar report RUN_DIR`` -> ``RUN_DIR/report.html``.

Every results folder under the run (one with a ``results.json``: a localization, a patching, a validation
or a dictionary evaluation) becomes a section: its settings, what each dataset's filter did, its figures
(embedded as data), a layer × position grid whose cells show their numbers on hover, the best cells and
MIB scores where they apply, and the whole table, sortable by any column. Nothing is fetched when the page
is viewed: no script, style sheet, font or image comes from the network.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd

from .metrics import layer_order, position_labels
from .results import Results
from .runstore import write_text

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 12px; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f3f3f3; cursor: pointer; position: sticky; top: 0; }
table.grid td { width: 3.6em; text-align: center; }
.kv td:first-child { text-align: left; font-weight: 600; } .kv td { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: .4em 0; }
.scroll { max-height: 28em; overflow: auto; display: inline-block; }
.note { color: #666; }
"""

_SORT = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const up = th.dataset.up !== "1"; th.dataset.up = up ? "1" : "0";
  const key = r => { const t = r.cells[col].textContent, x = parseFloat(t); return isNaN(x) ? t : x; };
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (up ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
}));
"""


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from every results folder under ``run_dir``; returns its path. A folder
    with no results is refused, naming what was looked for."""
    run = Path(run_dir)
    folders = sorted({p.parent for p in run.rglob("results.json")}) if run.is_dir() else []
    if not folders:
        raise ValueError(f"{run} holds no results (no results.json in it or below it); run `causalvar demo`, "
                         "`causalvar localize ... --out DIR` or `causalvar patch ... --out DIR` first")
    sections = [_section(folder, run) for folder in folders]
    toc = "".join(f'<li><a href="#s{i}">{html.escape(title)}</a></li>' for i, (title, _) in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{html.escape(title)}</h2>{content}' for i, (title, content) in enumerate(sections))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>causalvar report: {html.escape(run.name)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>causalvar report: {html.escape(str(run))}</h1>"
            f"<p class='note'>{len(folders)} results folder(s). Hover a grid cell for its numbers; click a table "
            f"header to sort.</p><ul>{toc}</ul>{body}<script>{_SORT}</script></body></html>")
    path = run / "report.html"
    write_text(path, page)
    return path


def _kind(meta: dict) -> str:
    if "corruption" in meta:
        return "activation patching"
    if "confidence" in meta and "steps" in meta:
        return "validation"
    if "variables" in meta and "featurizers" in meta:
        return "localization"
    return "results"


def _section(folder: Path, run: Path) -> tuple[str, str]:
    blob = json.loads((folder / "results.json").read_text())
    meta, rows = blob.get("meta", {}), blob.get("rows", [])
    kind = _kind(meta)
    name = str(folder.relative_to(run)) if folder != run else run.name
    table = _ordered(kind, rows, meta)
    parts = [_settings(meta), _reports(meta.get("data"))]
    parts += [f"<img alt='{html.escape(p.name)}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
              for p in sorted(folder.glob("*.png"))]
    metric = meta.get("metric", "iia")
    if kind in ("localization", "activation patching") and metric in table:
        parts.append(_grids(table, metric, kind))
    if kind == "localization" and rows:
        res = Results(rows, meta)
        parts.append("<h3>Best cell per variable and featurizer</h3>" + _table(res.best()))
        if "position" in table and table["position"].notna().any():
            parts.append("<h3>MIB scores (mean over layers of the best position; best layer)</h3>" + _table(res.mib_score()))
    parts.append(f"<h3>Every row ({len(table)})</h3><div class='scroll'>{_table(table)}</div>")
    return f"{name} — {kind}", "".join(parts)


def _ordered(kind: str, rows: list[dict], meta: dict) -> pd.DataFrame:
    """The rows as their analysis's results table orders them (its leading columns first)."""
    from .patching import PatchingResults
    from .validate import ValidationResults

    cls = {"localization": Results, "activation patching": PatchingResults, "validation": ValidationResults}.get(kind)
    return pd.DataFrame(rows) if cls is None or not rows else cls(rows, meta).table


def _settings(meta: dict) -> str:
    shown = {k: v for k, v in meta.items() if k != "data"}
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_text(v))}</td></tr>" for k, v in shown.items())
    return f"<h3>Settings</h3><table class='kv'>{cells}</table>"


def _reports(data) -> str:
    """Each dataset's filtering report (a localization's and a patching's ``meta["data"]``)."""
    if not isinstance(data, dict) or not data:
        return ""
    items = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape('; '.join(map(str, v)) if isinstance(v, list) else str(v))}</li>"
                    for k, v in data.items())
    return f"<h3>Data and filters</h3><ul>{items}</ul>"


def _grids(table: pd.DataFrame, metric: str, kind: str) -> str:
    """A layer × position (or head) grid per variable and featurizer (per corruption for patching), each
    cell coloured by the metric, its numbers in the hover text (mean over counterfactual sets)."""
    across = "head" if "head" in table and table["head"].notna().any() else "position"
    groups = ["variable", "featurizer"] if kind == "localization" else ["corruption", "component"]
    groups = [g for g in groups if g in table]
    out = []
    for key, sub in (table.groupby(groups, sort=False) if groups else [((), table)]):
        sub = sub.assign(**{across: position_labels(sub[across])})  # None -> "None" (pandas 3 keeps it missing)
        cols = list(dict.fromkeys(sub[across]))
        layers = layer_order(sub["layer"])
        mean = sub.groupby(["layer", across], sort=False).mean(numeric_only=True)
        values = mean[metric].dropna()
        lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = ""
        for layer in reversed(layers):
            cells = ""
            for c in cols:
                if (layer, c) not in mean.index:
                    cells += "<td></td>"
                    continue
                row = mean.loc[(layer, c)]
                v = float(row[metric])
                tip = "; ".join(f"{k}={row[k]:.4g}" for k in (metric, "ci_low", "ci_high", "baseline", "n",
                                                             "control_mean", "control_max") if k in row and not pd.isna(row[k]))
                cells += (f"<td title='layer {html.escape(str(layer))}, {html.escape(c)}: {html.escape(tip)}' "
                          f"style='background:{_colour(v, lo, hi)}'>{v:.2f}</td>")
            body += f"<tr><th>{html.escape(str(layer))}</th>{cells}</tr>"
        label = " · ".join(map(str, key if isinstance(key, tuple) else (key,)))
        out.append(f"<h3>{html.escape(label or metric)}: {html.escape(metric)} by layer × {across}</h3>"
                   f"<table class='grid'><thead><tr><th>layer</th>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "".join(out)


def _colour(v: float, lo: float, hi: float) -> str:
    """A light-to-dark blue for ``v`` between ``lo`` and ``hi`` (white for NaN)."""
    if math.isnan(v):
        return "#fff"
    t = 0.0 if hi <= lo else (v - lo) / (hi - lo)
    r, g, b = (int(247 - t * (247 - 8)), int(251 - t * (251 - 81)), int(255 - t * (255 - 156)))
    return f"rgb({r},{g},{b})" + (";color:#fff" if t > 0.6 else "")


def _table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (list, dict)):
        text = json.dumps(v, default=str)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(v)
