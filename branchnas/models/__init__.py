"""Models: :class:`BranchedNet` (a task tree built from a search space) and the baselines.

The baselines registry (single, shared, cross-stitch, MTAN, NDDR) lives in
:mod:`branchnas.models.baselines`.
"""

from .branched import BranchedNet

__all__ = ["BranchedNet"]
