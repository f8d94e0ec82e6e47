"""Parameters versus Δm: the plot the paper's Fig. 2b draws, for every trained model.

Two steps, as everywhere in branchnas: :func:`pareto_data` turns the results table into plain
data (points, the Pareto front, the search's budget path), :func:`plot_pareto` draws it into
an Axes; :func:`write_pareto` does both and writes PNG + CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["pareto_front", "pareto_data", "plot_pareto", "write_pareto"]

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


def pareto_data(table: Any, budget_path: Optional[Sequence[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Plain data for the plot from a :func:`~branchnas.pipeline.results.results_table`.

    The single-task networks appear as one point (all tasks' networks together, Δm = 0).

    Args:
        table: the results table (rows with model, name, params, delta_m).
        budget_path: optional search path, a list of ``{"params": ..., "delta_m": ...}``
            (trained picks along increasing budgets), drawn as a line.

    Returns:
        ``{"points": [{"model", "name", "params", "delta_m"}...], "front": [names],
        "path": [(params, delta_m)...]}``
    """
    points: List[Dict[str, Any]] = []
    singles = table[table["model"] == "single"] if len(table) else table
    if len(singles):
        points.append({"model": "single", "name": "single-task",
                       "params": int(singles["params"].sum()), "delta_m": 0.0})
    for _, row in (table[table["model"] != "single"] if len(table) else table).iterrows():
        if row["delta_m"] is None or row["delta_m"] != row["delta_m"]:
            continue
        points.append({"model": row["model"], "name": row["name"],
                       "params": int(row["params"]), "delta_m": float(row["delta_m"])})
    front = pareto_front([(p["params"], p["delta_m"]) for p in points])
    path = sorted((float(p["params"]), float(p["delta_m"])) for p in (budget_path or []))
    return {"points": points, "front": [points[i]["name"] for i in front], "path": path}


def plot_pareto(data: Dict[str, Any], ax: Any = None, title: str = "") -> Any:
    """Draw :func:`pareto_data`'s output (x: params, log scale; y: Δm %); returns the Axes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..models.baselines import model_style

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    seen = set()
    for p in data["points"]:
        marker, colour = model_style(p["model"])
        label = p["model"] if p["model"] not in seen else None
        seen.add(p["model"])
        ax.scatter(p["params"], p["delta_m"], marker=marker, color=colour, s=45, label=label,
                   zorder=3)
        ax.annotate(p["name"], (p["params"], p["delta_m"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    if data["path"]:
        xs, ys = zip(*data["path"])
        ax.plot(xs, ys, "-", color="tab:blue", alpha=0.6, label="search budget path")
    front = [p for p in data["points"] if p["name"] in set(data["front"])]
    if len(front) > 1:
        front.sort(key=lambda p: p["params"])
        ax.step([p["params"] for p in front], [p["delta_m"] for p in front], where="post",
                color="black", linestyle=":", linewidth=1, label="Pareto front")
    ax.axhline(0.0, color="gray", linewidth=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("Δm (%) vs single-task")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    return ax


def write_pareto(table: Any, out_dir: Union[str, Path], budget_path: Optional[Sequence[Dict[str, Any]]] = None,
                 title: str = "") -> Tuple[Path, Path]:
    """Write ``pareto.png`` and ``pareto.csv`` (one row per point, with an on-front flag)."""
    import csv

    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = pareto_data(table, budget_path)
    ax = plot_pareto(data, title=title)
    png = out / "pareto.png"
    ax.figure.tight_layout()
    ax.figure.savefig(png, dpi=120)
    plt.close(ax.figure)
    csv_path = out / "pareto.csv"
    front = set(data["front"])
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["model", "name", "params", "delta_m", "on_front"])
        for p in data["points"]:
            w.writerow([p["model"], p["name"], p["params"], f"{p['delta_m']:.4f}", p["name"] in front])
    return png, csv_path
