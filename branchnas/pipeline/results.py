"""The results store: each trained model's :class:`ModelResult`, gathered into a pandas table.

Every training stage (a single-task network, a tree, a baseline) stores its :class:`ModelResult`
in its run directory's ``done`` marker (the one completion marker, written last by the
trainer). :func:`results_table` scans a directory tree for those markers and returns one
row per model with its parameters, FLOPs, Δm and per-task metrics (columns ``task/metric``),
which is what the Pareto plot and the report read. ``done`` markers of other runs (tuning
trials) hold no ModelResult and are left out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ..errors import BranchnasError
from ..training.rundir import RunDir

__all__ = ["ModelResult", "write_result", "read_result", "is_model_result", "model_result",
           "results_table"]

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
        delta_m: Δm in percent against the single-task networks, on each task's primary
            measure (the paper's tables); None for a single-task run or when undefined.
        delta_m_all: the same over every metric of each task, averaged per task first.
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
    delta_m_all: Optional[float] = None
    tree: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)


# the fields without a default: a done marker holding them all is a stored ModelResult
_REQUIRED = ("model", "name", "space", "params", "flops", "metrics")


def is_model_result(data: Any) -> bool:
    """True when ``data`` (a ``done`` marker's JSON) is a stored :class:`ModelResult`."""
    return isinstance(data, Mapping) and all(k in data for k in _REQUIRED)


def write_result(run_dir: Union[str, Path], result: ModelResult) -> Path:
    """Store ``result`` as ``run_dir``'s ``done`` marker (atomically); returns its path.

    The stages let the trainer write it (``train(finalize=...)``); this is for results made
    elsewhere (a model trained outside the pipeline, tests)."""
    run = RunDir(run_dir)
    run.mark_done(asdict(result))
    return run.done_path


def _read_done(path: Path) -> Any:
    """The JSON held by the ``done`` marker at ``path``, or a one-line error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BranchnasError(f"cannot read the result in {str(path)!r} ({e}); "
                             "delete it and re-run the stage that wrote it") from None


def read_result(run_dir: Union[str, Path]) -> ModelResult:
    """The :class:`ModelResult` stored in ``run_dir``'s ``done`` marker.

    Raises:
        BranchnasError: if the marker is missing, unreadable or holds no ModelResult.
    """
    path = RunDir(run_dir).done_path
    data = _read_done(path)
    if not is_model_result(data):
        raise BranchnasError(f"{str(path)!r} holds no model result (a run not made by a pipeline "
                             "stage); delete it and re-run the stage")
    return model_result(data)


def model_result(data: Mapping[str, Any]) -> ModelResult:
    """A :class:`ModelResult` from its stored form (a job's result, a ``done`` marker)."""
    known = {f.name for f in fields(ModelResult)}
    return ModelResult(**{k: v for k, v in data.items() if k in known})


def results_table(root: Union[str, Path], space: Optional[str] = None) -> "Any":
    """All results under ``root`` as a pandas DataFrame, one row per model.

    Columns: model, name, space, params, flops, delta_m (primary measure), delta_m_all (all
    metrics), seed, tree (JSON text or None),
    run_dir, and one ``task/metric`` column per metric; extra fields are prefixed ``extra.``.

    Args:
        root: a directory searched recursively for ``done`` markers holding a ModelResult.
        space: keep only rows of this search space.
    """
    import pandas as pd

    rows: List[Dict[str, Any]] = []
    for path in sorted(Path(root).rglob("done")):
        if not path.is_file():
            continue
        data = _read_done(path)
        if not is_model_result(data):
            continue  # a tuning trial's run, say: not a model of the comparison
        r = model_result(data)
        if space is not None and r.space != space:
            continue
        row: Dict[str, Any] = {
            "model": r.model, "name": r.name, "space": r.space, "params": r.params,
            "flops": r.flops, "delta_m": r.delta_m, "delta_m_all": r.delta_m_all, "seed": r.seed,
            "tree": json.dumps(r.tree) if r.tree is not None else None,
            "run_dir": str(path.parent),
        }
        for task, metrics in r.metrics.items():
            for metric, value in metrics.items():
                row[f"{task}/{metric}"] = value
        for key, value in r.extra.items():
            row[f"extra.{key}"] = value
        rows.append(row)
    columns = ["model", "name", "space", "params", "flops", "delta_m", "delta_m_all", "seed", "tree",
               "run_dir"]
    return pd.DataFrame(rows, columns=None if rows else columns)

