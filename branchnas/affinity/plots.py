"""Plots of an affinity file: one heatmap per location (the paper's Fig. 2a) and the mean
off-diagonal affinity versus depth.

Each plot is two steps: ``*_data(aff_file)`` returns plain data (lists, floats, strings),
``plot_*(data, ax/axes=None)`` draws it and returns the Axes. matplotlib is imported inside
the drawing functions; :func:`write_affinity_plots` renders with the Agg canvas, without
pyplot, so it works headless and leaves pyplot's state alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import BranchnasError
from .io import AffinityFile, load_affinity

__all__ = [
    "affinity_heatmap_data",
    "affinity_vs_depth_data",
    "plot_affinity_heatmaps",
    "plot_affinity_vs_depth",
    "write_affinity_plots",
]

log = logging.getLogger(__name__)

AffinityLike = Union[AffinityFile, str, "os.PathLike[str]"]

#: Largest number of tasks whose heatmap cells get their values written in.
MAX_ANNOTATED_TASKS = 10


def _as_file(aff: AffinityLike) -> AffinityFile:
    return aff if isinstance(aff, AffinityFile) else load_affinity(aff)


def affinity_heatmap_data(aff_file: AffinityLike) -> dict[str, Any]:
    """Plain data for :func:`plot_affinity_heatmaps`.

    Args:
        aff_file: an :class:`AffinityFile` or the path of one.

    Returns:
        ``{"tasks": [N names], "locations": [D names], "matrices": D nested N x N lists,
        "measure": str, "vmin": float, "vmax": float}``; the colour range is [0, 1] for
        non-negative affinities, else [-1, 1].
    """
    f = _as_file(aff_file)
    vmin = 0.0 if float(f.affinity.min()) >= 0.0 else -1.0
    return {
        "tasks": list(f.tasks),
        "locations": list(f.locations),
        "matrices": f.affinity.tolist(),
        "measure": f.measure,
        "vmin": vmin,
        "vmax": 1.0,
    }


def plot_affinity_heatmaps(data: dict[str, Any], axes: Any | None = None) -> Any:
    """Draw one task-affinity heatmap per location.

    Args:
        data: from :func:`affinity_heatmap_data`.
        axes: a sequence of D Axes to draw into; ``None`` makes a 1 x D pyplot figure.

    Returns:
        The list of D Axes.

    Raises:
        BranchnasError: if ``axes`` holds a different number of Axes than locations.
    """
    locations: list[str] = data["locations"]
    tasks: list[str] = data["tasks"]
    if axes is None:
        import matplotlib.pyplot as plt

        n = len(tasks)
        _, axes = plt.subplots(1, len(locations), squeeze=False, layout="constrained",
                               figsize=_heatmaps_figsize(n, len(locations)))
    axes_list = list(np.ravel(axes))
    if len(axes_list) != len(locations):
        raise BranchnasError(f"{len(axes_list)} Axes given for {len(locations)} locations; give one Axes per location")
    image = None
    annotate = len(tasks) <= MAX_ANNOTATED_TASKS
    for ax, loc, mat in zip(axes_list, locations, data["matrices"]):
        arr = np.asarray(mat, dtype=float)
        image = ax.imshow(arr, vmin=data["vmin"], vmax=data["vmax"], cmap="viridis")
        ax.set_title(loc)
        ax.set_xticks(range(len(tasks)))
        ax.set_yticks(range(len(tasks)))
        ax.set_xticklabels(tasks, rotation=90 if len(tasks) > 3 else 0)
        # row labels on a row's first panel only: the panels share them, and a neighbour's
        # labels would otherwise be drawn over the panel on their left
        ax.set_yticklabels(tasks if _first_column(ax) else [])
        if annotate:
            mid = 0.5 * (data["vmin"] + data["vmax"])
            for i in range(len(tasks)):
                for j in range(len(tasks)):
                    ax.text(j, i, f"{arr[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if arr[i, j] > mid else "white")
    if image is not None:
        fig = axes_list[0].figure
        fig.colorbar(image, ax=axes_list, shrink=0.8, label=f"{data['measure']} affinity")
    return axes_list


def _first_column(ax: Any) -> bool:
    spec = ax.get_subplotspec()
    return spec is None or spec.is_first_col()


def _heatmaps_figsize(n_tasks: int, n_locations: int) -> tuple[float, float]:
    """Inches for D square N x N panels, the row labels once and the colour bar."""
    side = 0.45 * n_tasks + 0.4
    return side * n_locations + 2.5, side + 1.6


def affinity_vs_depth_data(aff_file: AffinityLike) -> dict[str, Any]:
    """Mean, minimum and maximum off-diagonal affinity at each location.

    Args:
        aff_file: an :class:`AffinityFile` or the path of one.

    Returns:
        ``{"locations": [D names], "mean": [D floats], "min": [...], "max": [...],
        "measure": str}``.

    Raises:
        BranchnasError: with fewer than two tasks (there is no off-diagonal entry).
    """
    f = _as_file(aff_file)
    n = len(f.tasks)
    if n < 2:
        raise BranchnasError("affinity versus depth needs at least two tasks; this file has one")
    iu = np.triu_indices(n, 1)
    pairs = f.affinity[:, iu[0], iu[1]]
    return {
        "locations": list(f.locations),
        "mean": pairs.mean(axis=1).tolist(),
        "min": pairs.min(axis=1).tolist(),
        "max": pairs.max(axis=1).tolist(),
        "measure": f.measure,
    }


def plot_affinity_vs_depth(data: dict[str, Any], ax: Any | None = None) -> Any:
    """Draw mean off-diagonal affinity per location, with the min-max range shaded.

    Args:
        data: from :func:`affinity_vs_depth_data`.
        ax: Axes to draw into; ``None`` makes a pyplot figure.

    Returns:
        The Axes.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(1.2 * len(data["locations"]) + 2.5, 3.2))
    x = np.arange(len(data["locations"]))
    ax.fill_between(x, data["min"], data["max"], alpha=0.25, label="min-max over task pairs")
    ax.plot(x, data["mean"], marker="o", label="mean over task pairs")
    ax.set_xticks(x)
    ax.set_xticklabels(data["locations"])
    ax.set_xlabel("location (shallow to deep)")
    ax.set_ylabel(f"{data['measure']} affinity")
    ax.legend(loc="best", fontsize=8)
    return ax


