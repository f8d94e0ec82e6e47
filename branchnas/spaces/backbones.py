"""Backbones cut into D sharable blocks, with per-block metadata (like timm's ``feature_info``).

A backbone here is a *description*: :class:`Backbone` knows, for each of its ``D``
blocks, the input/output channels, the cumulative output stride and the parameter count
(:class:`BlockInfo`), can report per-block FLOPs at any input size, and builds fresh copies
of any block with :meth:`Backbone.make_block`. The stem always belongs to block 1, so a
tree that shares nothing is exactly ``N`` single-task networks. A branched network is
built from these copies, one per group of the task tree, so budgets and branch points
come from this metadata and never from hard-coded layer names.

Registered backbones (``list_backbones()``):

==================== ===== ========================================================
name                 D     blocks
==================== ===== ========================================================
``resnet18/34/50``   4     stem + layer1, layer2, layer3, layer4 (timm's ResNets:
                           torchvision's architecture, loads torchvision's weights);
                           ``output_stride`` 32, 16 or 8 (dilation)
``resnet50_dilated`` 4     ResNet-50 at output stride 8 (Cityscapes, as in the paper)
``vgg16``            5(+2) conv1..conv5 (each ends with max-pool); ``fc=True`` adds
                           fc6, fc7 (vector outputs, for image-level tasks)
``vgg16_thin``       7     thin-ω VGG-16 of Lu et al. 2017: conv widths
                           ``min(ω, VGG width)``, fc6/fc7 with ``2ω`` features
``segnet``           5     MTAN's SegNet encoder (VGG-16 conv layout, conv-bn-relu)
``smallcnn``         4     a small conv net sized for CPU work on the ``scenes`` benchmark
==================== ===== ========================================================

Besides these, ``"timm:<model>"`` names any timm model that can be cut at its
``feature_info`` stages (:mod:`branchnas.spaces.timm_backbone`).

Example:
    >>> bb = create_backbone("smallcnn")
    >>> [b.out_channels for b in bb.blocks]
    [16, 32, 64, 128]
    >>> [b.stride for b in bb.blocks]
    [2, 4, 8, 8]
"""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._registry import Registry
from ..errors import BranchnasError
from ._common import check_hw, check_kwargs, freeze_value, init_conv_bn
from .flops import count_params, measure_flops, on_meta

__all__ = [
    "BlockInfo",
    "Backbone",
    "CutBackbone",
    "ResNetBackbone",
    "TimmBackbone",
    "TIMM_PREFIX",
    "VGGBackbone",
    "SmallCNNBackbone",
    "register_backbone",
    "list_backbones",
    "get_backbone",
    "create_backbone",
]

logger = logging.getLogger(__name__)

_BACKBONES: Registry[Callable[..., "Backbone"]] = Registry("backbone")

#: names starting with this are timm models (``"timm:convnext_atto"``)
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class BlockInfo:
    """Metadata of one sharable block (a cut point sits after it).

    Attributes:
        name: the location name (used for affinity locations and tables).
        in_channels: channels (or features) the block consumes.
        out_channels: channels (or features) it produces.
        stride: cumulative output stride of the backbone after this block; ``0`` for a
            block that outputs a vector (``spatial`` False), such as VGG's fc layers.
        params: parameters of one copy of the block (the stem is part of block 1).
        spatial: whether the block outputs a feature map ``(B, C, H, W)`` rather than a
            vector ``(B, C)``.
    """

    name: str
    in_channels: int
    out_channels: int
    stride: int
    params: int
    spatial: bool = True


@dataclass(frozen=True)
class _BlockSpec:
    name: str
    in_channels: int
    out_channels: int
    stride: int
    spatial: bool = True


