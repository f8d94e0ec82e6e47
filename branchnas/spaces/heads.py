"""Task heads by task type: dense decoders (fcn, psp, aspp) and image-level heads (mlp, linear).

Every head is an ``nn.Module`` called as ``head(features, out_hw=None)``. Dense heads take
a feature map ``(B, C, h, w)`` and return ``(B, out_channels, H, W)`` upsampled
(bilinear) to ``out_hw = (H, W)``, the label resolution (at feature resolution when
``out_hw`` is None). Image-level heads take a feature map (global-average-pooled first) or
a vector ``(B, C)`` and return ``(B, out_channels)``; they ignore ``out_hw``.

=========== ======= ===========================================================================
kind        dense   layers (``c`` = in_channels)
=========== ======= ===========================================================================
``fcn``     yes     3×3 conv (c/4) - BN - ReLU - dropout - 1×1 conv (light FCN head)
``psp``     yes     pyramid pooling over bins 1, 2, 3, 6 (1×1 conv to c/4 each), concat with
                    the input, 3×3 conv (c/4) - BN - ReLU - dropout - 1×1 conv (PSPNet; the
                    paper's Cityscapes decoder)
``aspp``    yes     DeepLab-v3 ASPP: 1×1 conv + three 3×3 atrous convs (rates 6, 12, 18)
                    + image pooling, each to c/8; 1×1 projection, 3×3 conv, 1×1 conv
``mlp``     no      global average pool - linear (c/4) - ReLU - dropout - linear
``linear``  no      global average pool - linear (Lu et al.'s per-task output layer)
=========== ======= ===========================================================================

The pooled branches of ``psp`` and ``aspp`` use a biased conv + ReLU without batch norm,
so a training batch of one image still works (batch norm cannot normalise a 1×1 map of a
single sample).

Example:
    >>> import torch
    >>> head = create_head("fcn", 32, 5, dense=True)
    >>> head(torch.zeros(2, 32, 8, 8), out_hw=(32, 32)).shape
    torch.Size([2, 5, 32, 32])
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import Registry
from ..errors import BranchnasError
from ._common import check_kwargs, freeze_value, init_conv_bn
from .flops import count_params, measure_flops, on_meta

__all__ = [
    "Head",
    "FCNHead",
    "PSPHead",
    "ASPPHead",
    "MLPHead",
    "LinearHead",
    "register_head",
    "list_heads",
    "get_head",
    "create_head",
    "head_params",
    "head_flops",
]

_HEADS: Registry[Callable[..., "Head"]] = Registry("head")

OutHW = Optional[Sequence[int]]


class Head(nn.Module):
    """Base class of task heads: ``dense`` says whether it predicts per pixel."""

    dense: bool = True


def _resize(x: torch.Tensor, out_hw: OutHW) -> torch.Tensor:
    if out_hw is None or tuple(x.shape[-2:]) == tuple(int(v) for v in out_hw):
        return x
    return F.interpolate(
        x, size=tuple(int(v) for v in out_hw), mode="bilinear", align_corners=False
    )


def _need_map(x: torch.Tensor, kind: str) -> None:
    if x.dim() != 4:
        raise BranchnasError(
            f"the {kind} head needs a feature map (B, C, H, W) but got shape {tuple(x.shape)}; "
            "use a backbone whose last block is spatial (no fc blocks) for dense tasks"
        )


def _conv_bn_relu(c_in: int, c_out: int, k: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _pos_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BranchnasError(f"{what} must be a positive integer, got {value!r}")
    return value


def _dropout(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise BranchnasError(f"head dropout must be a number in [0, 1), got {p!r}")
    return float(p)


class FCNHead(Head):
    """Light FCN head: 3×3 conv - BN - ReLU - dropout - 1×1 conv, bilinear upsampling.

    Args:
        in_channels: feature channels.
        out_channels: prediction channels.
        channels: hidden channels; default ``max(in_channels // 4, 16)``.
        dropout: dropout before the classifier.
    """

    dense = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Optional[int] = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        mid = _pos_int(channels if channels is not None else max(in_channels // 4, 16), "channels")
        self.body = _conv_bn_relu(in_channels, mid, 3)
        self.drop = nn.Dropout2d(_dropout(dropout))
        self.classifier = nn.Conv2d(mid, out_channels, 1)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor, out_hw: OutHW = None) -> torch.Tensor:
        _need_map(x, "fcn")
        return _resize(self.classifier(self.drop(self.body(x))), out_hw)


class PSPHead(Head):
    """PSPNet decoder: pyramid pooling module, fusion conv, classifier, upsampling.

    Each bin size ``b`` average-pools the features to ``b × b``, reduces them with a
    1×1 conv to ``in_channels // len(bins)`` channels and upsamples back; the pooled maps
    are concatenated with the input and fused by a 3×3 conv.

    Args:
        in_channels: feature channels (2048 for ResNet-50).
        out_channels: prediction channels.
        bins: pooled grid sizes.
        channels: fusion conv channels; default ``max(in_channels // 4, 16)`` (512 for
            ResNet-50, as in PSPNet).
        dropout: dropout before the classifier.
    """

    dense = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        channels: Optional[int] = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        bins = tuple(_pos_int(b, "psp bin size") for b in bins)
        if not bins:
            raise BranchnasError("psp bins must list at least one grid size, e.g. [1, 2, 3, 6]")
        red = max(in_channels // len(bins), 1)
        mid = _pos_int(channels if channels is not None else max(in_channels // 4, 16), "channels")
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, red, 1), nn.ReLU(inplace=True)
            )
            for b in bins
        )
        self.fuse = _conv_bn_relu(in_channels + red * len(bins), mid, 3)
        self.drop = nn.Dropout2d(_dropout(dropout))
        self.classifier = nn.Conv2d(mid, out_channels, 1)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor, out_hw: OutHW = None) -> torch.Tensor:
        _need_map(x, "psp")
        hw = x.shape[-2:]
        pooled = [x] + [
            F.interpolate(stage(x), size=hw, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        y = self.fuse(torch.cat(pooled, dim=1))
        return _resize(self.classifier(self.drop(y)), out_hw)


class ASPPHead(Head):
    """DeepLab-v3 decoder: atrous spatial pyramid pooling, then 3×3 conv and classifier.

    Args:
        in_channels: feature channels.
        out_channels: prediction channels.
        rates: dilation rates of the 3×3 branches (6, 12, 18 as in DeepLab-v3 at output
            stride 16; double them at output stride 8).
        channels: channels of every branch and of the projection; default
            ``max(in_channels // 8, 16)`` (256 for ResNet-50).
        dropout: dropout after the projection.
    """

    dense = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: Sequence[int] = (6, 12, 18),
        channels: Optional[int] = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        rates = tuple(_pos_int(r, "aspp rate") for r in rates)
        c = _pos_int(channels if channels is not None else max(in_channels // 8, 16), "channels")
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, c, 1)]
            + [_conv_bn_relu(in_channels, c, 3, r) for r in rates]
        )
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, c, 1), nn.ReLU(inplace=True)
        )
        self.project = nn.Sequential(
            _conv_bn_relu(c * (len(rates) + 2), c, 1), nn.Dropout2d(_dropout(dropout))
        )
        self.body = _conv_bn_relu(c, c, 3)
        self.classifier = nn.Conv2d(c, out_channels, 1)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor, out_hw: OutHW = None) -> torch.Tensor:
        _need_map(x, "aspp")
        hw = x.shape[-2:]
        feats = [b(x) for b in self.branches]
        feats.append(
            F.interpolate(self.image_pool(x), size=hw, mode="bilinear", align_corners=False)
        )
        y = self.body(self.project(torch.cat(feats, dim=1)))
        return _resize(self.classifier(y), out_hw)


def _global_pool(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    if x.dim() != 2:
        raise BranchnasError(
            f"image-level heads take (B, C, H, W) or (B, C) features, got shape {tuple(x.shape)}"
        )
    return x


class MLPHead(Head):
    """Image-level head: global average pool, linear, ReLU, dropout, linear.

    Args:
        in_channels: feature channels.
        out_channels: outputs (class logits, or 1 for a binary task).
        hidden: hidden features; default ``max(in_channels // 4, 32)``.
        dropout: dropout after the hidden layer.
    """

    dense = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: Optional[int] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        h = _pos_int(hidden if hidden is not None else max(in_channels // 4, 32), "hidden")
        self.net = nn.Sequential(
            nn.Linear(in_channels, h),
            nn.ReLU(inplace=True),
            nn.Dropout(_dropout(dropout)),
            nn.Linear(h, out_channels),
        )

    def forward(self, x: torch.Tensor, out_hw: OutHW = None) -> torch.Tensor:
        return self.net(_global_pool(x))


class LinearHead(Head):
    """Image-level head: global average pool (for feature maps) and one linear layer.

    Args:
        in_channels: feature channels.
        out_channels: outputs.
    """

    dense = False

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor, out_hw: OutHW = None) -> torch.Tensor:
        return self.fc(_global_pool(x))


def register_head(name: str, cls: Optional[Callable[..., Head]] = None) -> Any:
    """Register a head class (``cls(in_channels, out_channels, **kw)`` with a ``dense``
    attribute); usable as a decorator.

    Raises:
        BranchnasError: if ``name`` is taken.
    """
    return _HEADS.register(name, cls)


def list_heads() -> List[str]:
    """Names of the registered head kinds, sorted."""
    return _HEADS.names()


def get_head(kind: str) -> Callable[..., Head]:
    """The head class registered as ``kind``.

    Raises:
        BranchnasError: for an unknown kind, listing the known ones.
    """
    return _HEADS.get(kind)


for _name, _cls in (
    ("fcn", FCNHead),
    ("psp", PSPHead),
    ("aspp", ASPPHead),
    ("mlp", MLPHead),
    ("linear", LinearHead),
):
    register_head(_name, _cls)


def _check(
    kind: str, in_channels: int, out_channels: int, dense: bool, kwargs: Dict[str, Any]
) -> Callable[..., Head]:
    cls = get_head(kind)
    _pos_int(in_channels, "head in_channels")
    _pos_int(out_channels, "head out_channels")
    is_dense = bool(getattr(cls, "dense", True))
    if is_dense != bool(dense):
        fits = [k for k in list_heads() if bool(getattr(get_head(k), "dense", True)) == bool(dense)]
        what = "pixel-wise (dense)" if dense else "image-level"
        raise BranchnasError(
            f"head {kind!r} does not fit a {what} task; choose one of: {', '.join(fits)}"
        )
    check_kwargs(cls, kwargs, f"head {kind!r}", reserved=("in_channels", "out_channels"))
    return cls


def create_head(kind: str, in_channels: int, out_channels: int, dense: bool, **kwargs: Any) -> Head:
    """Build a head of ``kind`` for a task with ``out_channels`` outputs.

    Args:
        kind: a registered head kind (``list_heads()``).
        in_channels: channels of the features it reads (the last block's output).
        out_channels: the task's prediction channels.
        dense: whether the task predicts per pixel; must match the head kind.
        **kwargs: head options (see the head classes).

    Raises:
        BranchnasError: for an unknown kind or option, or a head that does not fit the task.
    """
    cls = _check(kind, in_channels, out_channels, dense, kwargs)
    return cls(in_channels, out_channels, **kwargs)


_PARAMS_CACHE: Dict[Any, int] = {}
_FLOPS_CACHE: Dict[Any, int] = {}


def head_params(kind: str, in_channels: int, out_channels: int, dense: bool, **kwargs: Any) -> int:
    """Parameters of a head (measured once on the meta device and cached)."""
    key = (kind, in_channels, out_channels, bool(dense), freeze_value(kwargs))
    if key not in _PARAMS_CACHE:
        cls = _check(kind, in_channels, out_channels, dense, kwargs)
        _PARAMS_CACHE[key] = count_params(on_meta(lambda: cls(in_channels, out_channels, **kwargs)))
    return _PARAMS_CACHE[key]


def head_flops(
    kind: str,
    in_channels: int,
    out_channels: int,
    dense: bool,
    feature_shape: Sequence[int],
    out_hw: OutHW = None,
    **kwargs: Any,
) -> int:
    """FLOPs of a head for one image (meta device, cached).

    Args:
        kind, in_channels, out_channels, dense, kwargs: as for :func:`create_head`.
        feature_shape: the features' shape without the batch dimension, ``(C, h, w)`` or ``(C,)``.
        out_hw: the output (label) resolution.
    """
    shape: Tuple[int, ...] = tuple(int(s) for s in feature_shape)
    hw = None if out_hw is None else tuple(int(v) for v in out_hw)
    key = (kind, in_channels, out_channels, bool(dense), shape, hw, freeze_value(kwargs))
    if key not in _FLOPS_CACHE:
        cls = _check(kind, in_channels, out_channels, dense, kwargs)
        head = on_meta(lambda: cls(in_channels, out_channels, **kwargs))
        flops, _ = measure_flops(head, (1,) + shape, call=lambda m, x: m(x, out_hw=hw))
        _FLOPS_CACHE[key] = flops
    return _FLOPS_CACHE[key]
