"""Task affinity from trained single-task networks: pick K held-out images, run every
task's network over them, and hand the features (or losses) to a registered measure.

Memory stays bounded: one task's network runs at a time; its features are kept on the CPU
for a group of locations whose total size fits ``max_feature_bytes`` (more groups mean more
forward passes, never more memory), and each location is reduced to the measure's K x K-sized
summary as soon as its features are complete.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import BranchnasError
from ._arrays import DeviceLike, resolve_device
from .measures import MIN_IMAGES, AffinityMeasure, create_measure, get_measure

__all__ = ["DEFAULT_K", "compute_affinity", "default_location_names", "select_images"]

log = logging.getLogger(__name__)

#: Images used by default (the paper's K); clipped to the dataset's size.
DEFAULT_K = 500

#: Default bound on the features of one task kept in CPU memory at once (bytes).
DEFAULT_MAX_FEATURE_BYTES = 2 * 2**30

Batch = dict[str, Any]


def select_images(num_available: int, k: int = DEFAULT_K, seed: int = 0) -> np.ndarray:
    """The fixed, seeded subset of image indices used for affinity.

    Args:
        num_available: images in the dataset.
        k: images wanted; clipped to ``num_available`` with a logged warning.
        seed: seed of the draw; the same (num_available, k, seed) always gives the same subset.

    Returns:
        Sorted int64 indices, ``min(k, num_available)`` of them.

    Raises:
        BranchnasError: if ``k`` or the dataset gives fewer than 3 images.
    """
    if k < MIN_IMAGES:
        raise BranchnasError(f"K={k} images asked for; affinity needs at least {MIN_IMAGES}, use --k 500 or so")
    if num_available < MIN_IMAGES:
        raise BranchnasError(f"the dataset has {num_available} image(s); affinity needs at least {MIN_IMAGES}, "
                             "use a larger held-out split")
    if k > num_available:
        log.warning("K=%d images asked for but the dataset has %d; using all %d", k, num_available, num_available)
        k = num_available
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_available, size=k, replace=False)).astype(np.int64)


def default_location_names(depth: int) -> list[str]:
    """``["block1", ..., "blockD"]``."""
    return [f"block{d + 1}" for d in range(depth)]


def _task_name(task: Any) -> str:
    name = getattr(task, "name", task)
    if not isinstance(name, str) or not name:
        raise BranchnasError(f"task {task!r} has no name; give Task objects or task names")
    return name


def _collate_for(label_tasks: Sequence[str]) -> Callable[[list[Any]], Batch]:
    """Stack dataset items (docs/internals.md format) into a batch, labels only for ``label_tasks``."""

    def collate(items: list[Any]) -> Batch:
        for item in items:
            if not isinstance(item, Mapping) or "image" not in item:
                raise BranchnasError("dataset items must be dicts with an 'image' tensor (and 'labels', 'present'); "
                                     f"got {type(item).__name__}")
        batch: Batch = {"image": torch.stack([torch.as_tensor(it["image"]) for it in items])}
        labels, present = {}, {}
        for t in label_tasks:
            try:
                labels[t] = torch.stack([torch.as_tensor(it["labels"][t]) for it in items])
            except (KeyError, TypeError):
                raise BranchnasError(f"dataset items have no label for task {t!r}; "
                                     "use a dataset that labels every task (missing labels as empty targets)") from None
            present[t] = torch.tensor([bool(it.get("present", {}).get(t, True)) for it in items])
        batch["labels"], batch["present"] = labels, present
        return batch

    return collate


@contextlib.contextmanager
def _inference(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Eval mode on ``device`` under no_grad; training flag and device restored afterwards."""
    was_training = model.training
    first = next(iter(model.parameters()), None)
    home = first.device if first is not None else None
    model.eval()
    model.to(device)
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
        if home is not None:
            model.to(home)


def _check_features(feats: Any, name: str, batch_len: int) -> list[torch.Tensor]:
    if not isinstance(feats, (list, tuple)) or not feats or not all(isinstance(f, torch.Tensor) for f in feats):
        raise BranchnasError(f"forward_features of task {name!r} must return a non-empty list of tensors, "
                             f"got {type(feats).__name__}")
    for d, f in enumerate(feats):
        if f.ndim < 2 or f.shape[0] != batch_len:
            raise BranchnasError(f"forward_features of task {name!r} gave shape {tuple(f.shape)} at location {d + 1} "
                                 f"for a batch of {batch_len}; each must be (B, ...)")
    return list(feats)


