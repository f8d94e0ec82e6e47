"""The Pareto plot as inline SVG for the HTML report: hover a point to see its tree.

Same data as the PNG (:func:`~branchnas.pipeline.pareto.pareto_data`: parameters on a log
axis, Δm against the single-task networks), drawn as plain SVG so the report stays one
self-contained file with no script: each point carries a ``<title>`` (the browser's tooltip)
with its name, parameters, both Δm figures and, for a tree, the tree drawn as text.

Example:
    >>> data = {"column": "delta_m", "front": ["a"], "path": [],
    ...         "points": [{"model": "tree", "name": "a", "params": 1000, "delta_m": 1.5,
    ...                     "delta_m_all": 1.0}]}
    >>> svg = pareto_svg(data, {"a": "input\\n└── block 1: x"})
    >>> svg.startswith("<svg") and "<title>" in svg
    True
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["pareto_svg", "point_details", "report_pareto_svg"]

# Marker and colour per model kind, as in the PNG: each baseline's registry metadata
# (branchnas.models.baselines.model_style); trees get the default.


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _linear_ticks(lo: float, hi: float) -> List[float]:
    step = _nice_step(hi - lo)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> List[float]:
    """Ticks within [lo, hi] on a log axis: powers of ten, else 1-2-5, else every digit,
    whichever first gives at least three."""
    ticks: List[float] = []
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) >= 3:
            break
    return ticks


def _short(n: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _marker(shape: str, x: float, y: float, colour: str, r: float = 5.5) -> str:
    style = f'fill="{colour}" stroke="white" stroke-width="1"'
    if shape == "o":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" {style}/>'
    if shape == "s":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" {style}/>'
    polygons = {
        "D": [(0, -r * 1.2), (r * 1.2, 0), (0, r * 1.2), (-r * 1.2, 0)],
        "^": [(0, -r * 1.2), (r * 1.1, r * 0.9), (-r * 1.1, r * 0.9)],
        "v": [(0, r * 1.2), (r * 1.1, -r * 0.9), (-r * 1.1, -r * 0.9)],
        "P": [(-r / 3, -r), (r / 3, -r), (r / 3, -r / 3), (r, -r / 3), (r, r / 3), (r / 3, r / 3),
              (r / 3, r), (-r / 3, r), (-r / 3, r / 3), (-r, r / 3), (-r, -r / 3), (-r / 3, -r / 3)],
    }
    if shape not in polygons:  # a marker this drawing has no shape for: a circle
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" {style}/>'
    pts = polygons[shape]
    return '<polygon points="' + " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in pts) + f'" {style}/>'


def _label_y(placed: List[Tuple[float, float, float]], x: float, y: float, width: float) -> float:
    """A baseline for a label at ``x`` near ``y`` that does not cover a label already placed
    (points of equal size and Δm, e.g. the fully shared tree and the shared baseline, would
    otherwise print their names over each other); records the choice in ``placed``."""
    for shift in (0, 13, -13, 26, -26, 39, -39, 52):
        cand = y + shift
        if all(abs(cand - py) >= 12 or x + width <= px or px + pw <= x for px, py, pw in placed):
            break
    placed.append((x, cand, width))
    return cand


def pareto_svg(data: Mapping[str, Any], details: Optional[Mapping[str, str]] = None,
               width: int = 720, height: int = 420) -> str:
    """Draw :func:`~branchnas.pipeline.pareto.pareto_data` output as an SVG element.

    Args:
        data: ``{"column", "points", "front", "path"}`` from ``pareto_data``.
        details: extra tooltip text per point name (e.g. the tree as text).
        width: width in CSS pixels (the SVG scales down with the page: ``max-width:100%``).
        height: height in CSS pixels.

    Returns:
        ``<svg>...</svg>`` text; every point is a ``<g class="point">`` with a ``<title>``.
    """
    from ..models.baselines import model_style

    column = data.get("column", "delta_m")
    points = [p for p in data["points"] if p.get(column) is not None and p["params"] > 0]
    left, right, top, bottom = 64, 20, 16, 46
    pw, ph = width - left - right, height - top - bottom
    parts = [f'<svg class="pareto" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" style="max-width:100%;height:auto" role="img" '
             'aria-label="parameters versus Δm, one point per trained model">',
             "<style>.point{cursor:default}.point:hover>*{stroke:black;stroke-width:2}"
             "text{font:11px sans-serif}</style>"]
    if not points:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no trained model '
                     "with a Δm yet</text></svg>")
        return "".join(parts)
    xs = [float(p["params"]) for p in points]
    ys = [float(p[column]) for p in points] + [0.0]
    x_lo, x_hi = min(xs) / 1.25, max(xs) * 1.25
    pad = max((max(ys) - min(ys)) * 0.08, 0.5)
    y_lo, y_hi = min(ys) - pad, max(ys) + pad

    def sx(v: float) -> float:
        return left + pw * (math.log10(v) - math.log10(x_lo)) / (math.log10(x_hi) - math.log10(x_lo))

    def sy(v: float) -> float:
        return top + ph * (y_hi - v) / (y_hi - y_lo)

    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="white" stroke="#444"/>')
    for v in _log_ticks(x_lo, x_hi):
        x = sx(v)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#e4e4e4"/>'
                     f'<text x="{x:.1f}" y="{top + ph + 15}" text-anchor="middle">{_short(v)}</text>')
    for v in _linear_ticks(y_lo, y_hi):
        y = sy(v)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e4e4e4"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    parts.append(f'<line x1="{left}" y1="{sy(0):.1f}" x2="{left + pw}" y2="{sy(0):.1f}" stroke="#999"/>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">parameters (log scale)'
                 "</text>"
                 f'<text transform="translate(14,{top + ph / 2}) rotate(-90)" text-anchor="middle">'
                 f"Δm (%) vs single-task{'' if column == 'delta_m' else ', all metrics'}</text>")
    front = sorted((p for p in points if p["name"] in set(data.get("front", []))),
                   key=lambda p: p["params"])
    if len(front) > 1:  # a step line, as the PNG draws it
        d = f"M{sx(front[0]['params']):.1f},{sy(front[0][column]):.1f}"
        for q in front[1:]:
            d += f" H{sx(q['params']):.1f} V{sy(q[column]):.1f}"
        parts.append(f'<path d="{d}" fill="none" stroke="black" stroke-dasharray="2,3"/>')
    path: Sequence[Tuple[float, float]] = data.get("path") or []
    if len(path) > 1:
        parts.append('<polyline fill="none" stroke="#1f77b4" stroke-opacity="0.6" points="'
                     + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in path) + '"/>')
    placed: List[Tuple[float, float, float]] = []  # (x, y, width) of the labels drawn so far
    for p in points:
        x, y = sx(float(p["params"])), sy(float(p[column]))
        label_y = _label_y(placed, x + 7, y - 7, 6.2 * len(p["name"]))
        tip = [f"{p['name']} ({p['model']})", f"parameters {_short(p['params'])} ({p['params']:,})"]
        for key, label in (("delta_m", "Δm"), ("delta_m_all", "Δm over all metrics")):
            if p.get(key) is not None:
                tip.append(f"{label} {p[key]:+.2f}%")
        if details and details.get(p["name"]):
            tip += ["", details[p["name"]]]
        shape, colour = model_style(p["model"])
        parts.append(f'<g class="point"><title>{html.escape(chr(10).join(tip))}</title>'
                     + _marker(shape, x, y, colour)
                     + f'<text x="{x + 7:.1f}" y="{label_y:.1f}" fill="#333">{html.escape(p["name"])}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def point_details(table: Any) -> Dict[str, str]:
    """Tooltip text per results-table row name: a tree's drawing, a baseline's kind."""
    from ..tree import Tree

    out: Dict[str, str] = {"single-task": "one network per task"}
    for _, row in table.iterrows():
        tree = row.get("tree")
        if isinstance(tree, str) and tree:
            out[row["name"]] = Tree.from_json(json.loads(tree)).ascii()
        elif row["model"] != "single":
            out[row["name"]] = f"baseline: {row['model']}"
    return out


def report_pareto_svg(run_dir: Union[str, Path], space: Optional[str] = None) -> str:
    """The interactive Pareto plot of a run directory's trained models, as report HTML."""
    from .pareto import pareto_data
    from .results import results_table

    table = results_table(run_dir, space=space)
    if not len(table):
        return ""
    svg = pareto_svg(pareto_data(table), point_details(table))
    return f"<figure>{svg}<figcaption>Hover a point for its tree and figures.</figcaption></figure>"
