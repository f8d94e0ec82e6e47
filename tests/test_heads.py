"""Contract tests for the head registry: every head kind, forward + backward on tiny inputs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from branchnas.errors import BranchnasError
from branchnas.spaces import create_head, get_head, head_flops, head_params, list_heads

DENSE = [k for k in list_heads() if get_head(k).dense]
IMAGE = [k for k in list_heads() if not get_head(k).dense]


def test_registry_has_the_documented_kinds():
    assert {"fcn", "psp", "aspp"} <= set(DENSE)
    assert {"mlp", "linear"} <= set(IMAGE)


def _grads_ok(head: torch.nn.Module) -> None:
    for name, p in head.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("kind", DENSE)
@pytest.mark.parametrize("feat_hw,out_hw", [((8, 8), (32, 32)), ((5, 7), (37, 50))])
def test_dense_heads_upsample_to_label_resolution_and_train(kind, feat_hw, out_hw):
    torch.manual_seed(0)
    head = create_head(kind, 32, 5, dense=True)
    x = torch.randn(2, 32, *feat_hw, requires_grad=True)
    y = head(x, out_hw=out_hw)
    assert y.shape == (2, 5, *out_hw)
    y.pow(2).mean().backward()
    _grads_ok(head)
    assert x.grad is not None and x.grad.abs().sum() > 0
    # no out_hw: prediction at feature resolution
    assert head(x, out_hw=None).shape == (2, 5, *feat_hw)


@pytest.mark.parametrize("kind", IMAGE)
@pytest.mark.parametrize("shape", [(2, 24, 4, 4), (2, 24)])
def test_image_heads_pool_maps_or_take_vectors_and_ignore_out_hw(kind, shape):
    torch.manual_seed(0)
    head = create_head(kind, 24, 3, dense=False)
    x = torch.randn(*shape)
    y = head(x, out_hw=(64, 64))
    assert y.shape == (2, 3)
    y.pow(2).mean().backward()
    _grads_ok(head)


@pytest.mark.parametrize("kind", DENSE)
def test_dense_heads_train_on_a_batch_of_one(kind):
    head = create_head(kind, 16, 2, dense=True).train()
    head(torch.randn(1, 16, 6, 6), out_hw=(24, 24)).sum().backward()
    _grads_ok(head)


CASES = [(k, True, (16, 6, 10), (48, 80)) for k in DENSE] + [
    (k, False, s, None) for k in IMAGE for s in [(16, 6, 10), (16,)]
]


@pytest.mark.parametrize("kind,dense,feat,out_hw", CASES)
def test_params_and_flops_metadata_equal_the_built_head(kind, dense, feat, out_hw):
    head = create_head(kind, 16, 4, dense=dense).eval()
    assert head_params(kind, 16, 4, dense) == sum(p.numel() for p in head.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head(torch.zeros(1, *feat), out_hw=out_hw)
    assert head_flops(kind, 16, 4, dense, feat, out_hw) == counter.get_total_flops() > 0


def test_psp_head_on_resnet50_features_has_pspnet_size():
    # PSPNet: 4 bins x (1x1 conv 2048->512 + bias), 3x3 fusion conv 4096->512 + BN,
    # 1x1 classifier 512->C + bias. Three of them plus the dilated ResNet-50 encoder give
    # the paper's Cityscapes parameter counts (tests/test_spaces.py).
    c = 19
    expected = 4 * (2048 * 512 + 512) + 4096 * 512 * 9 + 2 * 512 + 512 * c + c
    assert head_params("psp", 2048, c, dense=True) == expected
    assert abs(expected / 23.08e6 - 1) < 0.01


def test_options_change_the_head():
    small = head_params("psp", 64, 3, True, channels=8, bins=[1, 2])
    assert small == 2 * (64 * 32 + 32) + (64 + 64) * 8 * 9 + 2 * 8 + 8 * 3 + 3
    assert head_params("mlp", 64, 3, False, hidden=10) == 64 * 10 + 10 + 10 * 3 + 3
    assert head_params("fcn", 64, 3, True, channels=8) == 64 * 8 * 9 + 2 * 8 + 8 * 3 + 3
    head = create_head("aspp", 32, 2, dense=True, rates=[1, 2], channels=8)
    assert len(head.branches) == 3


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: create_head("unet", 8, 2, dense=True), "unknown head 'unet'; choose one of: "),
        (
            lambda: create_head("psp", 8, 2, dense=False),
            "image-level task; choose one of: linear, mlp",
        ),
        (lambda: create_head("mlp", 8, 2, dense=True), "dense"),
        (lambda: create_head("fcn", 8, 2, dense=True, width=3), "unknown option 'width'"),
        (lambda: create_head("psp", 8, 2, dense=True, bins=[0]), "bin size"),
        (lambda: create_head("fcn", 8, 2, dense=True, dropout=1.5), "dropout"),
        (lambda: create_head("fcn", 8, 0, dense=True), "out_channels"),
        (lambda: create_head("fcn", 8, 2, dense=True)(torch.zeros(1, 8)), "feature map"),
    ],
)
def test_bad_input_raises_one_line_errors(call, match):
    with pytest.raises(BranchnasError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
