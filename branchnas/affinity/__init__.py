"""Task affinity: how related tasks are at each of the backbone's D cut points.

The paper's measure is RSA (§3.1): per task and location an RDM ``1 - Pearson`` over K
held-out images, and the affinity of two tasks is Spearman's correlation between their RDMs'
upper triangles, giving a tensor ``A`` of shape (D, N, N). Linear CKA and the easy/hard
agreement of Lu et al. 2017 sit behind the same measure registry and file format.

- arrays in, affinity out: :func:`rsa_affinity`, :func:`cka_affinity`, :func:`fa_affinity`,
  or any registered measure via :func:`create_measure` (``list_measures()``);
- networks in: :func:`compute_affinity` (K seeded images, features at the D locations);
- files: :func:`save_affinity`, :func:`load_affinity` → :class:`AffinityFile`;
- plots: :func:`affinity_heatmap_data` / :func:`plot_affinity_heatmaps`,
  :func:`affinity_vs_depth_data` / :func:`plot_affinity_vs_depth`, :func:`write_affinity_plots`.

Example:
    >>> import numpy as np
    >>> from branchnas.affinity import rsa_affinity
    >>> rng = np.random.default_rng(0)
    >>> feats = {t: [rng.normal(size=(50, 4, 3, 3)) for _ in range(2)] for t in ("seg", "depth", "normals")}
    >>> rsa_affinity(feats, device="cpu").shape
    (2, 3, 3)
"""

from .cka import CKAMeasure, cka_affinity
from .extract import DEFAULT_K, compute_affinity, default_location_names, select_images
from .fa import FAMeasure, fa_affinity
from .io import AffinityFile, check_affinity, load_affinity, save_affinity
from .measures import AffinityMeasure, create_measure, get_measure, list_measures, register_measure
from .plots import (
    affinity_heatmap_data,
    affinity_vs_depth_data,
    plot_affinity_heatmaps,
    plot_affinity_vs_depth,
    write_affinity_plots,
)
from .rsa import RSAMeasure, average_ranks, correlation_rdm, rsa_affinity

__all__ = [
    "DEFAULT_K",
    "AffinityFile",
    "AffinityMeasure",
    "CKAMeasure",
    "FAMeasure",
    "RSAMeasure",
    "affinity_heatmap_data",
    "affinity_vs_depth_data",
    "average_ranks",
    "check_affinity",
    "cka_affinity",
    "compute_affinity",
    "correlation_rdm",
    "create_measure",
    "default_location_names",
    "fa_affinity",
    "get_measure",
    "list_measures",
    "load_affinity",
    "plot_affinity_heatmaps",
    "plot_affinity_vs_depth",
    "register_measure",
    "rsa_affinity",
    "save_affinity",
    "select_images",
    "write_affinity_plots",
]
