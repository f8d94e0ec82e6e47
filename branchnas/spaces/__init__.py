"""Search spaces: backbones with cut points, task heads, and search-space TOML files.

* :mod:`~branchnas.spaces.backbones` — the backbone registry (``create_backbone``); each
  backbone is D sharable blocks with per-block metadata (:class:`BlockInfo`);
  ``"timm:<model>"`` names any timm model cut at its ``feature_info`` stages
  (:mod:`~branchnas.spaces.timm_backbone`, weights located by :mod:`~branchnas.spaces.weights`).
* :mod:`~branchnas.spaces.heads` — the head registry (``create_head``): fcn, psp, aspp,
  mlp, linear.
* :mod:`~branchnas.spaces.space` — :class:`SearchSpace`, :func:`load_space` for
  ``search_spaces/*.toml``, and :func:`describe_space` / :func:`format_description`.
* :mod:`~branchnas.spaces.flops` — how parameters and FLOPs are measured (meta device).

Example:
    >>> from branchnas.spaces import load_space
    >>> space = load_space("cityscapes-resnet50")
    >>> round(space.tree_params(space.fully_shared_tree()) / 1e6)
    93
"""

from .backbones import (
    Backbone,
    BlockInfo,
    CutBackbone,
    ResNetBackbone,
    SmallCNNBackbone,
    TimmBackbone,
    VGGBackbone,
    create_backbone,
    get_backbone,
    list_backbones,
    register_backbone,
)
from .heads import (
    ASPPHead,
    FCNHead,
    Head,
    LinearHead,
    MLPHead,
    PSPHead,
    create_head,
    get_head,
    head_flops,
    head_params,
    list_heads,
    register_head,
)
from .space import (
    SearchSpace,
    describe_space,
    format_description,
    list_spaces,
    load_space,
    space_dirs,
)

__all__ = [
    "Backbone",
    "BlockInfo",
    "CutBackbone",
    "ResNetBackbone",
    "VGGBackbone",
    "SmallCNNBackbone",
    "TimmBackbone",
    "register_backbone",
    "list_backbones",
    "get_backbone",
    "create_backbone",
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
    "SearchSpace",
    "load_space",
    "list_spaces",
    "space_dirs",
    "describe_space",
    "format_description",
]
