"""``branchnas report RUN_DIR``: a self-contained HTML report (images inlined) and markdown.

Δm is shown twice: on each task's primary measure (the paper's) and over all its metrics.

Sections: the tasks, affinity heatmaps and affinity versus depth, the recommended trees drawn
as trees, the Pareto plot, and the metric table of every trained model. Everything is read
from the run directory (``summary.json``, ``pipeline.json``, the affinity file, the results
store), so a report can be rebuilt at any time.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from ..errors import BranchnasError
from ..training.rundir import atomic_write_text
from .layout import RunLayout
from .results import results_table

__all__ = ["write_report", "report_data"]


def report_data(run_dir: Union[str, Path]) -> Dict[str, Any]:
    """Gather what the report shows, as plain data (plots are written to ``<run_dir>/plots``).

    Raises:
        BranchnasError: when ``run_dir`` holds no finished pipeline run (no summary.json).
    """
    from ..affinity import write_affinity_plots
    from ..tasks import create_task

    root = Path(run_dir)
    layout = RunLayout(root)
    summary_path = layout.summary_json
    if not summary_path.is_file():
        raise BranchnasError(f"{root} has no summary.json; run `branchnas run --out {root}` first")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    pipeline = json.loads(layout.pipeline_json.read_text(encoding="utf-8"))
    space = pipeline["space_resolved"]
    tasks = []
    for t in space["tasks"]:
        task = create_task(t["name"], t["type"], primary=t.get("primary"), **t.get("params", {}))
        tasks.append({"name": t["name"], "type": t["type"], "head": t.get("head", ""),
                      "primary": task.primary,
                      "metrics": ", ".join(f"{m} {'↑' if up else '↓'}" for m, up in task.metrics.items())})
    # stored paths are relative to the run directory (older runs: as given; re-rooted here)
    for key in ("affinity", "pareto_png", "pareto_csv"):
        if summary.get(key) is not None:
            summary[key] = str(layout.resolve(summary[key], summary.get("out")))
    affinity_pngs = [str(p) for p in write_affinity_plots(summary["affinity"], layout.plots)]
    table = results_table(root, space=summary["space"])
    metric_cols = [c for c in table.columns if "/" in c]
    rows: List[Dict[str, Any]] = []
    for _, r in table.sort_values(["model", "params"]).iterrows():
        rows.append({"name": r["name"], "model": r["model"], "params": int(r["params"]),
                     **{c: None if c not in r or r[c] is None or r[c] != r[c] else float(r[c])
                        for c in ("delta_m", "delta_m_all")},
                     "epochs": _int_or_none(r.get("extra.epochs")),
                     "stop": r.get("extra.stop_reason") if isinstance(r.get("extra.stop_reason"), str) else None,
                     "images": _int_or_none(r.get("extra.images_seen")),
                     "seconds": None if r.get("extra.seconds") is None or r.get("extra.seconds") != r.get("extra.seconds")
                     else round(float(r["extra.seconds"]), 1),
                     "device": r.get("extra.device") if isinstance(r.get("extra.device"), str) else None,
                     **{c: (None if r[c] != r[c] else float(r[c])) for c in metric_cols}})
    return {"summary": summary, "tasks": tasks, "affinity_pngs": affinity_pngs,
            "metric_columns": metric_cols, "rows": rows}


def _int_or_none(v: Any) -> Any:
    return None if v is None or v != v else int(v)


def _img(path: Union[str, Path]) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    alt = html.escape(Path(path).stem.replace("_", " ").replace("-", " "), quote=True)  # "affinity rsa heatmaps"
    return f'<img src="data:image/png;base64,{data}" alt="{alt}" style="max-width:100%">'


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header: List[str], rows: List[List[Any]]) -> Tuple[str, str]:
    """The same table as HTML and as markdown."""
    h = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows) + "</table>"
    md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" + "".join(
        "| " + " | ".join(_fmt(v) for v in row) + " |\n" for row in rows)
    return h, md


def write_report(run_dir: Union[str, Path]) -> Tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` into ``run_dir``."""
    from ..search import format_budget
    from .pareto_svg import report_pareto_svg

    root = Path(run_dir)
    layout = RunLayout(root)
    data = report_data(root)
    s = data["summary"]
    parts_html: List[str] = []
    parts_md: List[str] = []

    def section(title: str, body_html: str, body_md: str) -> None:
        parts_html.append(f"<h2>{html.escape(title)}</h2>\n{body_html}")
        parts_md.append(f"## {title}\n\n{body_md}\n")

    h, m = _table(["task", "type", "head", "metrics", "Δm measure"],
                  [[t["name"], t["type"], t["head"], t["metrics"], t["primary"]] for t in data["tasks"]])
    section("Tasks", h, m)
    section("Task affinity",
            "".join(_img(p) for p in data["affinity_pngs"]) + f"<p>file: {html.escape(layout.relative(s['affinity']))}</p>",
            "".join(f"![affinity]({layout.relative(p)})\n\n" for p in data["affinity_pngs"])
            + f"file: `{layout.relative(s['affinity'])}`\n")
    trees_html, trees_md = [], []
    for r in s["recommended"]:
        dm = "n/a" if r["delta_m"] is None else f"{r['delta_m']:+.2f}%"
        dm_all = "n/a" if r.get("delta_m_all") is None else f"{r['delta_m_all']:+.2f}%"
        head = (f"budget {format_budget(r['budget'])}: params {format_budget(r['params'])}, "
                f"clustering cost {r['cost']:.4f}, Δm {dm} (all metrics {dm_all})")
        trees_html.append(f"<h3>{html.escape(head)}</h3><pre>{html.escape(r['ascii'])}</pre>")
        trees_md.append(f"### {head}\n\n```\n{r['ascii']}\n```\n")
    section("Recommended trees", "".join(trees_html), "\n".join(trees_md))
    # the PNG, then the same points as SVG whose tooltips show each tree
    section("Parameters vs Δm", _img(s["pareto_png"]) + report_pareto_svg(root, s["space"]),
            f"![pareto]({layout.relative(s['pareto_png'])})\n")
    cols = data["metric_columns"]
    h, m = _table(["model", "name", "params", "Δm (%)", "Δm all (%)", "epochs", "stopped",
                   "images trained", "seconds", "device", *cols],
                  [[r["model"], r["name"], format_budget(r["params"]), r["delta_m"], r["delta_m_all"],
                    r["epochs"], r["stop"], r["images"], r["seconds"], r["device"], *[r[c] for c in cols]]
                   for r in data["rows"]])
    section("Metrics (validation split)", h, m)

    title = f"branchnas report: {s['space']} (profile {s['profile']})"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
            "table{border-collapse:collapse;font-size:13px;display:block;max-width:100%;overflow-x:auto}"  # wide tables scroll, not the page
            "td,th{border:1px solid #ccc;padding:3px 6px}"
            "pre{background:#f6f6f6;padding:.5em;overflow-x:auto}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>" + "\n".join(parts_html) + "</body></html>")
    html_path, md_path = layout.report_html, layout.report_md
    atomic_write_text(html_path, page)
    atomic_write_text(md_path, f"# {title}\n\n" + "\n".join(parts_md))
    return html_path, md_path