def _location_groups(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive groups of locations whose byte sizes sum to at most ``budget`` (one each at least)."""
    groups: list[list[int]] = []
    used = 0
    for d, size in enumerate(sizes):
        if groups and used + size <= budget:
            groups[-1].append(d)
            used += size
        else:
            groups.append([d])
            used = size
    return groups


def _feature_summaries(model: nn.Module, name: str, loader: Any, k: int, locations: list[str] | None,
                       measure: AffinityMeasure, device: torch.device,
                       max_feature_bytes: int) -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
    """Per-location summaries of one task's features over the K images."""
    probe = next(iter(loader))
    image = probe["image"].to(device)
    feats = _check_features(model.forward_features(image, name), name, image.shape[0])
    shapes = [tuple(f.shape[1:]) for f in feats]
    dtypes = [f.dtype for f in feats]
    if locations is not None and len(locations) != len(feats):
        raise BranchnasError(f"the network of task {name!r} has {len(feats)} feature locations but "
                             f"{len(locations)} location names are given; give one name per location")
    names = locations if locations is not None else default_location_names(len(feats))
    sizes = [k * int(np.prod(s)) * torch.empty((), dtype=dt).element_size() for s, dt in zip(shapes, dtypes)]
    groups = _location_groups(sizes, max_feature_bytes)
    for d, size in enumerate(sizes):
        if size > max_feature_bytes:
            log.warning("features of task %s at %s take %d bytes, over max_feature_bytes=%d; holding them alone",
                        name, names[d], size, max_feature_bytes)
    log.info("affinity: task %s: %d images, %d locations in %d pass(es)", name, k, len(feats), len(groups))
    summaries: list[torch.Tensor | None] = [None] * len(feats)
    for group in groups:
        store = {d: torch.empty((k, int(np.prod(shapes[d]))), dtype=dtypes[d]) for d in group}
        pos = 0
        for batch in loader:
            image = batch["image"].to(device)
            out = _check_features(model.forward_features(image, name), name, image.shape[0])
            if len(out) != len(shapes):
                raise BranchnasError(f"forward_features of task {name!r} returned {len(out)} locations, "
                                     f"then {len(shapes)}; it must always return the same D")
            b = image.shape[0]
            for d in group:
                if tuple(out[d].shape[1:]) != shapes[d]:
                    raise BranchnasError(f"features of task {name!r} at {names[d]} changed shape from {shapes[d]} "
                                         f"to {tuple(out[d].shape[1:])}; use images of one size")
                store[d][pos:pos + b] = out[d].reshape(b, -1).to("cpu", dtype=dtypes[d])
            pos += b
        for d in group:
            summaries[d] = measure.summarize(store.pop(d), task=name, location=names[d])
    return [s for s in summaries if s is not None], shapes


def _losses(model: nn.Module, task: Any, loader: Any, device: torch.device) -> torch.Tensor:
    """Per-example losses (K,) of one task's network; NaN where an example has no label."""
    name = _task_name(task)
    if not callable(getattr(task, "loss", None)):
        raise BranchnasError(f"the fa measure needs Task objects with a loss; task {name!r} has none, "
                             "pass branchnas.tasks Task objects")
    parts = []
    for batch in loader:
        image = batch["image"].to(device)
        out = model(image, tasks=[name])
        pred = out[name] if isinstance(out, Mapping) else out
        target = batch["labels"][name].to(device)
        present = batch["present"][name].to(device)
        loss = task.loss(pred, target, present, reduction="none")
        if not isinstance(loss, torch.Tensor) or loss.shape != (image.shape[0],):
            raise BranchnasError(f"loss of task {name!r} with reduction='none' must be a (B,) tensor, "
                                 f"got {getattr(loss, 'shape', type(loss).__name__)}")
        parts.append(loss.detach().to("cpu", torch.float64))
    return torch.cat(parts)


def compute_affinity(
    models: Mapping[str, nn.Module],
    dataset: Any,
    tasks: Sequence[Any],
    *,
    k: int = DEFAULT_K,
    seed: int = 0,
    measure: str = "rsa",
    batch_size: int = 16,
    device: DeviceLike = None,
    locations: Sequence[str] | None = None,
    max_feature_bytes: int = DEFAULT_MAX_FEATURE_BYTES,
    chunk_bytes: int | None = None,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Batch] | None = None,
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Affinity tensor of ``tasks`` from their trained single-task networks.

    Args:
        models: task name → trained single-task network with ``forward_features(image, task)``
            returning D tensors (docs/internals.md "Models") and, for ``fa``,
            ``forward(image, tasks=[task]) -> {task: pred}``.
        dataset: held-out, map-style dataset of items ``{"image", "labels", "present"}``.
        tasks: Task objects (or, for feature measures, task names); output order follows them.
        k: number of images (500 as in the paper); clipped to the dataset's size with a warning.
        seed: seed of the image subset (see :func:`select_images`).
        measure: a registered measure name (``rsa``, ``cka``, ``fa``, ...).
        batch_size: images per forward pass.
        device: where networks and measure run; ``None`` picks CUDA when available.
        locations: names of the D locations (e.g. the backbone's block names); default
            ``block1 .. blockD``. Must match the networks' D.
        max_feature_bytes: bound on one task's features held in CPU memory at once; locations
            beyond it are extracted in further passes.
        chunk_bytes: bound on one float64 feature block on the device (feature measures).
        num_workers: DataLoader workers.
        collate_fn: batches items; default stacks images, labels and ``present`` flags.

    Returns:
        ``(affinity (D, N, N), location names, meta)``; meta holds ``K``, ``seed``, ``measure``,
        ``num_available``, ``device``, ``batch_size`` and ``feature_shapes`` (location →
        per-image shape, feature measures only), ready for :func:`save_affinity`.

    Raises:
        BranchnasError: for a task without a network, unknown measure, fewer than 3 images,
            networks disagreeing on D or ``locations`` of the wrong length, malformed items,
            or input the measure is undefined on.
    """
    names = [_task_name(t) for t in tasks]
    if not names:
        raise BranchnasError("no tasks given; give at least one task")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BranchnasError(f"tasks repeat {', '.join(map(repr, dupes))}; give each task once")
    missing = [n for n in names if n not in models]
    if missing:
        raise BranchnasError(f"no trained network for task(s) {', '.join(map(repr, missing))}; "
                             "train the single-task networks first")
    if batch_size < 1:
        raise BranchnasError(f"batch_size is {batch_size}; give at least 1")
    cls = get_measure(measure)
    dev = resolve_device(device)
    options: dict[str, Any] = {"device": dev}
    if cls.needs == "features":
        options["chunk_bytes"] = chunk_bytes
    meas = create_measure(measure, **options)
    loc_names = None if locations is None else [str(x) for x in locations]

    indices = select_images(len(dataset), k, seed)
    kk = len(indices)
    subset = torch.utils.data.Subset(dataset, indices.tolist())
    collate = collate_fn or _collate_for(names if cls.needs == "losses" else ())
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, collate_fn=collate)
    meta: dict[str, Any] = {"K": kk, "seed": seed, "measure": measure, "num_available": len(dataset),
                            "device": str(dev), "batch_size": batch_size}

    if cls.needs == "features":
        per_task: list[list[torch.Tensor]] = []
        depth: int | None = None
        for name in names:
            with _inference(models[name], dev) as model:
                summaries, shapes = _feature_summaries(model, name, loader, kk, loc_names, meas, dev,
                                                       max_feature_bytes)
            if depth is None:
                depth = len(summaries)
                loc_names = loc_names or default_location_names(depth)
                meta["feature_shapes"] = {loc: list(s) for loc, s in zip(loc_names, shapes)}
            elif len(summaries) != depth:
                raise BranchnasError(f"the network of task {name!r} has {len(summaries)} feature locations, "
                                     f"the one of {names[0]!r} has {depth}; use networks with the same backbone")
            per_task.append(summaries)
        assert depth is not None and loc_names is not None
        affinity = np.stack([meas.compare([s[d] for s in per_task], tasks=names, location=loc_names[d])
                             for d in range(depth)])
        return affinity, loc_names, meta

    # Loss-based measures: one matrix from the tasks' outputs, the same at every location.
    if loc_names is None:
        with _inference(models[names[0]], dev) as model:
            probe = next(iter(loader))["image"][:1].to(dev)
            depth = len(_check_features(model.forward_features(probe, names[0]), names[0], 1))
        loc_names = default_location_names(depth)
    summaries = []
    for task, name in zip(tasks, names):
        with _inference(models[name], dev) as model:
            losses = _losses(model, task, loader, dev)
        summaries.append(meas.summarize(losses, task=name, location="the network outputs"))
    matrix = meas.compare(summaries, tasks=names, location="the network outputs")
    affinity = np.repeat(matrix[None], len(loc_names), axis=0)
    return affinity, loc_names, meta
