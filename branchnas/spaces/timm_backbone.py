"""Any timm model with ``features_only`` as a backbone: its feature stages are the cut points.

timm describes where a model can be tapped with ``feature_info`` (per stage: the module
that ends it, its channels and its reduction). :class:`TimmBackbone` turns that into the
branchnas contract: block ``d`` is every module the model runs after cut ``d-1`` up to and
including the module of cut ``d`` (the stem goes into block 1), channels and strides come
from ``feature_info``, and parameters and FLOPs are measured on the blocks themselves, so
the accounting equals the built network exactly.

In a search space::

    [backbone]
    name = "timm:convnext_atto"   # any name of timm.list_models(); "model.tag" picks weights
    out_indices = [0, 1, 2, 3]    # optional: which feature levels are cut points (timm's default)
    pretrained = true             # optional: timm's ImageNet weights (see branchnas.spaces.weights)
    model_kwargs = { drop_path_rate = 0.1 }   # optional: passed to timm.create_model

How a model is cut, by the class timm's ``features_only`` returns for it:

* ``FeatureListNet`` / ``FeatureDictNet`` (ResNet, ConvNeXt, RegNet, Swin, MobileViT, ...)
  and ``EfficientNetFeatures`` / ``MobileNetV3Features`` (EfficientNet, MobileNet,
  MNASNet, ...): timm itself runs these as a sequence of the model's top-level modules
  (one ``Sequential`` deep), so cutting that sequence at the feature modules reproduces
  timm's feature maps exactly. Models whose stages work on NHWC maps (Swin) get a permute
  at each block boundary, so every block reads and writes ``(B, C, H, W)``.
* ``FeatureGetterNet`` for a plain :class:`~timm.models.vision_transformer.VisionTransformer`
  (``vit_*``): block 1 is the patch embedding, position embedding and the first blocks; the
  tokens between cuts travel as the ``(B, C, H, W)`` map timm's ``forward_intermediates``
  returns. Only models without prefix (class/register/distillation) tokens can be cut this
  way, since the map cannot carry them; ``model_kwargs = { class_token = false,
  global_pool = "avg" }`` makes such a ViT. ViTs get ``dynamic_img_size = true`` unless
  ``img_size`` or ``dynamic_img_size`` is given, so any input size works (timm resamples the
  position embedding; parameters do not change).
* anything else (``FeatureHookNet`` models such as Xception or NASNet, whose forward is not
  a sequence of modules, and ``forward_intermediates`` models other than plain ViTs: Swin V2
  CR, EVA, BEiT, LeViT, ...): refused with a one-line error saying why.

Example:
    >>> bb = TimmBackbone("resnet18", out_indices=(1, 2, 3, 4))
    >>> [b.name for b in bb.blocks], [b.stride for b in bb.blocks]
    (['layer1', 'layer2', 'layer3', 'layer4'], [4, 8, 16, 32])
"""

from __future__ import annotations

import copy
import difflib
import logging
import pickle
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import BranchnasError
from .backbones import Backbone, _BlockSpec
from ._common import init_conv_bn
from .flops import default_device
from .weights import locate_timm_weights, locate_torchvision_weights

__all__ = ["TimmBackbone", "ResNetBackbone", "timm_backbone"]

logger = logging.getLogger(__name__)

# timm's features_only classes that run the model's top-level modules one after another
_SEQUENTIAL = ("FeatureListNet", "FeatureDictNet", "EfficientNetFeatures", "MobileNetV3Features")


def import_timm() -> Any:
    """The ``timm`` module, or a one-line :class:`BranchnasError` saying how to install it."""
    try:
        import timm
    except ImportError:
        raise BranchnasError(
            "timm backbones (and the resnet* backbones) need the timm package; "
            "it is one of branchnas's requirements: pip install 'timm>=0.9'"
        ) from None
    return timm


def _read_weights(path: str) -> Dict[str, Any]:
    """The state dict of a weights file, read without running code: ``.safetensors`` with
    safetensors, anything else with ``torch.load(weights_only=True)``. (Not left to timm: its
    file loader used the full unpickler before 1.0.2x, and setup.cfg allows timm 0.9.)

    A training checkpoint's weights are taken from the key timm's ``load_state_dict`` takes
    them from (EMA first), and a ``module.`` prefix is stripped as it strips it.
    """
    from timm.models import clean_state_dict

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        checkpoint: Any = load_file(path, device="cpu")
    else:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if checkpoint.get(key) is not None:
                checkpoint = checkpoint[key]
                break
    return clean_state_dict(checkpoint)


