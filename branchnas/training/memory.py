"""Memory-bounded multi-task backprop (UberNet, Kokkinos 2017, §4).

Ordinary back-propagation through a branched network keeps every activation of the
trunk *and of every task branch* alive until ``total.backward()`` runs, so peak memory
grows linearly with the number of tasks. :func:`memory_bounded_backward` computes the
same gradients (equal up to floating-point summation order) while holding at most one
branch's activations at a time:

1. **Anchor pass** (no graph). The tree is walked depth-first under ``torch.no_grad()``.
   Each block and head runs once, exactly as in an ordinary forward: BatchNorm running
   statistics are updated once, and the RNG state seen by every block and head is
   recorded (like ``torch.utils.checkpoint``). The outputs of the *trunk* (the leading
   depths where a single block serves every task) are kept as anchors; everything else
   is freed as soon as it has been used. The per-task losses come out of this pass.
2. **Loss coefficients**. The weighting's ``combine`` is called once, on the losses as
   detached leaves. Back-propagating this small graph gives each task's coefficient
   ``c_t = ∂total/∂L_t`` and the exact gradient of the weighting's own parameters
   (uncertainty weighting's ``s_t``), whatever form ``combine`` has.
3. **Branch-by-branch backward**. The tree is walked depth-first again with gradients
   enabled. A head is recomputed from its (detached) input feature map and
   back-propagated with ``c_t``; the gradient it sends to the feature map is added into
   one buffer at the branch point, and the head's activations are freed before the next
   head runs. A block below the trunk's end is recomputed with a graph, its children are
   processed one after another on its detached output, and it is back-propagated once
   with the accumulated gradient. A trunk block is recomputed from its anchor only after
   all of its children have returned their gradient, so the trunk's activations are
   rebuilt one block at a time.

Peak memory is then the trunk's anchors plus one root-to-leaf path (its blocks' graphs,
one head's graph and one gradient buffer per depth): it grows with the depth of the
tree, not with the number of tasks (plus a recorded RNG state, about 5 KB, per block and
head). The price is one more forward of every block, head and loss: 1.6-2× the time of an
ordinary step in ``bench/bench_memory.py``, where full-resolution dense heads and their
losses dominate the forward.

During recomputation each module's buffers are saved and restored, so BatchNorm
running statistics (and ``num_batches_tracked``) end exactly as after one ordinary
step, and each module replays the RNG state it saw in the anchor pass, so dropout
draws the same masks in both passes. The RNG is consumed in depth-first order (block,
then its subtree, heads in task order), which may differ from the order of a model's
own ``forward``: with stochastic layers the masks then differ from an ordinary step's
(same distribution), while the gradients are still exact for the masks drawn.

Not supported: forward hooks that must fire once (they fire once per recomputation),
``DistributedDataParallel`` (several backward calls per step) and loss scaling for
mixed precision (scale the weighting's total yourself).

Example:
    >>> losses = memory_bounded_backward(model, batch, tasks, weighting)  # doctest: +SKIP
    >>> optimizer.step()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import BranchnasError
from ..tree import Tree

__all__ = ["memory_bounded_backward"]

logger = logging.getLogger(__name__)

_RngState = Tuple[Tensor, List[Tensor]]
_Key = Tuple[int, int]


@dataclass
class _Plan:
    """The part of the tree a step visits (groups holding at least one requested task)."""

    depth: int
    roots: List[int]
    children: Dict[_Key, List[int]]
    heads: Dict[int, List[str]]
    trunk: int  # leading depths with one active group: their outputs are kept as anchors


@dataclass
class _Step:
    """Everything one call keeps between its passes."""

    model: nn.Module
    plan: _Plan
    tasks: Dict[str, Any]
    image: Tensor
    labels: Mapping[str, Tensor]
    present: Mapping[str, Tensor]
    out_hw: Tuple[int, int]
    devices: List[int]
    rng: Dict[Any, _RngState] = field(default_factory=dict)
    anchors: Dict[int, Tensor] = field(default_factory=dict)
    losses: Dict[str, Tensor] = field(default_factory=dict)
    coefficients: Dict[str, Tensor] = field(default_factory=dict)


def memory_bounded_backward(
    model: nn.Module,
    batch: Mapping[str, Any],
    tasks: Sequence[Any],
    weighting: Any,
) -> Dict[str, Tensor]:
    """One training step's backward with peak memory independent of the number of tasks.

    Fills ``.grad`` of the model's and the weighting's parameters (accumulating into
    existing gradients) exactly as::

        preds = model(batch["image"])
        losses = {t.name: t.loss(preds[t.name], batch["labels"][t.name],
                                 batch["present"][t.name]) for t in tasks}
        weighting.combine(losses).backward()

    would (allclose; the summation order differs), and leaves BatchNorm running
    statistics as that forward would. See the module docstring for the algorithm.

    Args:
        model: a tree-structured multi-task network with ``.tree`` (:class:`Tree`),
            ``.nodes[d][g]`` (block ``d`` of group ``g``) and ``.heads[task]`` called as
            ``head(features, out_hw=...)``, i.e. a ``BranchedNet``.
        batch: ``{"image": (B,3,H,W), "labels": {task: target}, "present": {task: bool (B,)}}``
            as made by ``branchnas.data.collate``.
        tasks: the Task objects to train (``.name``, ``.loss(pred, target, present)``);
            a subset of the tree's tasks is fine, blocks serving none of them are skipped.
        weighting: an object with ``combine(losses)`` returning the scalar total (its
            ``present`` argument, when it has one, gets each task's number of labelled
            samples); ``None`` means the plain sum of the losses.

    Returns:
        Task name -> its loss for this batch (detached scalar tensors).

    Raises:
        BranchnasError: when the model is not tree-structured, a task is unknown to the
            tree or has no label tensors in the batch, or the total does not depend on
            any task loss.
    """
    plan = _make_plan(model, tasks)
    image, labels, present = _unpack(batch, [t.name for t in tasks])
    step = _Step(
        model=model,
        plan=plan,
        tasks={t.name: t for t in tasks},
        image=image,
        labels=labels,
        present=present,
        out_hw=(int(image.shape[-2]), int(image.shape[-1])),
        devices=_cuda_devices(model, image),
    )
    with torch.no_grad():
        for g in plan.roots:
            _forward_node(step, 0, g, image)
    losses = {t.name: step.losses[t.name] for t in tasks}
    step.coefficients = _loss_coefficients(weighting, losses, present)
    with torch.enable_grad():
        for g in plan.roots:
            _backward_node(step, 0, g, image)
    logger.debug(
        "memory-bounded backward: %d tasks, %d trunk depth(s) anchored of %d",
        len(losses), plan.trunk, plan.depth,
    )
    return {t: loss.detach() for t, loss in losses.items()}


# ---------------------------------------------------------------------------- validation
def _make_plan(model: nn.Module, tasks: Sequence[Any]) -> _Plan:
    tree = getattr(model, "tree", None)
    nodes = getattr(model, "nodes", None)
    heads = getattr(model, "heads", None)
    if not isinstance(tree, Tree) or nodes is None or heads is None:
        raise BranchnasError(
            f"memory-bounded backprop needs a tree-structured model with .tree, .nodes and "
            f".heads (a BranchedNet), got {type(model).__name__}; turn memory_bounded off for it"
        )
    if len(nodes) != tree.depth or any(
        len(nodes[d]) != tree.num_groups(d) for d in range(tree.depth)
    ):
        raise BranchnasError(
            f"{type(model).__name__}.nodes does not match its tree's groups per depth "
            f"{list(tree.group_counts)}; build the model from its tree"
        )
    names = [getattr(t, "name", None) for t in tasks]
    if not names:
        raise BranchnasError("memory-bounded backprop got no tasks; pass at least one Task")
    unknown = [str(n) for n in names if n not in tree.tasks or n not in heads]
    if unknown:
        raise BranchnasError(
            f"task(s) {', '.join(unknown)} are not in the model's tree or have no head; "
            f"the model has: {', '.join(tree.tasks)}"
        )
    if len(set(names)) != len(names):
        raise BranchnasError(f"tasks are listed twice in {names}; pass each task once")

    wanted = {tree.tasks.index(n) for n in names}
    depth = tree.depth
    active = [
        [g for g, grp in enumerate(tree.index_groupings[d]) if wanted.intersection(grp)]
        for d in range(depth)
    ]
    children: Dict[_Key, List[int]] = {}
    for d in range(depth - 1):
        for g in active[d]:
            children[(d, g)] = [h for h in active[d + 1] if tree.parent(d + 1, h) == g]
    last = tree.index_groupings[depth - 1]
    head_lists = {g: [tree.tasks[i] for i in last[g] if i in wanted] for g in active[-1]}
    trunk = 0
    while trunk < depth and len(active[trunk]) == 1:
        trunk += 1
    return _Plan(depth, active[0], children, head_lists, trunk)


def _unpack(
    batch: Mapping[str, Any], names: Sequence[str]
) -> Tuple[Tensor, Mapping[str, Tensor], Mapping[str, Tensor]]:
    try:
        image, labels, present = batch["image"], batch["labels"], batch["present"]
    except (KeyError, TypeError):
        raise BranchnasError(
            "a batch must be a dict with 'image', 'labels' and 'present'; build it with "
            "branchnas.data.collate"
        ) from None
    missing = [n for n in names if n not in labels or n not in present]
    if missing:
        raise BranchnasError(
            f"the batch has no labels/present for task(s) {', '.join(missing)}; "
            f"give empty targets with present False (UnionDataset does)"
        )
    return image, labels, present


def _cuda_devices(model: nn.Module, image: Tensor) -> List[int]:
    devices = {p.device.index for p in model.parameters() if p.device.type == "cuda"}
    if image.device.type == "cuda":
        devices.add(image.device.index)
    current = torch.cuda.current_device() if devices else None
    return sorted(current if d is None else d for d in devices)


# ---------------------------------------------------------------------------- RNG, buffers
def _capture_rng(step: _Step) -> _RngState:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in step.devices]


@contextlib.contextmanager
def _replayed_rng(step: _Step, key: Any) -> Iterator[None]:
    """Run the body with the RNG state recorded for ``key`` (used once, then dropped); the
    global RNG is untouched."""
    cpu, cuda = step.rng.pop(key)
    with torch.random.fork_rng(devices=step.devices):
        torch.set_rng_state(cpu)
        for d, state in zip(step.devices, cuda):
            torch.cuda.set_rng_state(state, d)
        yield


@contextlib.contextmanager
def _buffers_kept(module: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``module`` (BN running stats, counters) on exit."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


# ---------------------------------------------------------------------------- pass 1
def _forward_node(step: _Step, d: int, g: int, x: Tensor) -> None:
    step.rng[(d, g)] = _capture_rng(step)
    y = step.model.nodes[d][g](x)
    if d < step.plan.trunk:
        step.anchors[d] = y
    if d == step.plan.depth - 1:
        for name in step.plan.heads[g]:
            step.rng[name] = _capture_rng(step)
            step.losses[name] = _head_loss(step, name, y)
    else:
        for h in step.plan.children[(d, g)]:
            _forward_node(step, d + 1, h, y)


def _head_loss(step: _Step, name: str, features: Tensor) -> Tensor:
    pred = step.model.heads[name](features, out_hw=step.out_hw)
    if pred.dtype in (torch.float16, torch.bfloat16):  # autocast: the loss in fp32, as the trainer
        pred = pred.float()
    return step.tasks[name].loss(pred, step.labels[name], step.present[name])


# ---------------------------------------------------------------------------- coefficients
def _loss_coefficients(
    weighting: Any, losses: Mapping[str, Tensor], present: Mapping[str, Tensor]
) -> Dict[str, Tensor]:
    """``∂total/∂L_t`` per task; back-propagates the weighting's own parameters too."""
    leaves = {t: loss.detach().requires_grad_() for t, loss in losses.items()}
    with torch.enable_grad():
        if weighting is None:
            total = sum(leaves.values())
        elif _accepts_present(weighting.combine):
            counts = {t: present[t].sum() for t in leaves}
            total = weighting.combine(leaves, present=counts)
        else:
            total = weighting.combine(leaves)
    if not isinstance(total, Tensor) or total.numel() != 1 or not total.requires_grad:
        raise BranchnasError(
            f"{type(weighting).__name__}.combine must return a scalar tensor that depends on "
            f"the task losses; fix the weighting"
        )
    total.backward()
    return {t: leaf.grad for t, leaf in leaves.items() if leaf.grad is not None}


