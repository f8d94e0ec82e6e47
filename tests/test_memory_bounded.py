"""Memory-bounded backprop (training.memory) gives ordinary backprop's gradients.

The reference is ordinary autograd through the same model: every parameter's ``.grad``
(model and weighting), the returned losses and the BatchNorm running statistics must
match. The stand-in model below has BranchedNet's structure (``.tree``, ``.nodes[d][g]``,
``.heads[task]``) built from small conv blocks with BatchNorm.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Mapping, Optional, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from branchnas.errors import BranchnasError
from branchnas.training.memory import memory_bounded_backward
from branchnas.tree import Tree

C = 4  # channels of every block
HW = 8  # input size


@pytest.fixture(autouse=True)
def _float64():
    """Compare in float64, so tolerances can be tight (only the summation order differs)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class _Block(nn.Sequential):
    def __init__(self, cin: int, dropout: float) -> None:
        layers: List[nn.Module] = [nn.Conv2d(cin, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class _Head(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)
        self.bn = nn.BatchNorm2d(C)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Conv2d(C, 1, 1)

    def forward(self, x: Tensor, out_hw: Sequence[int]) -> Tensor:
        y = self.out(self.drop(F.relu(self.bn(self.conv(x)))))
        return F.interpolate(y, size=tuple(out_hw), mode="bilinear", align_corners=False)


class _TreeNet(nn.Module):
    """A tiny network with BranchedNet's structure, forward in depth-first order."""

    def __init__(self, tree: Tree, dropout: float = 0.0) -> None:
        super().__init__()
        self.tree = tree
        self.nodes = nn.ModuleList(
            nn.ModuleList(_Block(3 if d == 0 else C, dropout) for _ in range(tree.num_groups(d)))
            for d in range(tree.depth)
        )
        self.heads = nn.ModuleDict({t: _Head(dropout) for t in tree.tasks})

    def forward(self, image: Tensor, tasks: Optional[Sequence[str]] = None) -> Dict[str, Tensor]:
        wanted = set(self.tree.tasks if tasks is None else tasks)
        preds: Dict[str, Tensor] = {}
        last = self.tree.depth - 1

        def visit(d: int, g: int, x: Tensor) -> None:
            if not wanted.intersection(self.tree.groupings[d][g]):
                return
            y = self.nodes[d][g](x)
            if d == last:
                for i in self.tree.index_groupings[d][g]:
                    t = self.tree.tasks[i]
                    if t in wanted:
                        preds[t] = self.heads[t](y, out_hw=image.shape[-2:])
                return
            for h in range(self.tree.num_groups(d + 1)):
                if self.tree.parent(d + 1, h) == g:
                    visit(d + 1, h, y)

        for g in range(self.tree.num_groups(0)):
            visit(0, g, image)
        return preds


class _Task:
    """Masked mean squared error with BranchedNet's loss signature."""

    def __init__(self, name: str) -> None:
        self.name = name

    def loss(self, pred: Tensor, target: Tensor, present: Tensor) -> Tensor:
        mask = present.view(-1, 1, 1, 1).to(pred.dtype)
        return ((pred - target) ** 2 * mask).sum() / (mask.sum() * pred[0].numel()).clamp(min=1)


class _Equal:
    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        return sum(losses.values())


class _Uncertainty(nn.Module):
    """Kendall et al.: ``Σ exp(-s_t) L_t + s_t`` with learnable ``s_t``."""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.randn(())) for t in tasks})

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        return sum(torch.exp(-self.log_vars[t]) * v + self.log_vars[t] for t, v in losses.items())


class _Normalised:
    """A combine that is not linear in the losses: ``Σ L_t² / (1 + Σ L_t)``."""

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        values = list(losses.values())
        return sum(v * v for v in values) / (1 + sum(values))


def _tree(n_tasks: int, branch_depths: int, depth: int = 4, seed: int = 0) -> Tree:
    """A random tree over ``n_tasks`` whose last ``branch_depths`` depths split groups."""
    gen = torch.Generator().manual_seed(seed)
    tasks = [f"t{i}" for i in range(n_tasks)]
    parts: List[List[List[int]]] = [[list(range(n_tasks))]]
    for d in range(1, depth):
        prev = parts[-1]
        if d < depth - branch_depths:
            parts.append([list(g) for g in prev])
            continue
        split: List[List[int]] = []
        for g in prev:
            if len(g) == 1:
                split.append(list(g))
                continue
            cut = int(torch.randint(1, len(g), (1,), generator=gen))
            perm = [g[i] for i in torch.randperm(len(g), generator=gen).tolist()]
            split += [perm[:cut], perm[cut:]]
        parts.append(split)
    return Tree.from_index_partitions(tasks, parts)