class Backbone(ABC):
    """A backbone as D sharable blocks: metadata plus a factory for fresh block copies.

    Subclasses implement :meth:`_specs` (names, channels, strides) and
    :meth:`_build_block` (a freshly initialised block on the current default device).
    Parameter counts are measured once on the meta device; FLOPs are measured on the meta
    device per input size and cached.

    Args:
        name: the registry name.
        config: the keyword arguments it was created with (for display and caching).
    """

    in_channels: int = 3

    def __init__(self, name: str, config: Optional[Dict[str, Any]] = None) -> None:
        self.name = name
        self.config: Dict[str, Any] = dict(config or {})
        #: ``{"name": ..., **kwargs}`` as given to :func:`create_backbone` (None otherwise)
        self.spec: Optional[Dict[str, Any]] = None
        self._blocks: Optional[List[BlockInfo]] = None
        self._meta_blocks: Optional[List[nn.Module]] = None
        self._flops_cache: Dict[Tuple[int, int], Tuple[List[int], List[Tuple[int, ...]]]] = {}

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _specs(self) -> List[_BlockSpec]:
        """Names, channels and strides of the blocks, in order."""

    @abstractmethod
    def _build_block(self, d: int) -> nn.Module:
        """A fresh block ``d`` (0-based) built on the current default device."""

    # ------------------------------------------------------------------ metadata
    @property
    def depth(self) -> int:
        """The number of sharable blocks D."""
        return len(self._specs())

    @property
    def blocks(self) -> List[BlockInfo]:
        """Per-block metadata (:class:`BlockInfo`), block 1 first."""
        if self._blocks is None:
            metas = self._get_meta_blocks()
            self._blocks = [
                BlockInfo(
                    s.name, s.in_channels, s.out_channels, s.stride, count_params(m), s.spatial
                )
                for s, m in zip(self._specs(), metas)
            ]
        return list(self._blocks)

    @property
    def block_params(self) -> List[int]:
        """Parameters of one copy of each block."""
        return [b.params for b in self.blocks]

    @property
    def out_channels(self) -> int:
        """Channels (or features) of the last block's output."""
        return self._specs()[-1].out_channels

    @property
    def spatial(self) -> bool:
        """Whether the last block outputs a feature map (needed by dense heads)."""
        return self._specs()[-1].spatial

    def block_flops(self, input_hw: Sequence[int]) -> List[int]:
        """FLOPs of one copy of each block for one image of size ``input_hw`` (H, W).

        Measured with :class:`torch.utils.flop_counter.FlopCounterMode` on the meta device
        (see :mod:`branchnas.spaces.flops`), cached per input size.
        """
        return list(self._measure(input_hw)[0])

    def block_shapes(self, input_hw: Sequence[int]) -> List[Tuple[int, ...]]:
        """Output shape of each block, without the batch dimension, for input ``input_hw``."""
        return list(self._measure(input_hw)[1])

    def make_block(self, d: int) -> nn.Module:
        """A fresh, freshly initialised copy of block ``d`` (0-based; block 0 holds the stem).

        The block is built on the current default device, so
        ``with torch.device("meta"): bb.make_block(0)`` costs no memory.

        Raises:
            BranchnasError: for ``d`` outside ``0..D-1``.
        """
        if not 0 <= d < self.depth:
            raise BranchnasError(
                f"backbone {self.name!r} has blocks 0..{self.depth - 1}, not {d}; "
                "use a 0-based block index"
            )
        return self._build_block(d)

    def weights_file(self) -> Optional[str]:
        """The local file this backbone's pretrained weights load from; None for random init.

        Backbones with pretrained weights locate the file in the library caches (downloading
        it when online), so calling this before training refuses a missing file early.

        Raises:
            BranchnasError: when the weights are declared but the file is not on this machine
                and cannot be downloaded, naming the file and where to put it.
        """
        return None

    def with_cuts(self, cuts: Optional[Sequence[int]]) -> "Backbone":
        """This backbone with cut points only after blocks ``cuts`` (0-based, increasing).

        Consecutive blocks between two cuts become one block; the last block is always a
        cut. ``None`` or every block gives ``self``.

        Raises:
            BranchnasError: for indices out of range, repeated or out of order.
        """
        last = self.depth - 1
        if cuts is None:
            return self
        c = [int(x) for x in cuts]
        if any(x < 0 or x > last for x in c) or c != sorted(set(c)):
            raise BranchnasError(
                f"cuts {list(cuts)!r} must be increasing block indices of {self.name!r} in "
                f"0..{last}; list each block once, in order"
            )
        if not c or c[-1] != last:
            c.append(last)
        if c == list(range(last + 1)):
            return self
        return CutBackbone(self, c)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.config.items()))
        return f"{type(self).__name__}({self.name!r}{', ' if args else ''}{args})"

    # ------------------------------------------------------------------ internals
    def _get_meta_blocks(self) -> List[nn.Module]:
        if self._meta_blocks is None:
            self._meta_blocks = [
                on_meta(lambda d=d: self._build_block(d)) for d in range(self.depth)
            ]
        return self._meta_blocks

    def _measure(self, input_hw: Sequence[int]) -> Tuple[List[int], List[Tuple[int, ...]]]:
        hw = check_hw(input_hw)
        if hw not in self._flops_cache:
            flops: List[int] = []
            shapes: List[Tuple[int, ...]] = []
            shape: Tuple[int, ...] = (1, self.in_channels, hw[0], hw[1])
            for d, block in enumerate(self._get_meta_blocks()):
                try:
                    f, out = measure_flops(block, shape)
                except (RuntimeError, AssertionError) as e:  # timm asserts on input sizes
                    raise BranchnasError(
                        f"input size {hw[0]}x{hw[1]} is too small for block {d + 1} of backbone "
                        f"{self.name!r} ({str(e).splitlines()[0]}); use a larger input size"
                    ) from None
                if not isinstance(out, torch.Tensor):
                    raise BranchnasError(
                        f"block {d + 1} of backbone {self.name!r} outputs a "
                        f"{type(out).__name__}, not a tensor; it cannot be cut there"
                    )
                flops.append(f)
                shape = tuple(out.shape)
                shapes.append(shape[1:])
            self._flops_cache[hw] = (flops, shapes)
            logger.debug("measured %s at %s: flops=%s", self.name, hw, flops)
        return self._flops_cache[hw]