def _accepts_present(combine: Any) -> bool:
    try:
        return "present" in inspect.signature(combine).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------- pass 2
def _backward_node(step: _Step, d: int, g: int, x: Tensor) -> Optional[Tensor]:
    """Back-propagate block (d, g) and its subtree; return the gradient for its input."""
    node = step.model.nodes[d][g]
    # Depth 0 reads the image itself, so a caller's image.requires_grad is honoured.
    inp = x if d == 0 else x.detach().requires_grad_()
    with _buffers_kept(node):
        if d < step.plan.trunk:
            grad = _backward_children(step, d, g, step.anchors.pop(d))
            with _replayed_rng(step, (d, g)):
                out = node(inp)
        else:
            with _replayed_rng(step, (d, g)):
                out = node(inp)
            grad = _backward_children(step, d, g, out.detach())
        if grad is not None and out.requires_grad:
            torch.autograd.backward(out, grad)
        del out, grad
    return inp.grad if d > 0 else None


def _backward_children(step: _Step, d: int, g: int, y: Tensor) -> Optional[Tensor]:
    """Run each child of (d, g) on ``y`` in turn; the sum of the gradients they return."""
    acc: Optional[Tensor] = None
    if d == step.plan.depth - 1:
        for name in step.plan.heads[g]:
            acc = _accumulate(acc, _backward_head(step, name, y))
    else:
        for h in step.plan.children[(d, g)]:
            acc = _accumulate(acc, _backward_node(step, d + 1, h, y))
    return acc


def _backward_head(step: _Step, name: str, y: Tensor) -> Optional[Tensor]:
    coefficient = step.coefficients.get(name)
    if coefficient is None:  # the total does not depend on this task's loss
        return None
    inp = y.detach().requires_grad_()
    with _buffers_kept(step.model.heads[name]):
        with _replayed_rng(step, name):
            loss = _head_loss(step, name, inp)
        if loss.requires_grad:
            torch.autograd.backward(loss, coefficient.to(loss.dtype))
        del loss
    return inp.grad


def _accumulate(acc: Optional[Tensor], grad: Optional[Tensor]) -> Optional[Tensor]:
    if grad is None:
        return acc
    if acc is None:
        return grad
    return acc.add_(grad)