def write_affinity_plots(aff_file: AffinityLike, out_dir: str | os.PathLike[str],
                         stem: str | None = None, dpi: int = 120) -> list[Path]:
    """Write ``<stem>_heatmaps.png`` and ``<stem>_depth.png`` (the latter with ≥2 tasks).

    Args:
        aff_file: an :class:`AffinityFile` or the path of one.
        out_dir: folder for the PNGs (created).
        stem: file-name prefix; default the affinity file's stem, else ``"affinity"``.
        dpi: resolution.

    Returns:
        The paths written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    f = _as_file(aff_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = stem or (f.path.stem if f.path is not None else "affinity")
    written: list[Path] = []

    heat = affinity_heatmap_data(f)
    n, d = len(heat["tasks"]), len(heat["locations"])
    fig = Figure(figsize=_heatmaps_figsize(n, d), layout="constrained")
    FigureCanvasAgg(fig)
    plot_affinity_heatmaps(heat, fig.subplots(1, d, squeeze=False))
    path = out / f"{prefix}_heatmaps.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    written.append(path)

    if n >= 2:
        depth = affinity_vs_depth_data(f)
        fig = Figure(figsize=(1.2 * d + 2.5, 3.2))
        FigureCanvasAgg(fig)
        plot_affinity_vs_depth(depth, fig.add_subplot())
        fig.tight_layout()
        path = out / f"{prefix}_depth.png"
        fig.savefig(path, dpi=dpi)
        written.append(path)
    else:
        log.info("one task only: no affinity-versus-depth plot")
    log.info("wrote %s", ", ".join(map(str, written)))
    return written
