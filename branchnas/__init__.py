"""branchnas: design branched multi-task networks.

Following "Branched Multi-Task Networks: Deciding What Layers To Share" (Vandenhende et al.):
train one network per task, measure task affinity with RSA at D cut points of the backbone,
search the task tree of least clustering cost within a parameter budget, build and train it,
and compare it with single-task, fully shared and soft-sharing baselines on params vs Δm.

The heavy submodules (torch models, training) are imported on first use, so
``import branchnas`` and ``branchnas --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> submodule that defines it (resolved lazily by __getattr__).
_LAZY = {
    "delta_m": "branchnas.tasks",
    "Tree": "branchnas.tree",
    "BranchnasError": "branchnas.errors",
    "load_space": "branchnas.spaces",
    "BranchedNet": "branchnas.models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'branchnas' has no attribute {name!r}")