def _batch(tree: Tree, absent: Optional[str] = None, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(3, 3, HW, HW, generator=gen)
    labels = {t: torch.randn(3, 1, HW, HW, generator=gen) for t in tree.tasks}
    present = {t: torch.tensor([True, False, True]) for t in tree.tasks}
    if absent is not None:
        present[absent] = torch.zeros(3, dtype=torch.bool)
    return {"image": image, "labels": labels, "present": present}


def _ordinary(
    model: nn.Module, batch: dict, tasks: Sequence[_Task], weighting
) -> Dict[str, Tensor]:
    preds = model(batch["image"], tasks=[t.name for t in tasks])
    losses = {
        t.name: t.loss(preds[t.name], batch["labels"][t.name], batch["present"][t.name])
        for t in tasks
    }
    weighting.combine(losses).backward()
    return {t: loss.detach() for t, loss in losses.items()}


def _grads(*modules: nn.Module) -> Dict[str, Optional[Tensor]]:
    return {
        f"{i}.{n}": p.grad
        for i, m in enumerate(modules)
        for n, p in m.named_parameters()
    }


def _assert_same_step(ref: List, mem: List, ref_losses, mem_losses) -> None:
    for (a_model, a_w), (b_model, b_w) in [(ref, mem)]:
        ga, gb = _grads(a_model, *a_w), _grads(b_model, *b_w)
        assert ga.keys() == gb.keys()
        for name in ga:
            if ga[name] is None:
                assert gb[name] is None, name
            else:
                assert gb[name] is not None, name
                torch.testing.assert_close(gb[name], ga[name], rtol=1e-9, atol=1e-11, msg=name)
        buffers_a = dict(a_model.named_buffers())
        for name, buf in b_model.named_buffers():
            torch.testing.assert_close(buf, buffers_a[name], rtol=0, atol=0, msg=name)
    assert mem_losses.keys() == ref_losses.keys()
    for t in ref_losses:
        torch.testing.assert_close(mem_losses[t], ref_losses[t], rtol=1e-12, atol=1e-12)
        assert not mem_losses[t].requires_grad


def _compare(model: nn.Module, tasks, weighting, batch, rng_seed: int = 0):
    """Run both ways from identical copies; return (ref_model, mem_model, weightings)."""
    ref_model, mem_model = copy.deepcopy(model), copy.deepcopy(model)
    ref_w, mem_w = copy.deepcopy(weighting), copy.deepcopy(weighting)
    torch.manual_seed(rng_seed)
    ref_losses = _ordinary(ref_model, batch, tasks, ref_w)
    torch.manual_seed(rng_seed)
    mem_losses = memory_bounded_backward(mem_model, batch, tasks, mem_w)
    def modules(w) -> List[nn.Module]:
        return [w] if isinstance(w, nn.Module) else []

    _assert_same_step(
        [ref_model, modules(ref_w)], [mem_model, modules(mem_w)], ref_losses, mem_losses
    )
    return ref_model, mem_model


@pytest.mark.parametrize("branch_depths", [0, 1, 2, 3])
@pytest.mark.parametrize("n_tasks", [2, 3, 5])
@pytest.mark.parametrize("weighting", ["equal", "uncertainty"])
def test_gradients_match_ordinary_backprop(branch_depths, n_tasks, weighting):
    torch.manual_seed(branch_depths * 10 + n_tasks)
    tree = _tree(n_tasks, branch_depths, seed=n_tasks + branch_depths)
    model = _TreeNet(tree)
    tasks = [_Task(t) for t in tree.tasks]
    w = _Equal() if weighting == "equal" else _Uncertainty(tree.tasks)
    ref_model, _ = _compare(model, tasks, w, _batch(tree))
    # BN running statistics moved (once) and every parameter got a gradient.
    assert all(p.grad is not None for p in ref_model.parameters())
    assert not torch.equal(ref_model.nodes[0][0][1].running_mean, model.nodes[0][0][1].running_mean)


def test_branching_at_the_input_and_a_subset_of_tasks():
    # Depth 0 already splits: no trunk, several roots; t2's branch is left out entirely.
    tree = Tree(("t0", "t1", "t2"), [[["t0", "t1"], ["t2"]], [["t0"], ["t1"], ["t2"]]])
    torch.manual_seed(3)
    model = _TreeNet(tree)
    tasks = [_Task("t1"), _Task("t0")]
    _, mem_model = _compare(model, tasks, _Uncertainty(["t0", "t1"]), _batch(tree))
    assert all(p.grad is None for p in mem_model.heads["t2"].parameters())
    assert all(p.grad is None for p in mem_model.nodes[1][2].parameters())


def test_task_without_labels_gets_the_same_zero_gradient():
    tree = _tree(3, 1, seed=4)
    torch.manual_seed(4)
    model = _TreeNet(tree)
    tasks = [_Task(t) for t in tree.tasks]
    _, mem_model = _compare(model, tasks, _Uncertainty(tree.tasks), _batch(tree, absent="t1"))
    head = mem_model.heads["t1"]
    assert all(p.grad is not None and not p.grad.any() for p in head.parameters())


def test_non_linear_combine_and_accumulation_into_existing_grads():
    tree = _tree(4, 2, seed=5)
    torch.manual_seed(5)
    model = _TreeNet(tree)
    for p in model.parameters():  # a previous micro-batch's gradients: both must add to them
        p.grad = torch.randn_like(p)
    _compare(model, [_Task(t) for t in tree.tasks], _Normalised(), _batch(tree))


def test_dropout_masks_are_replayed_in_recomputation():
    # The stand-in's forward consumes the RNG in the same depth-first order as the anchor
    # pass, so with replayed RNG the masks (and gradients) coincide; without replay the
    # recomputed masks would differ from the ones that produced the losses.
    tree = _tree(3, 2, seed=6)
    torch.manual_seed(6)
    model = _TreeNet(tree, dropout=0.5)
    tasks = [_Task(t) for t in tree.tasks]
    _compare(model, tasks, _Uncertainty(tree.tasks), _batch(tree), rng_seed=9)
    # and the global RNG moves on exactly as after the ordinary forward
    torch.manual_seed(9)
    model(_batch(tree)["image"])
    after_ordinary = torch.get_rng_state()
    torch.manual_seed(9)
    memory_bounded_backward(model, _batch(tree), [_Task(t) for t in tree.tasks], _Equal())
    assert torch.equal(torch.get_rng_state(), after_ordinary)


def test_eval_mode_batchnorm():
    tree = _tree(3, 1, seed=7)
    torch.manual_seed(7)
    model = _TreeNet(tree).eval()
    _compare(model, [_Task(t) for t in tree.tasks], _Equal(), _batch(tree))


def test_bad_inputs_raise_one_line_errors():
    tree = _tree(2, 1)
    model = _TreeNet(tree)
    batch = _batch(tree)
    with pytest.raises(BranchnasError, match="tree-structured"):
        memory_bounded_backward(nn.Linear(2, 2), batch, [_Task("t0")], _Equal())
    with pytest.raises(BranchnasError, match="not in the model's tree"):
        memory_bounded_backward(model, batch, [_Task("nope")], _Equal())
    with pytest.raises(BranchnasError, match="no labels"):
        del batch["labels"]["t1"]
        memory_bounded_backward(model, batch, [_Task("t0"), _Task("t1")], _Equal())
    with pytest.raises(BranchnasError, match="no tasks"):
        memory_bounded_backward(model, _batch(tree), [], _Equal())


# ---------------------------------------------------------------------------- real BranchedNet
def _scenes_batch(space, b: int = 3, hw: int = 32, absent: Optional[str] = None) -> dict:
    """Random labels in each scenes task's format (docs/internals.md), a third unlabelled."""
    gen = torch.Generator().manual_seed(11)
    labels: Dict[str, Tensor] = {}
    for t in space.tasks:
        if t.type == "segmentation":
            labels[t.name] = torch.randint(0, t.params["num_classes"], (b, hw, hw), generator=gen)
        elif t.type == "classification":
            labels[t.name] = torch.randint(0, t.params["num_classes"], (b,), generator=gen)
        elif t.type == "normals":
            labels[t.name] = F.normalize(torch.randn(b, 3, hw, hw, generator=gen), dim=1)
        elif t.type == "edges":
            labels[t.name] = (torch.rand(b, 1, hw, hw, generator=gen) > 0.8).float()
        else:
            labels[t.name] = torch.rand(b, 1, hw, hw, generator=gen) + 0.5
    present = {t: torch.tensor([True] * (b - 1) + [False]) for t in space.task_names}
    if absent is not None:
        present[absent] = torch.zeros(b, dtype=torch.bool)
    return {"image": torch.randn(b, 3, hw, hw, generator=gen), "labels": labels, "present": present}


def _trainer_step(model, batch, tasks, weighting) -> Dict[str, Tensor]:
    """The trainer's ordinary step (training.trainer._backward without autocast, in float64)."""
    preds = model(batch["image"], tasks=[t.name for t in tasks])
    losses = {
        t.name: t.loss(preds[t.name], batch["labels"][t.name], batch["present"][t.name])
        for t in tasks
    }
    n_present = {t: int(p.sum()) for t, p in batch["present"].items()}
    weighting.combine(losses, present=n_present).backward()
    return {t: loss.detach() for t, loss in losses.items()}


@pytest.mark.parametrize(
    "groupings, weighting, dropout",
    [
        # contiguous groups: the heads draw their dropout masks in BranchedNet's order
        ([["semseg", "depth", "normals", "edges", "scene"]] * 4, "equal", True),
        ([["semseg", "depth", "normals", "edges", "scene"]] * 3
         + [[["semseg", "depth"], ["normals", "edges", "scene"]]], "uncertainty", True),
        ([["semseg", "depth", "normals", "edges", "scene"]] * 2
         + [[["semseg", "depth", "normals"], ["edges", "scene"]]]
         + [[["semseg"], ["depth", "normals"], ["edges"], ["scene"]]], "scaled-uncertainty", True),
        # interleaved groups: masks are drawn in another order, so compare without dropout
        ([["semseg", "depth", "normals", "edges", "scene"]]
         + [[["semseg", "normals"], ["depth", "edges", "scene"]]] * 2
         + [[["semseg", "normals"], ["depth", "scene"], ["edges"]]], "scaled-uncertainty", False),
    ],
)
def test_branched_net_on_scenes_matches_the_trainers_ordinary_step(groupings, weighting, dropout):
    from branchnas.models import BranchedNet
    from branchnas.spaces import load_space
    from branchnas.training.weighting import ScaledWeighting, create_weighting

    space = load_space("scenes")
    names = space.task_names
    groupings = [[g] if isinstance(g[0], str) else g for g in groupings]
    tree = Tree(names, groupings)
    torch.manual_seed(12)
    model = BranchedNet(tree, space)
    if not dropout:
        for m in model.modules():
            if isinstance(m, (nn.Dropout, nn.Dropout2d)):
                m.eval()
    base = create_weighting("equal" if weighting == "equal" else "uncertainty", names)
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(torch.randn_like(p))
    w = base
    if weighting == "scaled-uncertainty":  # what the trainer hands to backward code
        w = ScaledWeighting(base, scales={t: float(t != "edges") for t in names})
    batch = _scenes_batch(space, absent="edges" if weighting == "scaled-uncertainty" else None)
    tasks = list(space.tasks)

    ref_model, ref_base = copy.deepcopy(model), copy.deepcopy(base)
    mem_model, mem_base = copy.deepcopy(model), copy.deepcopy(base)
    def wrap(b):
        return ScaledWeighting(b, scales=w.scales) if w is not base else b

    torch.manual_seed(13)
    ref_losses = _trainer_step(ref_model, batch, tasks, wrap(ref_base))
    torch.manual_seed(13)
    mem_losses = memory_bounded_backward(mem_model, batch, tasks, wrap(mem_base))
    _assert_same_step([ref_model, [ref_base]], [mem_model, [mem_base]], ref_losses, mem_losses)
    assert any(p.grad is not None and p.grad.any() for p in mem_base.parameters()) == (
        weighting != "equal"
    )
