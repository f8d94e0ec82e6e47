"""BranchedNet: wiring, accounting equality over random trees on every backbone, gradients."""

from __future__ import annotations

import random
from typing import List, Sequence

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from branchnas.errors import BranchnasError
from branchnas.models import BranchedNet
from branchnas.spaces import SearchSpace, create_backbone, list_backbones, load_space
from branchnas.tasks import create_task
from branchnas.tree import Tree

HW = (32, 32)


def random_tree(tasks: Sequence[str], depth: int, rng: random.Random) -> Tree:
    """A random chain of refining partitions (each group splits into 1..3 parts per depth)."""
    groups: List[List[str]] = [list(tasks)]
    groupings = []
    for _ in range(depth):
        new = []
        for g in groups:
            k = rng.randint(1, min(3, len(g)))
            parts: List[List[str]] = [[] for _ in range(k)]
            shuffled = list(g)
            rng.shuffle(shuffled)
            for i, t in enumerate(shuffled):  # every part gets at least one task
                parts[i if i < k else rng.randrange(k)].append(t)
            new += parts
        groups = new
        groupings.append([list(g) for g in groups])
    return Tree(tasks, groupings)


def tiny_space(backbone_name: str) -> SearchSpace:
    """Four tasks on ``backbone_name`` at 32x32: dense ones where the backbone allows."""
    bb = create_backbone(backbone_name)
    if bb.spatial:
        tasks = [
            create_task("seg", "segmentation", num_classes=3),
            create_task("depth", "depth"),
            create_task("normals", "normals"),
            create_task("cls", "classification", num_classes=5),
        ]
        heads = {"seg": "fcn", "depth": "psp", "normals": "aspp", "cls": "mlp"}
        # small heads: the heads' own contract is in test_heads.py; here they are wired
        head_kwargs = {t: {"channels": 16} for t in ("seg", "depth", "normals")}
    else:
        tasks = [create_task(f"attr{i}", "binary") for i in range(3)]
        tasks.append(create_task("cls", "classification", num_classes=5))
        heads = {"attr0": "linear", "attr1": "mlp", "attr2": "linear", "cls": "mlp"}
        head_kwargs = {}
    head_kwargs["cls"] = {"hidden": 16}
    return SearchSpace(f"tiny-{backbone_name}", bb, tasks, HW, heads=heads, head_kwargs=head_kwargs)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops_of(net: BranchedNet, x: torch.Tensor, **kw) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, **kw)
    return counter.get_total_flops()


@pytest.mark.parametrize("backbone", list_backbones())
def test_accounting_equals_the_built_network_for_random_trees(backbone):
    # Property test on the meta device (no memory, no init): parameters over many random
    # trees; FLOPs (torch's counter on a meta forward, slower) over a few of them.
    space = tiny_space(backbone)
    rng = random.Random(backbone)
    trees = [space.single_task_tree(), space.fully_shared_tree()]
    trees.append(random_tree(space.task_names[1:], space.depth, rng))  # a subset of the tasks
    trees += [random_tree(space.task_names, space.depth, rng) for _ in range(10)]
    x = torch.empty(1, 3, *HW, device="meta")
    for i, tree in enumerate(trees):
        with torch.device("meta"):
            net = BranchedNet(tree, space).eval()
        assert n_params(net) == space.tree_params(tree), tree
        assert [len(level) for level in net.nodes] == list(tree.group_counts)
        if i in (1, 2, 3):
            assert flops_of(net, x) == space.tree_flops(tree), tree


@pytest.mark.parametrize("backbone", list_backbones())
def test_a_tree_that_shares_nothing_is_n_single_task_networks(backbone):
    space = tiny_space(backbone)
    with torch.device("meta"):
        nothing_shared = BranchedNet(space.single_task_tree(), space)
        singles = [BranchedNet(Tree.single_task([t], space.depth), space) for t in space.task_names]
    assert n_params(nothing_shared) == sum(n_params(s) for s in singles)
    for t, s in zip(space.task_names, singles):
        assert n_params(s) == sum(space.block_params) + space.head_params[t]


