"""Contract tests for the backbone registry: every backbone, on tiny inputs, on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from branchnas.errors import BranchnasError
from branchnas.spaces import (
    CutBackbone,
    create_backbone,
    create_head,
    head_params,
    list_backbones,
)

HW = (32, 32)

# Every registered backbone with its defaults, plus the other configurations the shipped
# search spaces use.
# (resnet50 at output stride 16 runs the same code as resnet50_dilated; its strides are
# checked on metadata below, which keeps this file fast on a busy 2-core machine.)
CASES = [(name, {}) for name in list_backbones()] + [
    ("vgg16_thin", {"width": 64}),
    ("smallcnn", {"strides": [2, 2, 2, 2]}),
]
IDS = [n + "".join(f"-{k}={v}" for k, v in kw.items()) for n, kw in CASES]


def test_registry_lists_the_required_backbones():
    names = set(list_backbones())
    assert {"resnet18", "resnet34", "resnet50", "resnet50_dilated", "vgg16", "vgg16_thin"} <= names
    assert {"segnet", "smallcnn"} <= names


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_forward_backward_channels_strides_params_and_flops_match_metadata(name, kw):
    torch.manual_seed(0)
    bb = create_backbone(name, **kw)
    info = bb.blocks
    assert len(info) == bb.depth >= 4
    assert info[0].in_channels == bb.in_channels == 3
    blocks = [bb.make_block(d) for d in range(bb.depth)]
    x = torch.randn(2, 3, *HW)
    outs, flops = [], []
    for block in blocks:
        with FlopCounterMode(display=False) as counter:
            x = block(x)
        outs.append(x)
        flops.append(counter.get_total_flops())
    # FLOPs: metadata (meta device, one image) == torch's counter on the built blocks
    assert [2 * f for f in bb.block_flops(HW)] == flops
    assert all(f > 0 for f in flops)
    for d, (b, block, y) in enumerate(zip(info, blocks, outs)):
        # parameters: metadata == the built block
        assert sum(p.numel() for p in block.parameters()) == b.params, b.name
        if d > 0:
            assert b.in_channels == info[d - 1].out_channels
        assert y.shape[1] == b.out_channels, b.name
        if b.spatial:
            assert y.dim() == 4
            assert tuple(y.shape[-2:]) == tuple(math.ceil(s / b.stride) for s in HW), b.name
        else:
            assert y.dim() == 2 and b.stride == 0
    assert bb.block_shapes(HW) == [tuple(y.shape[1:]) for y in outs]
    # backward: every parameter of every block receives a gradient
    sum(y.float().pow(2).mean() for y in outs).backward()
    for d, block in enumerate(blocks):
        for pname, p in block.named_parameters():
            assert p.grad is not None, f"block {d} {pname} got no gradient"
            assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_make_block_on_meta_device_is_free_and_fresh_blocks_differ(name, kw):
    bb = create_backbone(name, **kw)
    with torch.device("meta"):
        block = bb.make_block(bb.depth - 1)
    assert all(p.is_meta for p in block.parameters())
    torch.manual_seed(1)
    a = bb.make_block(0)
    b = bb.make_block(0)
    wa = next(p for p in a.parameters() if p.dim() > 1)
    wb = next(p for p in b.parameters() if p.dim() > 1)
    assert wa.shape == wb.shape and not torch.equal(wa, wb)
    for m in a.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))
    assert all(torch.isfinite(p).all() for p in a.parameters())


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_resnet_blocks_are_torchvision_layers_without_the_classifier(arch):
    import torchvision

    with torch.device("meta"):
        ref = getattr(torchvision.models, arch)(weights=None)
        bb = create_backbone(arch)
        ours = [bb.make_block(d) for d in range(4)]
    ref_shapes = [tuple(p.shape) for n, p in ref.named_parameters() if not n.startswith("fc.")]
    our_shapes = [tuple(p.shape) for block in ours for p in block.parameters()]
    assert our_shapes == ref_shapes  # same layers in the same order: weights load 1:1
    assert [b.stride for b in bb.blocks] == [4, 8, 16, 32]


def test_dilated_resnet50_has_output_stride_8_and_the_same_parameters():
    plain, dilated = create_backbone("resnet50"), create_backbone("resnet50_dilated")
    assert [b.stride for b in dilated.blocks] == [4, 8, 8, 8]
    assert create_backbone("resnet50", output_stride=8).blocks == dilated.blocks
    assert [b.stride for b in create_backbone("resnet50", output_stride=16).blocks] == [
        4,
        8,
        16,
        16,
    ]
    assert dilated.block_params == plain.block_params
    assert sum(dilated.block_params) == 23_508_032  # torchvision ResNet-50 without fc
    assert dilated.block_shapes((64, 128))[-1] == (2048, 8, 16)


def test_dilated_resnet50_computes_what_torchvisions_dilated_resnet50_computes():
    # The resnet* backbones are timm's ResNets cut at feature_info: same parameter names as
    # torchvision's, so torchvision's weights load 1:1 and the maps agree.
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    bb = create_backbone("resnet50_dilated")
    model = bb._create()
    model.load_state_dict(ref.state_dict())  # strict: every name and shape matches
    blocks = torch.nn.Sequential(*bb.split(model)).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        want = torch.nn.Sequential(*list(ref.children())[:-2])(x)
        got = blocks(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert got.shape[-2:] == (5, 5)  # output stride 8


def test_basic_block_resnets_dilate_too():
    bb = create_backbone("resnet18", output_stride=8)
    assert [b.stride for b in bb.blocks] == [4, 8, 8, 8]
    assert bb.block_params == create_backbone("resnet18").block_params
    assert bb.block_shapes((32, 32))[-1] == (512, 4, 4)


def test_vgg16_with_fc_and_40_linear_heads_matches_lu_et_al_baseline():
    # Table 3 of the paper: "VGG-16 Baseline (Lu et al., 2017)" has 134.41M parameters.
    bb = create_backbone("vgg16", fc=True)
    assert [b.name for b in bb.blocks] == [
        "conv1",
        "conv2",
        "conv3",
        "conv4",
        "conv5",
        "fc6",
        "fc7",
    ]
    total = sum(bb.block_params) + 40 * head_params("linear", 4096, 1, dense=False)
    assert abs(total / 134.41e6 - 1) < 0.001


@pytest.mark.parametrize("width", [16, 32, 64, 200])
def test_thin_vgg_widths_are_min_of_omega_and_vgg_and_fc_is_two_omega(width):
    bb = create_backbone("vgg16_thin", width=width)
    vgg = [64, 128, 256, 512, 512]
    assert [b.out_channels for b in bb.blocks[:5]] == [min(width, c) for c in vgg]
    assert [b.out_channels for b in bb.blocks[5:]] == [2 * width, 2 * width]
    assert [b.spatial for b in bb.blocks] == [True] * 5 + [False] * 2
    # fc6 reads a 7x7 pooled map whatever the input size, so its size is fixed
    assert bb.blocks[5].params == (min(width, 512) * 49 + 1) * 2 * width
    assert bb.block_shapes((48, 40))[5] == (2 * width,)


def test_segnet_encoder_is_vgg16_conv_layout_with_batch_norm():
    seg = create_backbone("segnet")
    with torch.device("meta"):
        modules = [m for d in range(5) for m in seg.make_block(d).modules()]
    convs = [m for m in modules if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in modules if isinstance(m, torch.nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128] + [256] * 3 + [512] * 6
    assert len(bns) == 13
    assert [b.name for b in seg.blocks] == ["enc1", "enc2", "enc3", "enc4", "enc5"]


def test_cut_backbone_merges_consecutive_blocks():
    base = create_backbone("resnet18")
    cut = base.with_cuts([1])  # cuts after layer2 and (always) layer4
    assert isinstance(cut, CutBackbone) and cut.depth == 2
    assert [b.name for b in cut.blocks] == ["layer2", "layer4"]
    assert cut.block_params == [sum(base.block_params[:2]), sum(base.block_params[2:])]
    assert cut.block_flops(HW) == [sum(base.block_flops(HW)[:2]), sum(base.block_flops(HW)[2:])]
    assert [b.stride for b in cut.blocks] == [8, 32]
    assert cut.blocks[1].in_channels == 128
    block = cut.make_block(1)
    assert sum(p.numel() for p in block.parameters()) == cut.blocks[1].params
    assert base.with_cuts(None) is base and base.with_cuts([0, 1, 2, 3]) is base
    with pytest.raises(BranchnasError, match="increasing"):
        base.with_cuts([2, 1])
    with pytest.raises(BranchnasError, match="0..3"):
        base.with_cuts([7])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: create_backbone("resnet51"), "unknown backbone 'resnet51'; choose one of: "),
        (lambda: create_backbone("resnet50", stride=8), "unknown option 'stride'"),
        (lambda: create_backbone("resnet50", output_stride=4), "use 32, 16 or 8"),
        (lambda: create_backbone("resnet50", weights="NOPE"), "IMAGENET1K_V1"),
        (lambda: create_backbone("smallcnn", widths=[8, 8], strides=[2]), "one per width"),
        (lambda: create_backbone("vgg16_thin", width=0), "positive"),
        (lambda: create_backbone("smallcnn").make_block(4), "0..3"),
        (lambda: create_backbone("vgg16").block_flops((8, 8)), "too small"),
    ],
)
def test_bad_input_raises_one_line_errors(call, match):
    with pytest.raises(BranchnasError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_create_backbone_reuses_equal_descriptions():
    assert create_backbone("smallcnn") is create_backbone("smallcnn")
    assert create_backbone("smallcnn").spec == {"name": "smallcnn"}
    other = create_backbone("smallcnn", widths=[8, 16, 32, 64])
    assert other is not create_backbone("smallcnn")
    assert [b.out_channels for b in other.blocks] == [8, 16, 32, 64]


def test_a_head_reads_the_last_block_of_any_spatial_backbone():
    bb = create_backbone("smallcnn")
    head = create_head("fcn", bb.out_channels, 2, dense=True)
    x = torch.zeros(1, 3, 40, 24)
    for d in range(bb.depth):
        x = bb.make_block(d)(x)
    assert tuple(x.shape[1:]) == bb.block_shapes((40, 24))[-1]
    assert head(x, out_hw=(40, 24)).shape == (1, 2, 40, 24)