def _file_errors() -> Tuple[type, ...]:
    """Exceptions reading a weights file can raise (unpickling refused, truncated, corrupt)."""
    errors: List[type] = [pickle.UnpicklingError, EOFError, OSError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors comes with timm
        pass
    return tuple(errors)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class _Stage(nn.Sequential):
    """Consecutive top-level modules of a timm model, run in order (one block)."""


class _NHWCStage(nn.Module):
    """A block of a model whose stages work on NHWC maps, reading and writing NCHW.

    Args:
        body: the modules of the block.
        first: the block holds the stem, which reads the NCHW image itself.
    """

    def __init__(self, body: nn.Module, first: bool) -> None:
        super().__init__()
        self.body = body
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.first:
            x = x.permute(0, 2, 3, 1)
        return self.body(x).permute(0, 3, 1, 2).contiguous()


class _ViTStage(nn.Module):
    """ViT blocks between two cuts; reads and writes the ``(B, C, H, W)`` patch-token map.

    Args:
        blocks: the transformer blocks of this stage.
        embed: for the first stage, the ViT with its blocks and head removed: its
            ``patch_embed``, ``_pos_embed``, ``patch_drop`` and ``norm_pre`` embed the image
            exactly as :meth:`VisionTransformer.forward_intermediates` does.
    """

    def __init__(self, blocks: nn.Sequential, embed: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.embed = embed
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.embed is not None:
            vit = self.embed
            h, w = vit.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
            t = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        else:
            h, w = x.shape[-2:]
            t = x.flatten(2).transpose(1, 2)
        t = self.blocks(t)
        return t.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()


class TimmBackbone(Backbone):
    """A timm model cut at its ``feature_info`` stages (see the module docstring).

    Args:
        model: a timm model name (``timm.list_models()``), optionally with a weights tag
            (``"resnet50.tv_in1k"``).
        out_indices: feature levels to cut at (indices into the model's ``feature_info``;
            negative ones count from the end); default: timm's ``features_only`` default.
        pretrained: load timm's pretrained weights for ``model`` (from the Hugging Face or
            torch hub cache, downloaded when online; see :mod:`branchnas.spaces.weights`).
        output_stride: 32, 16 or 8 for models that support dilation (ResNets, ...).
        model_kwargs: more keyword arguments for ``timm.create_model``.
        name: the registry name (default ``timm:<model>``).
        weights_file: load weights from this state-dict file instead (set by subclasses,
            e.g. torchvision's ResNet weights); loaded with ``weights_only`` semantics.
        config: the creation kwargs, for display.

    Raises:
        BranchnasError: for an unknown model, a model timm cannot give features for, bad
            options, or a model that cannot be cut into blocks (the reason named).
    """

    def __init__(
        self,
        model: str,
        out_indices: Optional[Union[int, Sequence[int]]] = None,
        pretrained: bool = False,
        output_stride: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        name: Optional[str] = None,
        config: Optional[Dict[str, Any]] = None,
    ) -> None:
        timm = import_timm()
        super().__init__(
            name or f"timm:{model}",
            config
            if config is not None
            else {
                "out_indices": out_indices,
                "pretrained": pretrained,
                "output_stride": output_stride,
                "model_kwargs": model_kwargs,
            },
        )
        arch = str(model).split(".", 1)[0]
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=5)
            hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models()"
            raise BranchnasError(f"unknown timm model {model!r}; {hint}")
        if not isinstance(pretrained, bool):
            raise BranchnasError(f"pretrained must be true or false, got {pretrained!r}")
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise BranchnasError(f"model_kwargs must be a table of options, got {model_kwargs!r}")
        self.model = str(model)
        self.pretrained = pretrained
        self._kwargs: Dict[str, Any] = dict(model_kwargs or {})
        for reserved in ("features_only", "out_indices", "pretrained", "pretrained_cfg_overlay"):
            if reserved in self._kwargs:
                raise BranchnasError(
                    f"model_kwargs may not set {reserved!r}; give it as a backbone option"
                )
        if output_stride is not None:
            if output_stride not in (8, 16, 32):
                raise BranchnasError(
                    f"output_stride {output_stride!r} is not supported; use 32, 16 or 8"
                )
            self._kwargs["output_stride"] = int(output_stride)
        if isinstance(out_indices, (list, tuple)):
            out_indices = tuple(int(i) for i in out_indices)
        probe = self._create(features_only=True, out_indices=out_indices, device="meta")
        self.kind = self._kind(probe)
        info = probe.feature_info
        levels = len(info.info)  # every feature level of the model, not just the chosen ones
        self.out_indices: Tuple[int, ...] = tuple(
            int(i) + levels if int(i) < 0 else int(i) for i in info.out_indices
        )
        self._modules_at: List[str] = list(info.module_name())
        self._channels: List[int] = [int(c) for c in info.channels()]
        self._reductions: List[int] = [int(r) for r in info.reduction()]
        self.in_channels = int(self._kwargs.get("in_chans", 3))
        self._nhwc = False
        self._meta_model: Optional[nn.Module] = None
        self._pretrained_model: Optional[nn.Module] = None
        # the model on meta: checks the cut is possible (and its NHWC layout) up front
        self._meta_stages()
        self._check_outputs()

    # ------------------------------------------------------------------ timm calls
    def _create(self, device: Optional[str] = None, **kwargs: Any) -> nn.Module:
        timm = import_timm()
        all_kwargs = {**self._kwargs, **kwargs}
        try:
            if device is not None:
                with torch.device(device):
                    return timm.create_model(self.model, **all_kwargs)
            return timm.create_model(self.model, **all_kwargs)
        except BranchnasError:
            raise
        except (TypeError, ValueError, AssertionError, RuntimeError, KeyError, IndexError,
                AttributeError) as e:
            opts = ", ".join(f"{k}={v!r}" for k, v in all_kwargs.items()) or "no options"
            raise BranchnasError(
                f"timm cannot build {self.model!r} with {opts} ({_first_line(e)}); "
                "check the backbone's options"
            ) from None

    def _kind(self, probe: nn.Module) -> str:
        cls = type(probe).__name__
        if cls in _SEQUENTIAL:
            return "sequential"
        if cls == "FeatureGetterNet":
            from timm.models.vision_transformer import VisionTransformer

            vit = getattr(probe, "model", None)
            if type(vit) is VisionTransformer:
                if vit.num_prefix_tokens:
                    raise BranchnasError(
                        f"timm model {self.model!r} carries {vit.num_prefix_tokens} class/register "
                        "token(s) through its blocks, which a cut between blocks (a (B, C, H, W) "
                        "map) would drop; set model_kwargs = { class_token = false, "
                        'global_pool = "avg", reg_tokens = 0 } or pick a model without them'
                    )
                if "img_size" not in self._kwargs and "dynamic_img_size" not in self._kwargs:
                    self._kwargs["dynamic_img_size"] = True
                return "vit"
            raise BranchnasError(
                f"timm model {self.model!r} ({type(vit).__name__}) gives features through its own "
                "forward_intermediates(), which cannot be cut into separate blocks; branchnas cuts "
                "plain VisionTransformer (vit_*) models and models whose features_only is a "
                "FeatureListNet (ResNet, ConvNeXt, RegNet, EfficientNet, ...)"
            )
        raise BranchnasError(
            f"timm model {self.model!r} gives features through {cls} (hooks or a custom "
            "forward, not a sequence of the model's modules), so it cannot be cut into blocks; "
            "pick a model whose features_only is a FeatureListNet (ResNet, ConvNeXt, RegNet, "
            "EfficientNet, ...)"
        )

    # ------------------------------------------------------------------ cutting
    def split(self, model: nn.Module) -> List[nn.Module]:
        """Cut a full timm ``model`` (``features_only=False``) into this backbone's blocks.

        The blocks hold ``model``'s own modules (not copies); modules after the last cut
        (pooling, classifier, final norm) are left out.

        Raises:
            BranchnasError: when a cut module is not reachable as a top-level module or
                one ``Sequential``/``ModuleList`` deep.
        """
        if self.kind == "vit":
            return self._split_vit(model)
        targets = list(self._modules_at)
        items: List[Tuple[str, nn.Module]] = []
        for name, child in model.named_children():
            if any(t.startswith(name + ".") for t in targets):
                if not isinstance(child, (nn.Sequential, nn.ModuleList)):
                    raise BranchnasError(
                        f"timm model {self.model!r}: cut module inside {name!r} "
                        f"({type(child).__name__}) cannot be reached in forward order"
                    )
                items += [(f"{name}.{n}", m) for n, m in child.named_children()]
            else:
                items.append((name, child))
        blocks: List[nn.Module] = []
        group: "OrderedDict[str, nn.Module]" = OrderedDict()
        for name, module in items:
            group[name.replace(".", "_")] = module
            if name == targets[len(blocks)]:
                stage: nn.Module = _Stage(group)
                if self._nhwc:
                    stage = _NHWCStage(stage, first=not blocks)
                blocks.append(stage)
                group = OrderedDict()
                if len(blocks) == len(targets):
                    return blocks
        missing = targets[len(blocks)]
        raise BranchnasError(
            f"timm model {self.model!r}: cut module {missing!r} is not one of its top-level "
            "modules (or one Sequential deep), so it cannot be cut there"
        )

    def _split_vit(self, model: nn.Module) -> List[nn.Module]:
        cuts = [int(m.rsplit(".", 1)[1]) for m in self._modules_at]
        blocks = list(model.blocks.children())
        # keep only what forward_intermediates(norm=False) runs before the blocks
        model.blocks = nn.Sequential()
        for head in ("norm", "fc_norm", "head_drop", "head"):
            if hasattr(model, head):
                setattr(model, head, nn.Identity())
        if getattr(model, "attn_pool", None) is not None:
            model.attn_pool = None
        stages: List[nn.Module] = []
        start = 0
        for i, c in enumerate(cuts):
            stages.append(_ViTStage(nn.Sequential(*blocks[start : c + 1]), model if i == 0 else None))
            start = c + 1
        return stages

    def _meta_stages(self) -> List[nn.Module]:
        if self._meta_model is None:
            model = self._create(device="meta")
            self._nhwc = str(getattr(model, "output_fmt", "NCHW")) == "NHWC"
            self._meta_model = nn.ModuleList(self.split(model))
        return list(self._meta_model)

    def _check_outputs(self) -> None:
        """Run the meta blocks once at the model's own input size: each must hand the next
        a ``(B, C, H, W)`` map with the channels ``feature_info`` declares."""
        size = (self._meta_model_cfg_size() or (self.in_channels, 224, 224))[-2:]
        x: Any = torch.empty(1, self.in_channels, *size, device="meta")
        with torch.no_grad():
            for d, (stage, c) in enumerate(zip(self._meta_stages(), self._channels)):
                try:
                    x = stage.eval()(x)
                except (RuntimeError, AssertionError, ValueError, TypeError) as e:
                    # the model's default size does not suit it (checked again at the space's
                    # input size, where the error is reported)
                    logger.debug("skipped output check of %s: %s", self.name, _first_line(e))
                    return
                finally:
                    stage.train()
                if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != c:
                    got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                    raise BranchnasError(
                        f"timm model {self.model!r}: block {d + 1} ({self._modules_at[d]}) "
                        f"outputs {got}, not the (B, {c}, H, W) map its feature_info declares, "
                        "so it cannot be cut there; pick other out_indices or another model"
                    )

    def _meta_model_cfg_size(self) -> Optional[Tuple[int, ...]]:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(self.model)
        size = getattr(cfg, "input_size", None) if cfg is not None else None
        if "img_size" in self._kwargs:
            img = self._kwargs["img_size"]
            hw = tuple(img) if isinstance(img, (list, tuple)) else (int(img), int(img))
            return (self.in_channels,) + tuple(int(v) for v in hw)
        return tuple(size) if size else None

    # ------------------------------------------------------------------ Backbone hooks
    def _specs(self) -> List[_BlockSpec]:
        ins = [self.in_channels] + self._channels[:-1]
        return [
            _BlockSpec(n, i, c, r)
            for n, i, c, r in zip(self._modules_at, ins, self._channels, self._reductions)
        ]

    def weights_file(self) -> Optional[str]:
        """The local file the pretrained weights load from (downloaded if need be); None
        without pretrained weights.

        Raises:
            BranchnasError: when the file is not on this machine and cannot be downloaded,
                naming the file and where to put it.
        """
        if not self.pretrained:
            return None
        return locate_timm_weights(self.model)

    def _build_block(self, d: int) -> nn.Module:
        device = default_device()
        if device.type == "meta":
            return copy.deepcopy(self._meta_stages()[d])
        if self.pretrained or self._has_weights_file():
            if self._pretrained_model is None:
                path = self.weights_file()
                logger.info("loading %s weights from %s", self.name, path)
                self._pretrained_model = nn.ModuleList(self.split(self._load(str(path))))
            return copy.deepcopy(self._pretrained_model[d]).to(device)
        # A fresh model per copy: timm's own initialisation (truncated normals, layer-scale,
        # zero-init of the last norm of each residual block) is model-specific, so each copy
        # is cut from a newly built model rather than re-initialised by hand.
        return self.split(self._create(num_classes=0))[d]

    def _has_weights_file(self) -> bool:
        return False

    def _load(self, path: str) -> nn.Module:
        """The full model with the weights of ``path``: read by :func:`_read_weights` (so a
        file that would run code is refused), then loaded by timm (its key remapping and
        head handling, as for a file it had read itself).
        """
        timm = import_timm()
        try:
            state_dict = _read_weights(path)
            with torch.device("cpu"):
                return timm.create_model(
                    self.model, pretrained=True, pretrained_cfg_overlay={"state_dict": state_dict},
                    **self._kwargs,
                )
        except (RuntimeError, ValueError, KeyError) + _file_errors() as e:
            # RuntimeError: what torch.load(weights_only=True) raises for a pickle that would
            # run code, and load_state_dict for a file of another model
            raise BranchnasError(
                f"cannot load weights file {path} ({_first_line(e)}); it must be this model's "
                "weights holding tensors only (safetensors, or a state dict that "
                "torch.load(weights_only=True) accepts); delete it to download it again"
            ) from None


class ResNetBackbone(TimmBackbone):
    """ResNet-18/34/50 cut after each of its four stages (stem inside block 1), via timm.

    timm's ResNets are torchvision's architecture with the same parameter names, so
    torchvision's ImageNet weights load into them unchanged (timm ships them as
    ``resnet50.tv_in1k``). Blocks: ``layer1`` (conv1, bn1, act1, maxpool, layer1),
    ``layer2``, ``layer3``, ``layer4``; the classifier is not part of the backbone.

    Args:
        arch: ``resnet18``, ``resnet34`` or ``resnet50``.
        output_stride: 32 (plain), 16 or 8 (later strides replaced by dilation, as
            DeepLab/PSPNet do).
        weights: ``None`` for random init, or a torchvision weights name of the
            architecture (``"IMAGENET1K_V1"``, ``"DEFAULT"``, ...), read from torch hub's
            cache (``torch.hub.get_dir()/checkpoints``), downloaded there when online.
        name: the registry name.

    Raises:
        BranchnasError: for an unknown architecture, output stride or weights name.
    """

    ARCHS = ("resnet18", "resnet34", "resnet50")

    def __init__(
        self,
        arch: str,
        output_stride: int = 32,
        weights: Optional[str] = None,
        name: Optional[str] = None,
    ) -> None:
        if arch not in self.ARCHS:
            raise BranchnasError(f"unknown ResNet {arch!r}; choose one of: {', '.join(self.ARCHS)}")
        if output_stride not in (8, 16, 32):
            raise BranchnasError(
                f"output_stride {output_stride!r} is not supported; use 32, 16 or 8"
            )
        self.arch = arch
        self.output_stride = output_stride
        self.weights = weights
        self._weights_enum = self._resolve_weights(weights)
        super().__init__(
            arch,
            out_indices=(1, 2, 3, 4),
            output_stride=None if output_stride == 32 else output_stride,
            # torchvision's init: no zero-init of each residual branch's last norm
            model_kwargs={"zero_init_last": False},
            name=name or arch,
            config={"output_stride": output_stride, "weights": weights},
        )

    def _build_block(self, d: int) -> nn.Module:
        device = default_device()
        if self._weights_enum is not None or device.type == "meta":
            return super()._build_block(d)
        # A ResNet's whole initialisation is He (fan-out) for convolutions and unit/zero
        # batch norm (timm's ResNet.init_weights with zero_init_last=False, as torchvision),
        # so one block can be materialised and initialised alone instead of a whole model.
        block = copy.deepcopy(self._meta_stages()[d]).to_empty(device=device)
        init_conv_bn(block)
        return block

    def _resolve_weights(self, weights: Optional[str]) -> Any:
        if weights is None:
            return None
        import torchvision

        enum = torchvision.models.get_model_weights(self.arch)
        try:
            return enum[str(weights)] if str(weights) != "DEFAULT" else enum.DEFAULT
        except KeyError:
            choices = ", ".join(["DEFAULT"] + [w.name for w in enum])
            raise BranchnasError(
                f"unknown weights {weights!r} for {self.arch}; choose one of: {choices} "
                "or leave weights unset for random init"
            ) from None

    def _has_weights_file(self) -> bool:
        return self._weights_enum is not None

    def weights_file(self) -> Optional[str]:
        """torchvision's weights file in torch hub's cache (downloaded if need be), or None.

        Raises:
            BranchnasError: when it is not on this machine and cannot be downloaded.
        """
        if self._weights_enum is None:
            return None
        return locate_torchvision_weights(self._weights_enum, f"{self.arch} {self.weights}")


def timm_backbone(
    model: str,
    out_indices: Optional[Union[int, Sequence[int]]] = None,
    pretrained: bool = False,
    output_stride: Optional[int] = None,
    model_kwargs: Optional[Dict[str, Any]] = None,
) -> Backbone:
    """The factory behind ``create_backbone("timm:<model>", ...)`` (see :class:`TimmBackbone`)."""
    return TimmBackbone(
        model,
        out_indices=out_indices,
        pretrained=pretrained,
        output_stride=output_stride,
        model_kwargs=model_kwargs,
    )
