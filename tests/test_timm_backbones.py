"""timm models as backbones: the backbone contract for each family, equality with timm's own
feature maps, exact accounting of a BranchedNet built on them, and one-line refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from branchnas.errors import BranchnasError
from branchnas.models import BranchedNet
from branchnas.spaces import SearchSpace, TimmBackbone, create_backbone, describe_space, load_space
from branchnas.tree import Tree

timm = pytest.importorskip("timm")

HW = (32, 32)
NO_PREFIX = {"class_token": False, "global_pool": "avg"}
TINY_SWIN = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "img_size": 32,
             "window_size": 2}
# The smallest model of each family timm registers (timm's own test_* models where they exist).
CASES = [
    ("timm:test_resnet", {}),
    ("timm:test_convnext", {}),
    ("timm:test_efficientnet", {}),
    ("timm:regnetx_002", {}),
    ("timm:mobilenetv3_small_050", {}),
    ("timm:test_byobnet", {}),
    ("timm:test_vit", {"out_indices": [1, 3, 5], "model_kwargs": NO_PREFIX}),
    # NHWC stages (permuted at block boundaries); a one-layer-per-stage Swin to stay small
    ("timm:swin_tiny_patch4_window7_224", {"model_kwargs": TINY_SWIN}),
]
IDS = [n[5:] + "".join(f"-{k}" for k in kw) for n, kw in CASES]


def _chain(blocks, x):
    outs = []
    for block in blocks:
        x = block(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_contract_forward_backward_channels_strides_params_flops(name, kw):
    torch.manual_seed(0)
    bb = create_backbone(name, **kw)
    info = bb.blocks
    assert bb.depth == len(bb.out_indices) == len(info) >= 3
    assert info[0].in_channels == 3 and all(b.spatial for b in info)
    blocks = [bb.make_block(d) for d in range(bb.depth)]
    x = torch.randn(2, 3, *HW)
    # CPU's fused attention kernel is invisible to the FLOP counter; the math kernel (what the
    # meta device runs) is not, so count with it.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        outs = _chain(blocks, x)
    assert 2 * sum(bb.block_flops(HW)) == counter.get_total_flops() > 0
    for d, (b, block, y) in enumerate(zip(info, blocks, outs)):
        assert sum(p.numel() for p in block.parameters()) == b.params > 0, b.name
        if d:
            assert b.in_channels == info[d - 1].out_channels
        assert y.shape[:2] == (2, b.out_channels), b.name
        assert tuple(y.shape[-2:]) == tuple(math.ceil(s / b.stride) for s in HW), b.name
    assert bb.block_shapes(HW) == [tuple(y.shape[1:]) for y in outs]
    sum(y.pow(2).mean() for y in outs).backward()
    for d, block in enumerate(blocks):
        for pname, p in block.named_parameters():
            assert p.grad is not None, f"block {d} {pname} got no gradient"
            assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_blocks_reproduce_timms_features_only_maps(name, kw):
    bb = create_backbone(name, **kw)
    blocks = torch.nn.ModuleList(bb.split(bb._create()))
    ref = bb._create(features_only=True, out_indices=bb.out_indices)
    ours, theirs = blocks.state_dict(), ref.state_dict()
    assert [v.shape for v in ours.values()] == [v.shape for v in theirs.values()]
    ref.load_state_dict(dict(zip(theirs, ours.values())))  # same tensors, timm's names
    blocks.eval(), ref.eval()
    x = torch.randn(2, 3, *HW)
    with torch.no_grad():
        expected = ref(x)
        got = _chain(blocks, x)
    if bb._nhwc:  # timm hands these models' maps out as NHWC; blocks speak NCHW
        expected = [y.permute(0, 3, 1, 2) for y in expected]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_meta_blocks_are_free_and_fresh_copies_are_independently_initialised(name, kw):
    bb = create_backbone(name, **kw)
    with torch.device("meta"):
        assert all(p.is_meta for p in bb.make_block(bb.depth - 1).parameters())
    torch.manual_seed(1)
    a, b = bb.make_block(0), bb.make_block(0)
    wa = [p for p in a.parameters() if p.dim() > 1]
    wb = [p for p in b.parameters() if p.dim() > 1]
    assert any(not torch.equal(u, v) for u, v in zip(wa, wb))
    assert all(torch.isfinite(p).all() for p in a.parameters())


def _space(backbone: dict, size=(32, 32)) -> SearchSpace:
    raw = {
        "backbone": backbone,
        "input": {"size": list(size)},
        "dataset": {"name": "scenes", "resolution": list(size)},
        "heads": {"dense": "fcn", "image": "mlp"},
        "tasks": [
            {"name": "semseg", "type": "segmentation", "params": {"num_classes": 6}},
            {"name": "depth", "type": "depth"},
            {"name": "scene", "type": "classification", "params": {"num_classes": 8}},
        ],
    }
    return SearchSpace.from_dict(raw, name="timm-test")


@pytest.mark.parametrize(
    "backbone",
    [
        {"name": "timm:test_convnext"},
        {"name": "timm:test_vit", "out_indices": [1, 3, 5], "model_kwargs": NO_PREFIX},
    ],
    ids=["convnext", "vit"],
)
def test_branched_net_on_a_timm_backbone_costs_what_the_accounting_says(backbone):
    space = _space(backbone)
    names = space.task_names
    d = space.depth
    tree = Tree(names, [[names]] + [[["semseg", "depth"], ["scene"]]] * (d - 2)
                + [[["semseg"], ["depth"], ["scene"]]])
    torch.manual_seed(0)
    net = BranchedNet(tree, space)
    assert sum(p.numel() for p in net.parameters()) == space.tree_params(tree)
    x = torch.randn(2, 3, *space.input_size)
    net.eval()  # one image: batch norm on a 1x1 map needs running statistics
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as c:
        net(x[:1])
    assert c.get_total_flops() == space.tree_flops(tree)
    out = net.train()(x)
    assert out["semseg"].shape == (2, 6, 32, 32) and out["scene"].shape == (2, 8)
    sum(v.float().pow(2).mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in net.parameters())
    with torch.device("meta"):
        single = BranchedNet(space.single_task_tree(), space)
    assert sum(p.numel() for p in single.parameters()) == space.tree_params(space.single_task_tree())


def test_shipped_timm_space_describes_and_round_trips():
    space = load_space("scenes-timm")
    assert space.backbone.name.startswith("timm:")
    desc = describe_space(space)
    assert [b["stride"] for b in desc["blocks"]] == [b.stride for b in space.blocks]
    again = SearchSpace.from_dict(space.to_dict(), name=space.name)
    assert describe_space(again) == desc


def test_timm_backbone_options_reach_timm_and_the_spec():
    bb = create_backbone("timm:test_resnet", out_indices=[-2, -1])
    assert bb.out_indices == (3, 4) and [b.name for b in bb.blocks] == ["layer3", "layer4"]
    assert bb.blocks[0].in_channels == 3  # the stem and layers 1-3 form block 1
    assert bb.spec == {"name": "timm:test_resnet", "out_indices": [-2, -1]}
    assert isinstance(bb, TimmBackbone)
    dil = create_backbone("timm:test_resnet", output_stride=8)
    assert [b.stride for b in dil.blocks] == [2, 4, 8, 8, 8]
    assert dil.block_params == create_backbone("timm:test_resnet").block_params


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"name": "timm:resnet5o"}, "unknown timm model 'resnet5o'; close matches: resnet50"),
        ({"name": "timm:"}, "names no timm model"),
        ({"name": "timm:test_vit"}, "class_token = false"),
        ({"name": "timm:levit_128s"}, "forward_intermediates"),
        ({"name": "timm:legacy_xception"}, "FeatureHookNet"),
        ({"name": "timm:hrnet_w18_small"}, "HighResolutionNetFeatures"),
        ({"name": "timm:selecsls42b"}, "outputs list, not the"),
        ({"name": "timm:test_resnet", "model_kwargs": {"no_such_option": 1}}, "timm cannot build"),
        ({"name": "timm:test_resnet", "out_indices": [9]}, "timm cannot build"),
        ({"name": "timm:test_resnet", "pretrained": "yes"}, "true or false"),
        ({"name": "timm:test_resnet", "model_kwargs": {"features_only": True}}, "may not set"),
        ({"name": "timm:test_resnet", "output_stride": 4}, "32, 16 or 8"),
        ({"name": "timm:test_resnet", "stride": 4}, "unknown option 'stride'"),
        ({"name": "resnet5o"}, "or 'timm:<model>'"),
    ],
)
def test_bad_timm_backbones_fail_with_one_line_errors(kw, match):
    name = kw.pop("name")
    with pytest.raises(BranchnasError, match=match) as info:
        create_backbone(name, **kw)
    assert "\n" not in str(info.value)


def test_a_bad_timm_backbone_in_a_space_names_the_key():
    with pytest.raises(BranchnasError, match=r"key 'backbone\.out_index'") as info:
        _space({"name": "timm:test_resnet", "out_index": [1]})
    assert "out_indices" in str(info.value)