class CutBackbone(Backbone):
    """A backbone whose cut points are a subset of another's: merged consecutive blocks.

    Made by :meth:`Backbone.with_cuts`. Block ``d`` is the base blocks after cut ``d-1`` up
    to and including cut ``d``, named after its last base block.

    Args:
        base: the backbone with a cut after every block.
        cuts: 0-based base block indices after which cuts sit (increasing, last included).
    """

    def __init__(self, base: Backbone, cuts: Sequence[int]) -> None:
        super().__init__(base.name, {**base.config, "cuts": list(cuts)})
        self.base = base
        self.cuts: Tuple[int, ...] = tuple(int(c) for c in cuts)
        self.in_channels = base.in_channels
        spans, start = [], 0
        for c in self.cuts:
            spans.append(tuple(range(start, c + 1)))
            start = c + 1
        self.spans: Tuple[Tuple[int, ...], ...] = tuple(spans)

    def _specs(self) -> List[_BlockSpec]:
        base = self.base._specs()
        return [
            _BlockSpec(
                base[s[-1]].name,
                base[s[0]].in_channels,
                base[s[-1]].out_channels,
                base[s[-1]].stride,
                base[s[-1]].spatial,
            )
            for s in self.spans
        ]

    def weights_file(self) -> Optional[str]:
        """The base backbone's weights file (see :meth:`Backbone.weights_file`)."""
        return self.base.weights_file()

    def _build_block(self, d: int) -> nn.Module:
        span = self.spans[d]
        if len(span) == 1:
            return self.base.make_block(span[0])
        return nn.Sequential(*(self.base.make_block(i) for i in span))


