"""What ``branchnas demo`` checks and says about its own numbers.

The demo trains on the embedded benchmark, whose tasks were built with a known relatedness:
the dense tasks read the same scene geometry and layout, while the scene class reads only
the room style. So at the last block of converged networks the image-level task must be less
similar to every dense task than the most similar dense pair is. :func:`affinity_structure`
checks that on the demo's affinity tensor (an untrained or under-trained demo fails it, which
is how this check was found to be needed); :func:`reading_notes` gives the lines of the
summary that say how to read the numbers.

Example:
    >>> import numpy as np
    >>> a = np.array([[[1, .8, .1], [.8, 1, .2], [.1, .2, 1]]])
    >>> s = affinity_structure(a, ["depth", "normals", "scene"], {"depth": True, "normals": True,
    ...                        "scene": False}, ["block4"])
    >>> s["holds"], s["dense_pair"], s["image_pair"]
    (True, ('depth', 'normals'), ('scene', 'normals'))
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import BranchnasError

__all__ = ["affinity_structure", "format_affinity_structure", "reading_notes"]


def affinity_structure(affinity: Any, tasks: Sequence[str], dense: Mapping[str, bool],
                       locations: Optional[Sequence[str]] = None, depth: int = -1) -> Dict[str, Any]:
    """Is every image-level task less similar to each dense task than the closest dense pair?

    Args:
        affinity: a ``D×N×N`` array (or an object with ``.affinity``, ``.tasks``,
            ``.locations``, such as :func:`branchnas.affinity.load_affinity`'s result; then
            ``tasks``/``locations`` may be None).
        tasks: the N task names, in the tensor's order.
        dense: task name → True for a per-pixel task.
        locations: the D location names (for the report; default ``block1..D``).
        depth: which location (default: the last block).

    Returns:
        ``{"location", "dense_pair", "dense_affinity", "image_pair", "image_affinity",
        "holds"}``: the most similar dense pair and its affinity, the most similar
        (image-level, dense) pair and its affinity, and whether the latter is strictly lower.

    Raises:
        BranchnasError: unless there are at least two dense tasks and one image-level task.
    """
    if hasattr(affinity, "affinity"):
        tasks = list(affinity.tasks) if tasks is None else tasks
        locations = list(affinity.locations) if locations is None else locations
        affinity = affinity.affinity
    a = np.asarray(affinity, dtype=float)
    tasks = list(tasks)
    locations = list(locations) if locations is not None else [f"block{d + 1}" for d in range(a.shape[0])]
    dense_tasks = [t for t in tasks if dense[t]]
    image_tasks = [t for t in tasks if not dense[t]]
    if len(dense_tasks) < 2 or not image_tasks:
        raise BranchnasError(
            f"the affinity-structure check needs two dense tasks and an image-level one; got "
            f"dense {dense_tasks}, image-level {image_tasks}")
    idx = {t: i for i, t in enumerate(tasks)}
    last = a[depth]
    dense_pairs = [(last[idx[s], idx[t]], (s, t)) for i, s in enumerate(dense_tasks)
                   for t in dense_tasks[i + 1:]]
    image_pairs = [(last[idx[s], idx[t]], (s, t)) for s in image_tasks for t in dense_tasks]
    d_val, d_pair = max(dense_pairs, key=lambda p: p[0])
    i_val, i_pair = max(image_pairs, key=lambda p: p[0])
    return {"location": locations[depth], "dense_pair": d_pair, "dense_affinity": float(d_val),
            "image_pair": i_pair, "image_affinity": float(i_val), "holds": bool(i_val < d_val)}


def format_affinity_structure(check: Mapping[str, Any]) -> str:
    """One line for the summary: the two affinities and whether the designed structure shows."""
    verdict = "shows the benchmark's designed structure" if check["holds"] else \
        "does NOT show the benchmark's designed structure (networks not trained enough?)"
    return (f"affinity at {check['location']}: most similar dense pair "
            f"{'–'.join(check['dense_pair'])} {check['dense_affinity']:.2f}, image-level task closest to "
            f"a dense one {'–'.join(check['image_pair'])} {check['image_affinity']:.2f}: {verdict}")


def reading_notes(primary: Mapping[str, str], baselines: Mapping[str, Mapping[str, Any]],
                  singles: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """The summary's lines on how to read its numbers.

    Args:
        primary: task → the metric its Δm uses.
        baselines: baseline name → ``{"optimizer", "init", "epochs", "stop_reason"}`` (any may
            be missing).
        singles: task → ``{"epochs", "stop_reason", <primary metric>: value}``.
    """
    lines = ["", "how to read these numbers:",
             "  Δm: mean over tasks of the relative change (%) against the single-task networks, "
             "positive = better, on each task's primary measure ("
             + ", ".join(f"{t}: {m}" for t, m in primary.items()) + "); 'Δm all' averages every "
             "metric of a task first. Both are on the validation split."]
    single_bits = []
    for t, s in singles.items():
        value = s.get(primary.get(t, ""))
        bit = f"{t} {primary.get(t, '')} {value:.3g}" if isinstance(value, (int, float)) else t
        if s.get("epochs") is not None:
            bit += f" ({s['epochs']} ep, {s.get('stop_reason') or 'stopped'})"
        single_bits.append(bit)
    lines.append("  every network trains under one convergence rule (early stopping on a held-out "
                 "slice of the training split, best epoch restored); single-task: "
                 + "; ".join(single_bits))
    for name, b in baselines.items():
        facts = [f"{b['optimizer']}" if b.get("optimizer") else None,
                 f"from {b['init']}" if b.get("init") else None,
                 f"{b['epochs']} ep" if b.get("epochs") is not None else None,
                 b.get("stop_reason")]
        lines.append(f"  {name}: " + ", ".join(f for f in facts if f))
    return lines


def pipeline_notes(space: Any, affinity_path: Any, singles: Mapping[str, Any],
                   baselines: Mapping[str, Any], layout: Any) -> Dict[str, Any]:
    """What a pipeline run's summary says about its own numbers.

    Args:
        space: the (profiled) search space.
        affinity_path: the affinity file the search used.
        singles: task → the single-task network's ``ModelResult``.
        baselines: baseline name → its ``ModelResult``.
        layout: the run's :class:`~branchnas.pipeline.layout.RunLayout`.

    Returns:
        ``{"reading": [lines], "affinity_structure": check or None}``; the check (see
        :func:`affinity_structure`) only where the space has two dense tasks and an
        image-level one.
    """
    import json

    from ..affinity import load_affinity
    from ..models.baselines import baseline_meta

    primary = {t.name: t.primary for t in space.tasks}
    dense = {t.name: t.dense for t in space.tasks}
    single_facts = {t: {**r.extra, **r.metrics.get(t, {})} for t, r in singles.items()}
    base_facts: Dict[str, Dict[str, Any]] = {}
    for name, r in baselines.items():
        if r.model == "single":
            continue
        cfg_path = layout.baseline(name) / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        opt = cfg.get("optimizer")
        lr = cfg.get("lr")
        base_facts[name] = {
            "optimizer": f"{opt} lr {lr:g}" if opt and isinstance(lr, (int, float)) else opt,
            "init": "the converged single-task networks"
            if baseline_meta(name).get("init_from_single") else "scratch",
            "epochs": r.extra.get("epochs"), "stop_reason": r.extra.get("stop_reason")}
    check = None
    n_dense = sum(dense.values())
    if n_dense >= 2 and n_dense < len(dense):
        check = affinity_structure(load_affinity(affinity_path), None, dense)
    reading = reading_notes(primary, base_facts, single_facts)
    if check is not None:
        reading.append("  " + format_affinity_structure(check))
    return {"reading": reading, "affinity_structure": check}