@pytest.mark.parametrize("backbone", list_backbones())
def test_forward_backward_on_a_random_tree_every_parameter_gets_a_gradient(backbone):
    torch.manual_seed(0)
    space = tiny_space(backbone)
    # shared, then splitting: every kind of node (shared by 4, by 2, alone) at modest cost
    a, b, c, d = space.task_names
    top = [[[a, b, c, d]]] * (space.depth - 2)
    tree = Tree(space.task_names, top + [[[a, b], [c, d]], [[a], [b], [c, d]]])
    net = BranchedNet(tree, space).train()
    x = torch.randn(2, 3, *HW)
    out = net(x)
    assert list(out) == list(tree.tasks)
    for t in tree.tasks:
        task = space.task(t)
        expected = (2, task.out_channels, *HW) if task.dense else (2, task.out_channels)
        assert out[t].shape == expected, t
    sum(y.float().pow(2).mean() for y in out.values()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing
    assert n_params(net) == space.tree_params(tree)


def _count_calls(net: BranchedNet):
    calls = {}
    for d, level in enumerate(net.nodes):
        for g, node in enumerate(level):
            calls[(d, g)] = 0

            def hook(_m, _i, _o, key=(d, g)):
                calls[key] += 1

            node.register_forward_hook(hook)
    return calls


def test_every_node_runs_once_and_a_subset_runs_only_its_branches():
    space = load_space("scenes")
    names = space.task_names  # semseg, depth, normals, edges, scene
    tree = Tree(
        names,
        [
            [names],
            [names[:4], names[4:]],
            [names[:2], names[2:4], names[4:]],
            [names[:1], names[1:2], names[2:4], names[4:]],
        ],
    )
    net = BranchedNet(tree, space).eval()
    calls = _count_calls(net)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
    assert set(out) == set(names)
    assert all(n == 1 for n in calls.values()), calls

    for key in calls:
        calls[key] = 0
    with torch.no_grad():
        sub = net(x, tasks=["depth"])
    assert list(sub) == ["depth"]
    ran = {k for k, n in calls.items() if n}
    assert ran == {(0, 0), (1, 0), (2, 0), (3, 1)}
    assert all(n == 1 for n in calls.values() if n)
    torch.testing.assert_close(sub["depth"], out["depth"])

    # a subset costs exactly the FLOPs of its path
    full = flops_of(net, x[:1])
    assert flops_of(net, x[:1], tasks="scene") < full
    assert full == space.tree_flops(tree)


def test_scenes_fully_shared_network_predicts_every_task_format():
    space = load_space("scenes")
    net = BranchedNet(space.fully_shared_tree(), space).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 64))
    shapes = {t: tuple(y.shape) for t, y in out.items()}
    assert shapes == {
        "semseg": (2, 6, 64, 64),
        "depth": (2, 1, 64, 64),
        "normals": (2, 3, 64, 64),
        "edges": (2, 1, 64, 64),
        "scene": (2, 8),
    }
    assert n_params(net) == sum(space.block_params) + sum(space.head_params.values())


def test_forward_features_follow_the_task_path_and_feed_the_head():
    space = load_space("scenes")
    names = space.task_names
    tree = Tree(names, [[names], [names], [names[:4], names[4:]], [[n] for n in names]])
    net = BranchedNet(tree, space).eval()
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    net.heads["normals"].register_forward_hook(lambda m, i, o: seen.update(feat=i[0]))
    with torch.no_grad():
        feats = net.forward_features(x, "normals")
        net(x, tasks=["normals"])
    assert [tuple(f.shape[1:]) for f in feats] == space.block_shapes
    torch.testing.assert_close(feats[-1], seen["feat"])
    with torch.no_grad():
        other = net.forward_features(x, "semseg")
    torch.testing.assert_close(other[1], feats[1])  # shared up to depth 2
    assert not torch.allclose(other[3], feats[3])  # separate copies of block 4


def test_shared_and_task_parameters_cover_every_parameter_once():
    space = load_space("scenes")
    names = space.task_names
    tree = Tree(
        names,
        [[names], [names[:4], names[4:]], [names[:2], names[2:4], names[4:]], [[n] for n in names]],
    )
    net = BranchedNet(tree, space)
    ids = [id(p) for p in net.shared_parameters()]
    for t in names:
        ids += [id(p) for p in net.task_parameters(t)]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())
    # scene is alone from depth 2 on: nodes (1,1), (2,2), (3,4) and its head are its own
    own = sum(p.numel() for p in net.task_parameters("scene"))
    assert own == sum(space.block_params[1:]) + space.head_params["scene"]


def test_cities_networks_built_on_meta_match_table_1():
    space = load_space("cityscapes-resnet50")
    with torch.device("meta"):
        single = BranchedNet(space.single_task_tree(), space)
        shared = BranchedNet(space.fully_shared_tree(), space)
    assert n_params(single) == space.tree_params(space.single_task_tree())
    assert n_params(shared) == space.tree_params(space.fully_shared_tree())
    assert abs(n_params(single) / 138e6 - 1) < 0.05
    assert abs(n_params(shared) / 92e6 - 1) < 0.05


def test_bad_trees_and_task_requests_raise_one_line_errors():
    space = load_space("scenes")
    names = space.task_names
    with pytest.raises(BranchnasError, match="4 cut points"):
        BranchedNet(Tree.fully_shared(names, 2), space)
    with pytest.raises(BranchnasError, match="lacks"):
        BranchedNet(Tree.fully_shared(["depth", "sky"], 4), space)
    net = BranchedNet(Tree.fully_shared(["depth", "scene"], 4), space)
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(BranchnasError, match="no task.*semseg.*choose from: depth, scene"):
        net(x, tasks=["semseg"])
    with pytest.raises(BranchnasError, match="no tasks requested"):
        net(x, tasks=[])
    with pytest.raises(BranchnasError, match="no task"):
        net.forward_features(x, "normals")