# ---------------------------------------------------------------------- VGG family
_VGG16_STAGES: Tuple[Tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)


class _FlattenPool(nn.Module):
    """Adaptive average pool to ``size × size`` then flatten (VGG's input to fc6)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1)


class VGGBackbone(Backbone):
    """A VGG-style backbone: conv stages that end in 2×2 max-pooling, optional fc layers.

    Blocks ``conv1``..``conv5`` (3×3 convolutions, optional batch norm, ReLU, then
    max-pool), and with ``fc_width > 0`` two more blocks ``fc6`` (adaptive average pool to
    7×7, flatten, linear, ReLU, dropout — VGG's fc6, so its size does not depend on the
    input size) and ``fc7`` (linear, ReLU, dropout). The fc blocks output vectors, so such
    a backbone only serves image-level tasks.

    Args:
        stages: conv widths per stage, e.g. VGG-16's ``((64, 64), (128, 128), ...)``.
        batch_norm: conv → batch norm → ReLU (convs then have no bias) instead of
            conv (with bias) → ReLU.
        fc_width: features of fc6 and fc7; 0 for no fc blocks.
        dropout: dropout after fc6 and fc7.
        name: the registry name.
        block_prefix: names the conv blocks (``conv`` → ``conv1``..``conv5``).
        config: the creation kwargs, for display.
    """

    def __init__(
        self,
        stages: Sequence[Sequence[int]],
        batch_norm: bool = True,
        fc_width: int = 0,
        dropout: float = 0.5,
        name: str = "vgg",
        block_prefix: str = "conv",
        config: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(name, config)
        self.stages = tuple(tuple(int(c) for c in s) for s in stages)
        if not self.stages or any(not s or min(s) <= 0 for s in self.stages):
            raise BranchnasError(
                f"VGG stages must be non-empty lists of positive widths, got {stages!r}"
            )
        self.batch_norm = bool(batch_norm)
        self.fc_width = int(fc_width)
        if self.fc_width < 0:
            raise BranchnasError(f"fc_width must be >= 0 (0 = no fc layers), got {fc_width!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise BranchnasError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.block_prefix = block_prefix

    def _specs(self) -> List[_BlockSpec]:
        specs = []
        c_in = self.in_channels
        for i, stage in enumerate(self.stages):
            specs.append(_BlockSpec(f"{self.block_prefix}{i + 1}", c_in, stage[-1], 2 ** (i + 1)))
            c_in = stage[-1]
        if self.fc_width:
            n = len(self.stages)
            specs.append(_BlockSpec(f"fc{n + 1}", c_in, self.fc_width, 0, spatial=False))
            specs.append(_BlockSpec(f"fc{n + 2}", self.fc_width, self.fc_width, 0, spatial=False))
        return specs

    def _build_block(self, d: int) -> nn.Module:
        n = len(self.stages)
        layers: List[nn.Module] = []
        if d < n:
            c_in = self.in_channels if d == 0 else self.stages[d - 1][-1]
            for c in self.stages[d]:
                layers.append(nn.Conv2d(c_in, c, 3, padding=1, bias=not self.batch_norm))
                if self.batch_norm:
                    layers.append(nn.BatchNorm2d(c))
                layers.append(nn.ReLU(inplace=True))
                c_in = c
            layers.append(nn.MaxPool2d(2, 2))
        else:
            if d == n:
                layers += [_FlattenPool(7), nn.Linear(self.stages[-1][-1] * 49, self.fc_width)]
            else:
                layers.append(nn.Linear(self.fc_width, self.fc_width))
            layers.append(nn.ReLU(inplace=True))
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
        block = nn.Sequential(*layers)
        init_conv_bn(block)
        return block


# ---------------------------------------------------------------------- small CNN
class SmallCNNBackbone(Backbone):
    """A small conv net for CPU work: each block is ``convs`` × (3×3 conv, BN, ReLU).

    The first conv of block ``i`` has stride ``strides[i]``. Defaults (widths 16-32-64-128,
    strides 2-2-2-1) give output stride 8 with about 0.29M parameters and about 48 MFLOPs at
    64×64.

    Args:
        widths: output channels per block.
        strides: stride of each block's first conv (same length as ``widths``).
        convs: convolutions per block.
        name: the registry name.
        config: the creation kwargs, for display.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2, 1),
        convs: int = 2,
        name: str = "smallcnn",
        config: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(name, config)
        self.widths = tuple(int(w) for w in widths)
        self.strides = tuple(int(s) for s in strides)
        if not self.widths or min(self.widths) <= 0:
            raise BranchnasError(f"widths must be positive integers, got {list(widths)!r}")
        if len(self.strides) != len(self.widths) or min(self.strides) <= 0:
            raise BranchnasError(
                f"strides must be {len(self.widths)} positive integers (one per width), "
                f"got {list(strides)!r}"
            )
        if int(convs) < 1:
            raise BranchnasError(f"convs must be at least 1, got {convs!r}")
        self.convs = int(convs)

    def _specs(self) -> List[_BlockSpec]:
        specs, c_in, s = [], self.in_channels, 1
        for i, (w, st) in enumerate(zip(self.widths, self.strides)):
            s *= st
            specs.append(_BlockSpec(f"block{i + 1}", c_in, w, s))
            c_in = w
        return specs

    def _build_block(self, d: int) -> nn.Module:
        c_in = self.in_channels if d == 0 else self.widths[d - 1]
        c = self.widths[d]
        layers: List[nn.Module] = []
        for k in range(self.convs):
            stride = self.strides[d] if k == 0 else 1
            layers += [
                nn.Conv2d(c_in if k == 0 else c, c, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
        block = nn.Sequential(*layers)
        init_conv_bn(block)
        return block


# ---------------------------------------------------------------------- registry
def register_backbone(name: str, factory: Optional[Callable[..., Backbone]] = None) -> Any:
    """Register a backbone factory (``factory(**kwargs) -> Backbone``); usable as a decorator.

    Raises:
        BranchnasError: if ``name`` is taken.
    """
    return _BACKBONES.register(name, factory)


def list_backbones() -> List[str]:
    """Names of the registered backbones, sorted."""
    return _BACKBONES.names()


def get_backbone(name: str) -> Callable[..., Backbone]:
    """The factory registered as ``name``, or for ``"timm:<model>"`` the timm factory.

    ``"timm:<model>"`` names any timm model whose ``features_only`` form can be cut into
    blocks (:class:`~branchnas.spaces.timm_backbone.TimmBackbone`); the model itself is
    checked when the backbone is created.

    Raises:
        BranchnasError: for an unknown name, listing the known ones.
    """
    if name.startswith(TIMM_PREFIX):
        model = name[len(TIMM_PREFIX):]
        if not model:
            raise BranchnasError(
                f"backbone {name!r} names no timm model; write 'timm:<model>', e.g. "
                "'timm:convnext_atto'"
            )
        from .timm_backbone import timm_backbone

        return functools.partial(timm_backbone, model)
    try:
        return _BACKBONES.get(name)
    except BranchnasError as e:
        raise BranchnasError(f"{e}, or 'timm:<model>' for a timm model") from None


_INSTANCES: Dict[Tuple[str, Tuple[Tuple[str, Any], ...]], Backbone] = {}


def create_backbone(name: str, **kwargs: Any) -> Backbone:
    """Create (or reuse) the backbone description ``name`` with ``kwargs``.

    Backbones are immutable descriptions, so equal requests share one instance and its
    measured metadata.

    Raises:
        BranchnasError: for an unknown name or option, or a bad option value.
    """
    factory = get_backbone(name)
    check_kwargs(factory, kwargs, f"backbone {name!r}")
    key = (name, freeze_value(kwargs))
    if key not in _INSTANCES:
        backbone = factory(**kwargs)
        backbone.spec = {"name": name, **kwargs}
        _INSTANCES[key] = backbone
    return _INSTANCES[key]


@register_backbone("resnet18")
def resnet18(output_stride: int = 32, weights: Optional[str] = None) -> Backbone:
    """ResNet-18 (timm's, torchvision's architecture and weights), 4 blocks."""
    return ResNetBackbone("resnet18", output_stride, weights)


@register_backbone("resnet34")
def resnet34(output_stride: int = 32, weights: Optional[str] = None) -> Backbone:
    """ResNet-34 (timm's, torchvision's architecture and weights), 4 blocks."""
    return ResNetBackbone("resnet34", output_stride, weights)


@register_backbone("resnet50")
def resnet50(output_stride: int = 32, weights: Optional[str] = None) -> Backbone:
    """ResNet-50 (timm's, torchvision's architecture and weights), 4 blocks; ``output_stride``
    16 or 8 dilates the last stages."""
    return ResNetBackbone("resnet50", output_stride, weights)


@register_backbone("resnet50_dilated")
def resnet50_dilated(weights: Optional[str] = None) -> Backbone:
    """ResNet-50 with dilated layer3/layer4, output stride 8 (the paper's Cityscapes encoder)."""
    return ResNetBackbone("resnet50", 8, weights, name="resnet50_dilated")


@register_backbone("vgg16")
def vgg16(
    batch_norm: bool = True, fc: bool = False, fc_width: int = 4096, dropout: float = 0.5
) -> Backbone:
    """VGG-16: conv1..conv5; with ``fc=True`` also fc6 and fc7 (``fc_width`` features)."""
    return VGGBackbone(
        _VGG16_STAGES,
        batch_norm=batch_norm,
        fc_width=fc_width if fc else 0,
        dropout=dropout,
        name="vgg16",
        config={"batch_norm": batch_norm, "fc": fc, "fc_width": fc_width, "dropout": dropout},
    )


@register_backbone("vgg16_thin")
def vgg16_thin(
    width: int = 32, batch_norm: bool = True, fc: bool = True, dropout: float = 0.0
) -> Backbone:
    """Thin-ω VGG-16 (Lu et al. 2017): conv widths ``min(ω, VGG width)``, fc6/fc7 of ``2ω``.

    D = 7 with the fc layers (conv1..conv5, fc6, fc7): Lu et al. grow branches at every
    layer including the fc layers, and the paper's CelebA search runs over the thin
    network's layers; the per-task output layer is the task head (``linear``).
    """
    if int(width) <= 0:
        raise BranchnasError(f"width (ω) must be a positive integer, got {width!r}")
    stages = tuple(tuple(min(int(width), c) for c in s) for s in _VGG16_STAGES)
    return VGGBackbone(
        stages,
        batch_norm=batch_norm,
        fc_width=2 * int(width) if fc else 0,
        dropout=dropout,
        name="vgg16_thin",
        config={"width": width, "batch_norm": batch_norm, "fc": fc, "dropout": dropout},
    )


@register_backbone("segnet")
def segnet() -> Backbone:
    """MTAN's SegNet encoder: VGG-16's 13 convs as conv-bn-relu in 5 pooled stages."""
    return VGGBackbone(
        _VGG16_STAGES, batch_norm=True, fc_width=0, name="segnet", block_prefix="enc", config={}
    )


@register_backbone("smallcnn")
def smallcnn(
    widths: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2, 1),
    convs: int = 2,
) -> Backbone:
    """The small CNN of the embedded ``scenes`` benchmark (4 blocks, output stride 8)."""
    return SmallCNNBackbone(
        widths,
        strides,
        convs,
        config={"widths": list(widths), "strides": list(strides), "convs": convs},
    )


# The timm adapter subclasses Backbone, so it is imported once Backbone exists (it imports
# timm itself only when a timm backbone is created).
from .timm_backbone import ResNetBackbone, TimmBackbone  # noqa: E402
