"""Parameters versus Δm: the plot the paper's Fig. 2b draws, for every trained model.

Two steps, as everywhere in branchnas: :func:`pareto_data` turns the results table into plain
data (points, the Pareto front, the search's budget path), :func:`plot_pareto` draws it into
an Axes; :func:`write_pareto` does both and writes PNG + CSV.

Δm comes in two figures (see :func:`branchnas.tasks.task_delta_m`): ``delta_m`` on each task's
primary measure (the paper's), and ``delta_m_all`` over every metric averaged per task. The
CSV holds both with a Pareto-front flag for each; the PNG draws one panel per figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["pareto_front", "pareto_data", "plot_pareto", "write_pareto", "DELTA_M_COLUMNS"]

# result column -> axis label, for the two Δm figures
DELTA_M_COLUMNS = {"delta_m": "Δm (%), primary measure per task",
                   "delta_m_all": "Δm (%), mean over all metrics"}


def _finite(v: Any) -> Optional[float]:
    return None if v is None or v != v else float(v)

# Marker and colour per model kind: each baseline's registry metadata
# (branchnas.models.baselines.model_style); trees get the default.


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point beats: fewer-or-equal params and higher-or-equal
    Δm, strictly better in one. Sorted by params.

    Example:
        >>> pareto_front([(1, 0.0), (2, -1.0), (3, 2.0)])
        [0, 2]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: List[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_data(table: Any, budget_path: Optional[Sequence[Dict[str, Any]]] = None,
                column: str = "delta_m") -> Dict[str, Any]:
    """Plain data for the plot from a :func:`~branchnas.pipeline.results.results_table`.

    The single-task networks appear as one point (all tasks' networks together, Δm = 0).

    Args:
        table: the results table (rows with model, name, params, delta_m, delta_m_all).
        budget_path: optional search path, a list of ``{"params": ..., "delta_m": ...,
            "delta_m_all": ...}`` (trained picks along increasing budgets), drawn as a line.
        column: the Δm the front and the path are drawn on: ``delta_m`` (primary measure)
            or ``delta_m_all``.

    Returns:
        ``{"column", "points": [{"model", "name", "params", "delta_m", "delta_m_all"}...],
        "front": [names], "path": [(params, Δm)...]}``; points lacking ``column`` are left out.
    """
    if column not in DELTA_M_COLUMNS:
        raise ValueError(f"column must be one of {list(DELTA_M_COLUMNS)}, got {column!r}")
    points: List[Dict[str, Any]] = []
    singles = table[table["model"] == "single"] if len(table) else table
    if len(singles):
        points.append({"model": "single", "name": "single-task",
                       "params": int(singles["params"].sum()), "delta_m": 0.0, "delta_m_all": 0.0})
    for _, row in (table[table["model"] != "single"] if len(table) else table).iterrows():
        values = {c: _finite(row[c]) if c in row else None for c in DELTA_M_COLUMNS}
        if values[column] is None:
            continue
        points.append({"model": row["model"], "name": row["name"], "params": int(row["params"]),
                       **values})
    front = pareto_front([(p["params"], p[column]) for p in points])
    path = sorted((float(p["params"]), float(p[column])) for p in (budget_path or [])
                  if _finite(p.get(column)) is not None)
    return {"column": column, "points": points, "front": [points[i]["name"] for i in front],
            "path": path}


def plot_pareto(data: Dict[str, Any], ax: Any = None, title: str = "") -> Any:
    """Draw :func:`pareto_data`'s output (x: params, log scale; y: its Δm column); returns the Axes."""
    from .._figure import agg_figure
    from ..models.baselines import model_style

    if ax is None:
        ax = agg_figure(figsize=(7, 4.5)).subplots()
    column = data.get("column", "delta_m")
    seen = set()
    for p in data["points"]:
        marker, colour = model_style(p["model"])
        label = p["model"] if p["model"] not in seen else None
        seen.add(p["model"])
        ax.scatter(p["params"], p[column], marker=marker, color=colour, s=45, label=label,
                   zorder=3)
        ax.annotate(p["name"], (p["params"], p[column]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    if data["path"]:
        xs, ys = zip(*data["path"])
        ax.plot(xs, ys, "-", color="tab:blue", alpha=0.6, label="search budget path")
    front = [p for p in data["points"] if p["name"] in set(data["front"])]
    if len(front) > 1:
        front.sort(key=lambda p: p["params"])
        ax.step([p["params"] for p in front], [p[column] for p in front], where="post",
                color="black", linestyle=":", linewidth=1, label="Pareto front")
    ax.axhline(0.0, color="gray", linewidth=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(DELTA_M_COLUMNS[column] + " vs single-task")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    return ax


def write_pareto(table: Any, out_dir: Union[str, Path], budget_path: Optional[Sequence[Dict[str, Any]]] = None,
                 title: str = "") -> Tuple[Path, Path]:
    """Write ``pareto.png`` (a panel per Δm figure) and ``pareto.csv`` (one row per point with
    both Δm and an on-front flag for each)."""
    import csv

    from .._figure import agg_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {c: pareto_data(table, budget_path, c) for c in DELTA_M_COLUMNS}
    fig = agg_figure(figsize=(7 * len(data), 4.5))
    axes = fig.subplots(1, len(data), squeeze=False)
    for ax, (column, d) in zip(axes[0], data.items()):
        plot_pareto(d, ax, title=f"{title} ({'primary measure' if column == 'delta_m' else 'all metrics'})"
                    if title else "")
    png = out / "pareto.png"
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    csv_path = out / "pareto.csv"
    fronts = {c: set(d["front"]) for c, d in data.items()}
    # every point with a primary Δm; a missing all-metrics Δm is left blank
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["model", "name", "params", "delta_m", "delta_m_all", "on_front", "on_front_all"])
        for p in data["delta_m"]["points"]:
            w.writerow([p["model"], p["name"], p["params"], f"{p['delta_m']:.4f}",
                        "" if p["delta_m_all"] is None else f"{p['delta_m_all']:.4f}",
                        p["name"] in fronts["delta_m"], p["name"] in fronts["delta_m_all"]])
    return png, csv_path
