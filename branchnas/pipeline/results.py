"""The results store: one ``result.json`` per trained model, gathered into a pandas table.

Every training stage (a single-task network, a tree, a baseline) writes a :class:`ModelResult`
into its run directory. :func:`results_table` scans a directory tree for them and returns one
row per model with its parameters, FLOPs, Δm and per-task metrics (columns ``task/metric``),
which is what the Pareto plot and the report read.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..errors import BranchnasError

__all__ = ["ModelResult", "write_result", "read_result", "results_table", "RESULT_FILE"]

RESULT_FILE = "result.json"

Metrics = Dict[str, Dict[str, float]]


@dataclass
class ModelResult:
    """What one trained model scored.

    Attributes:
        model: the kind: ``single``, ``tree``, ``shared``, ``cross_stitch``, ``mtan``, ``nddr``.
        name: a label unique within a run (e.g. ``tree-b2`` or ``single/depth``).
        space: the search space's name.
        params: parameter count of the whole multi-task model.
        flops: FLOPs of one forward pass at the space's input size (None if unknown).
        metrics: task -> metric -> value on the validation split.
        delta_m: Δm in percent against the single-task networks (None for a single-task run).
        seed: the training seed.
        tree: the tree's JSON form for tree-shaped models, else None.
        extra: anything else worth keeping (budget, search cost, strategy, measure, epochs).
    """

    model: str
    name: str
    space: str
    params: int
    flops: Optional[int]
    metrics: Metrics
    delta_m: Optional[float] = None
    seed: int = 0
    tree: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def write_result(run_dir: Union[str, Path], result: ModelResult) -> Path:
    """Write ``result.json`` into ``run_dir`` atomically; returns its path."""
    path = Path(run_dir) / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".result-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(asdict(result), f, indent=2)
    os.replace(tmp, path)
    return path


def read_result(path: Union[str, Path]) -> ModelResult:
    """Read one ``result.json``.

    Raises:
        BranchnasError: if the file is unreadable or lacks a field.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return ModelResult(**data)
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise BranchnasError(f"cannot read result file {str(p)!r} ({e}); "
                             "delete it and re-run the stage that wrote it") from None


def results_table(root: Union[str, Path], space: Optional[str] = None) -> "Any":
    """All results under ``root`` as a pandas DataFrame, one row per model.

    Columns: model, name, space, params, flops, delta_m, seed, tree (JSON text or None),
    run_dir, and one ``task/metric`` column per metric; extra fields are prefixed ``extra.``.

    Args:
        root: a directory searched recursively for ``result.json`` files.
        space: keep only rows of this search space.
    """
    import pandas as pd

    rows: List[Dict[str, Any]] = []
    for path in sorted(Path(root).rglob(RESULT_FILE)):
        r = read_result(path)
        if space is not None and r.space != space:
            continue
        row: Dict[str, Any] = {
            "model": r.model, "name": r.name, "space": r.space, "params": r.params,
            "flops": r.flops, "delta_m": r.delta_m, "seed": r.seed,
            "tree": json.dumps(r.tree) if r.tree is not None else None,
            "run_dir": str(path.parent),
        }
        for task, metrics in r.metrics.items():
            for metric, value in metrics.items():
                row[f"{task}/{metric}"] = value
        for key, value in r.extra.items():
            row[f"extra.{key}"] = value
        rows.append(row)
    columns = ["model", "name", "space", "params", "flops", "delta_m", "seed", "tree", "run_dir"]
    return pd.DataFrame(rows, columns=None if rows else columns)

