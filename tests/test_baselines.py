"""Contract tests over the baselines registry (single, shared, cross-stitch, MTAN, NDDR).

Runs on the embedded ``scenes`` space (small CNN, five tasks) at 32×32, batch 2.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from branchnas.errors import BranchnasError
from branchnas.models.baselines import (
    baseline_params,
    create_baseline,
    get_baseline,
    list_baselines,
    register_baseline,
)
from branchnas.models.branched import BranchedNet
from branchnas.models.cross_stitch import CrossStitchNet, CrossStitchUnit
from branchnas.models.mtan import MTAN, AttentionModule
from branchnas.models.nddr import NDDRNet
from branchnas.spaces import SearchSpace, create_backbone, list_backbones, load_space
from branchnas.tasks import create_task
from branchnas.tree import Tree

HW = (32, 32)


@pytest.fixture(scope="module")
def space():
    return load_space("scenes")


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, *HW, generator=g)


def _build(name, space, n, seed=0, **kw):
    torch.manual_seed(seed)
    return create_baseline(name, space, space.task_names[:n], **kw)


def _ids(params):
    return [id(p) for p in params]


# ---------------------------------------------------------------------- registry
def test_registry_holds_the_five_baselines():
    assert set(list_baselines()) >= {"single", "shared", "cross_stitch", "mtan", "nddr"}
    assert list_baselines() == sorted(list_baselines())
    assert get_baseline("cross_stitch") is CrossStitchNet
    assert get_baseline("nddr") is NDDRNet and get_baseline("mtan") is MTAN


def test_unknown_and_duplicate_names_are_errors(space):
    with pytest.raises(BranchnasError, match="cross_stitch"):
        create_baseline("cross-stich", space)
    with pytest.raises(BranchnasError, match="already registered"):
        register_baseline("mtan", MTAN)


# ---------------------------------------------------------------------- contract
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("name", list_baselines())
def test_forward_backward_every_parameter_gets_a_gradient(space, name, n):
    model = _build(name, space, n)
    tasks = space.task_names[:n]
    out = model(_image())
    assert list(out) == tasks
    for t in tasks:
        task = space.task(t)
        expected = (2, task.out_channels, *HW) if task.dense else (2, task.out_channels)
        assert tuple(out[t].shape) == expected, t
    sum(o.float().pow(2).mean() for o in out.values()).backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None]
    assert not missing
    zero = [k for k, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("name", list_baselines())
def test_parameter_count_matches_accounting(space, name, n):
    with torch.device("meta"):
        model = create_baseline(name, space, space.task_names[:n])
    numel = sum(p.numel() for p in model.parameters())
    assert baseline_params(name, space, space.task_names[:n]) == numel
    tasks = space.task_names[:n]
    if name == "single":
        assert numel == space.tree_params(Tree.single_task(tasks, space.depth))
    if name == "shared":
        assert numel == space.tree_params(Tree.fully_shared(tasks, space.depth))


def test_soft_sharing_counts_are_the_closed_forms(space):
    chans = [b.out_channels for b in space.blocks]
    single = space.tree_params(Tree.single_task(space.task_names[:3], space.depth))
    assert baseline_params("cross_stitch", space, space.task_names[:3]) == single + sum(
        9 * c for c in chans
    )
    assert baseline_params("nddr", space, space.task_names[:3]) == single + sum(
        3 * (3 * c * c + 2 * c) for c in chans
    )


@pytest.mark.parametrize("name", list_baselines())
def test_shared_and_task_parameters_partition_the_model(space, name):
    model = _build(name, space, 3)
    seen = _ids(model.shared_parameters())
    for t in space.task_names[:3]:
        seen += _ids(model.task_parameters(t))
    assert sorted(seen) == sorted(_ids(model.parameters()))  # each exactly once
    with pytest.raises(BranchnasError):
        list(model.task_parameters("nope"))


@pytest.mark.parametrize("name", list_baselines())
def test_subset_forward_and_unknown_task(space, name):
    model = _build(name, space, 3)
    out = model(_image(), tasks=["depth"])
    assert list(out) == ["depth"]
    with pytest.raises(BranchnasError, match="no task"):
        model(_image(), tasks=["scene"])


def test_soft_sharing_task_ownership(space):
    cs = _build("cross_stitch", space, 3)
    assert cs.shared_parameters() == []
    own = set(_ids(cs.task_parameters("depth")))
    assert set(_ids(cs.columns[1].parameters())) <= own
    assert all(id(u[1].weight) in own for u in cs.units)
    assert not any(id(u[0].weight) in own for u in cs.units)
    mtan = _build("mtan", space, 3)
    assert set(_ids(mtan.shared_parameters())) == set(
        _ids(mtan.blocks.parameters()) + _ids(mtan.bridges.parameters())
    )


# ---------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("cross_stitch", {"alpha_s": 1.5}, "self weight"),
        ("cross_stitch", {"alpha_d": -0.1}, "other-task weight"),
        ("cross_stitch", {"unit_lr_mult": 0}, "unit_lr_mult"),
        ("nddr", {"alpha": 2.0}, "self weight"),
        ("nddr", {"alpha_s": 0.9}, "does not take 'alpha_s'; it takes: alpha, beta, unit_lr_mult"),
        ("mtan", {"reduction": 0}, "reduction"),
        ("single", {"alpha": 0.9}, "it takes: no options"),
    ],
)
def test_bad_options_are_one_line_errors(space, name, kw, match):
    with pytest.raises(BranchnasError, match=match) as err:
        create_baseline(name, space, space.task_names[:2], **kw)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["cross_stitch", "nddr"])
def test_soft_sharing_needs_two_tasks(space, name):
    with pytest.raises(BranchnasError, match="at least two tasks"):
        create_baseline(name, space, ["depth"])


def test_bad_task_lists(space):
    with pytest.raises(BranchnasError, match="choose from"):
        create_baseline("mtan", space, ["depth", "albedo"])
    with pytest.raises(BranchnasError, match="twice"):
        create_baseline("nddr", space, ["depth", "depth"])


# ---------------------------------------------------------------------- cross-stitch
@pytest.mark.parametrize(
    "n, kw, own, other",
    [
        (2, {}, 0.9, 0.1),  # the paper's (α_S, α_D) = (0.9, 0.1)
        (3, {}, 0.9, 0.05),  # rows stay convex: (1 - 0.9) / 2
        (5, {"alpha_s": 0.8}, 0.8, 0.05),
        (3, {"alpha_s": 0.8, "alpha_d": 0.1}, 0.8, 0.1),
        (2, {"alpha_s": 0.5, "alpha_d": 0.5}, 0.5, 0.5),
    ],
)
def test_cross_stitch_initialisation(space, n, kw, own, other):
    model = _build("cross_stitch", space, n, **kw)
    assert len(model.units) == space.depth  # a unit after every block, the last included
    for d, units in enumerate(model.units):
        c = space.blocks[d].out_channels
        assert len(units) == n
        for i, unit in enumerate(units):
            expected = torch.full((n, c), other)
            expected[i] = own
            assert torch.equal(unit.weight.detach(), expected), (d, i)


def test_cross_stitch_unit_mixes_per_channel():
    torch.manual_seed(1)
    unit = CrossStitchUnit(3, 4, index=2, alpha_s=0.9, alpha_d=0.05)
    with torch.no_grad():
        unit.weight.copy_(torch.randn(3, 4))
    xs = torch.randn(3, 2, 4, 5, 5)
    expected = torch.zeros(2, 4, 5, 5)
    for j in range(3):
        for c in range(4):
            expected[:, c] += unit.weight[j, c].item() * xs[j, :, c]
    torch.testing.assert_close(unit(xs), expected)
    vec = torch.randn(3, 2, 4)  # vector features (fc blocks)
    ref = sum(unit.weight[j].detach() * vec[j] for j in range(3))
    torch.testing.assert_close(unit(vec), ref)


# ---------------------------------------------------------------------- NDDR
@pytest.mark.parametrize(
    "n, kw, own, other",
    [
        (2, {}, 0.9, 0.1),
        (3, {}, 0.9, 0.05),  # the appendix's α = 0.9, β = 0.05
        (3, {"alpha": 0.8}, 0.8, 0.1),  # the appendix's α = 0.8, β = 0.1
        (5, {"alpha": 0.8, "beta": 0.05}, 0.8, 0.05),
    ],
)
def test_nddr_initialisation(space, n, kw, own, other):
    model = _build("nddr", space, n, **kw)
    assert len(model.units) == space.depth
    for d, units in enumerate(model.units):
        c = space.blocks[d].out_channels
        for i, unit in enumerate(units):
            w = unit.conv.weight.detach()
            assert w.shape == (c, n * c, 1, 1) and unit.conv.bias is None
            for j in range(n):
                expected = torch.eye(c) * (own if j == i else other)
                assert torch.equal(w[:, j * c:(j + 1) * c, 0, 0], expected), (d, i, j)
            assert torch.equal(unit.bn.weight.detach(), torch.ones(c))
            assert torch.equal(unit.bn.bias.detach(), torch.zeros(c))


# ---------------------------------------------------------------------- learning rates
@pytest.mark.parametrize("name", ["cross_stitch", "nddr"])
@pytest.mark.parametrize("mult", [100.0, 10.0])
def test_param_groups_give_units_a_faster_rate(space, name, mult):
    model = _build(name, space, 2, unit_lr_mult=mult)
    groups = model.param_groups(0.01)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"network": 0.01, "units": pytest.approx(0.01 * mult)}
    units = next(g for g in groups if g["name"] == "units")["params"]
    assert sorted(_ids(units)) == sorted(_ids(model.units.parameters()))
    assert sorted(sum((_ids(g["params"]) for g in groups), [])) == sorted(_ids(model.parameters()))
    # one SGD step with unit gradients: the units move `mult` times further
    opt = torch.optim.SGD(groups, lr=0.01)
    unit_p, net_p = units[0], model.columns[0][0][0].weight
    before_u, before_n = unit_p.detach().clone(), net_p.detach().clone()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    torch.testing.assert_close(before_u - unit_p.detach(), torch.full_like(before_u, 0.01 * mult))
    torch.testing.assert_close(before_n - net_p.detach(), torch.full_like(before_n, 0.01))


def test_mtan_has_one_group(space):
    model = _build("mtan", space, 2)
    (group,) = model.param_groups(0.1)
    assert group["lr"] == 0.1 and len(group["params"]) == len(list(model.parameters()))


# ---------------------------------------------------------------------- init from single
def _single_nets(space, tasks, seed=10):
    nets = {}
    for k, t in enumerate(tasks):
        torch.manual_seed(seed + k)
        nets[t] = BranchedNet(Tree.single_task([t], space.depth), space)
    return nets


def _assert_same_module(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name", ["cross_stitch", "nddr"])
@pytest.mark.parametrize("as_state_dict", [False, True])
def test_init_from_single_copies_each_tasks_weights(space, name, as_state_dict):
    tasks = space.task_names[:3]
    model = _build(name, space, 3)
    nets = _single_nets(space, tasks)
    units_before = {k: v.clone() for k, v in model.units.state_dict().items()}
    assert not torch.equal(model.columns[0][0][0].weight, nets[tasks[0]].nodes[0][0][0].weight)
    src = {t: (n.state_dict() if as_state_dict else n) for t, n in nets.items()}
    model.init_from_single(src)
    for i, t in enumerate(tasks):
        for d in range(space.depth):
            _assert_same_module(model.columns[i][d], nets[t].nodes[d][0])
        _assert_same_module(model.heads[t], nets[t].heads[t])
    for k, v in model.units.state_dict().items():
        assert torch.equal(v, units_before[k]), k


def test_init_from_the_single_baseline_follows_each_tasks_path(space):
    tasks = space.task_names[:3]
    torch.manual_seed(3)
    single = create_baseline("single", space, tasks)
    model = _build("cross_stitch", space, 3)
    model.init_from_single(single)
    for i, t in enumerate(tasks):
        for d in range(space.depth):
            _assert_same_module(model.columns[i][d], single.nodes[d][single.paths[t][d]])


@pytest.mark.parametrize("name, kw, rtol", [
    ("cross_stitch", {"alpha_s": 1.0, "alpha_d": 0.0}, 0.0),
    ("nddr", {"alpha": 1.0, "beta": 0.0}, 1e-3),  # eval BN divides by sqrt(1 + eps)
])
def test_identity_units_reproduce_the_single_task_networks(space, name, kw, rtol):
    tasks = space.task_names[:2]
    nets = _single_nets(space, tasks)
    model = _build(name, space, 2, **kw)
    model.init_from_single(nets)
    model.eval()
    x = _image(5)
    with torch.no_grad():
        out = model(x)
        for t in tasks:
            ref = nets[t].eval()(x)[t]
            torch.testing.assert_close(out[t], ref, rtol=rtol, atol=1e-5)


def test_init_from_single_errors(space):
    tasks = space.task_names[:2]
    model = _build("cross_stitch", space, 2)
    nets = _single_nets(space, tasks)
    with pytest.raises(BranchnasError, match="no single-task weights"):
        model.init_from_single({tasks[0]: nets[tasks[0]]})
    two = BranchedNet(Tree.single_task(tasks, space.depth), space)
    with pytest.raises(BranchnasError, match="groups"):
        model.init_from_single({t: two.state_dict() for t in tasks})
    with pytest.raises(BranchnasError, match="predicts only"):
        model.init_from_single({tasks[0]: nets[tasks[1]], tasks[1]: nets[tasks[1]]})
    with pytest.raises(BranchnasError, match="not a BranchedNet"):
        model.init_from_single({t: nn.Linear(1, 1) for t in tasks})
    wide = SearchSpace("wide", create_backbone("smallcnn", widths=(8, 16, 32, 64)),
                       [space.task(t) for t in tasks], HW)
    other = {t: BranchedNet(Tree.single_task([t], wide.depth), wide) for t in tasks}
    with pytest.raises(BranchnasError, match="cannot load the block 1"):
        model.init_from_single(other)


# ---------------------------------------------------------------------- MTAN
def test_mtan_attention_masks_and_subset(space):
    model = _build("mtan", space, 3)
    calls, masks = [], []

    def hook(name):
        def record(module, inputs, output):
            calls.append(name)
            masks.append(output.detach())
        return record

    for t, mods in model.attention.items():
        for d, m in enumerate(mods):
            assert isinstance(m, AttentionModule)
            m.register_forward_hook(hook((t, d)))
    model(_image())
    assert len(calls) == 3 * space.depth
    assert all(m.min() >= 0 and m.max() <= 1 for m in masks)
    # mask shape equals the shared block output; later masks read [shared; bridged]
    for d, mods in enumerate(model.attention["depth"]):
        c = space.blocks[d].out_channels
        assert mods.layers[0].in_channels == (c if d == 0 else 2 * c)
        assert mods.layers[-3].out_channels == c
    calls.clear()
    model(_image(), tasks=["normals"])
    assert calls == [("normals", d) for d in range(space.depth)]


def test_mtan_attended_feature_is_mask_times_shared(space):
    model = _build("mtan", space, 2).eval()
    x = _image()
    seen = {}
    model.blocks[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("shared", o))
    model.attention["semseg"][-1].register_forward_hook(
        lambda m, i, o: seen.__setitem__("mask", o))
    model.heads["semseg"].register_forward_hook(
        lambda m, i, o: seen.__setitem__("head_in", i[0]))
    with torch.no_grad():
        model(x, tasks=["semseg"])
    torch.testing.assert_close(seen["head_in"], seen["mask"] * seen["shared"])


@pytest.mark.parametrize("reduction", [1, 4])
def test_mtan_reduction_count(space, reduction):
    model = create_baseline("mtan", space, space.task_names[:3], reduction=reduction)
    assert sum(p.numel() for p in model.parameters()) == baseline_params(
        "mtan", space, space.task_names[:3], reduction=reduction
    )


# ---------------------------------------------------------------------- every backbone
def _space_for(backbone_name, **kw):
    bb = create_backbone(backbone_name, **kw)
    if bb.spatial:
        tasks = [create_task("seg", "segmentation", num_classes=3), create_task("cls", "binary")]
    else:
        tasks = [create_task("a", "binary"), create_task("b", "binary")]
    return SearchSpace(f"test-{backbone_name}", bb, tasks, HW)


@pytest.mark.parametrize("backbone", list_backbones())
@pytest.mark.parametrize("name", list_baselines())
def test_every_backbone_builds_with_exact_counts(backbone, name):
    space = _space_for(backbone)
    with torch.device("meta"):
        model = create_baseline(name, space)
    assert sum(p.numel() for p in model.parameters()) == baseline_params(name, space)


@pytest.mark.parametrize("name", list_baselines())
def test_vector_blocks_forward_backward(name):
    """Thin VGG with fc blocks: the last two blocks output (B, C) vectors."""
    space = _space_for("vgg16_thin", width=4)
    assert not space.blocks[-1].spatial
    torch.manual_seed(0)
    model = create_baseline(name, space)
    out = model(_image())
    assert {t: tuple(o.shape) for t, o in out.items()} == {"a": (2, 1), "b": (2, 1)}
    sum(o.pow(2).mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------- registry metadata
_KNOWN_META = {"reuses_single", "tree", "count_params", "init_from_single", "training",
               "unit_lr_mult", "marker", "colour"}


@pytest.mark.parametrize("name", list_baselines())
def test_metadata_is_what_the_pipeline_reads(space, name):
    """Every baseline's metadata: known keys, a drawable style, a valid protocol, and the
    capabilities it declares (init_from_single, tree, count_params) actually present."""
    from branchnas.models.baselines import baseline_meta, model_style
    from branchnas.training import TrainConfig

    meta = baseline_meta(name)
    assert set(meta) <= _KNOWN_META
    marker, colour = model_style(name)
    assert marker in {"o", "s", "D", "^", "v", "P"} and colour.startswith("#") and len(colour) == 7
    TrainConfig.from_sources(None, meta.get("training"))  # valid training settings
    model = _build(name, space, 2)
    if meta.get("init_from_single"):
        assert callable(getattr(model, "init_from_single", None))
    if "tree" in meta:
        tree = meta["tree"](space.task_names[:2], space.depth)
        assert isinstance(model, BranchedNet) and model.tree == tree
    if "count_params" in meta:
        assert meta["count_params"](space, space.task_names[:2]) == sum(
            p.numel() for p in model.parameters())
    if "unit_lr_mult" in meta:
        lrs = {g["name"]: g["lr"] for g in model.param_groups(1.0)}
        assert lrs["units"] == pytest.approx(meta["unit_lr_mult"])
    baseline_meta(name).clear()  # a copy: the registry is untouched
    assert baseline_meta(name) == meta


def test_the_papers_soft_sharing_protocol():
    """Appendix A: cross-stitch / NDDR-CNN start from the best single-task models and train
    with SGD, lr 1e-3, momentum 0.9, their units at 100x the base rate; the others carry no
    protocol of their own; no function carries a monkey-patched attribute any more."""
    from branchnas.models.baselines import baseline_meta, fully_shared_net, single_task_net

    for name in ("cross_stitch", "nddr"):
        meta = baseline_meta(name)
        assert meta["init_from_single"] is True and meta["unit_lr_mult"] == 100.0
        assert meta["training"] == {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9}
    for name in ("shared", "mtan", "single"):
        assert "training" not in baseline_meta(name)
        assert not baseline_meta(name).get("init_from_single")
    assert baseline_meta("single")["reuses_single"] is True
    assert not hasattr(single_task_net, "count_params")
    assert not hasattr(fully_shared_net, "count_params")


def test_unknown_metadata_is_refused():
    with pytest.raises(BranchnasError, match="unknown metadata init_from_singles"):
        register_baseline("typo", MTAN, init_from_singles=True)
