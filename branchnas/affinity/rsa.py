"""Representation similarity analysis (RSA) task affinity, the paper's §3.1.

For each task and location the K images' flattened features give a representation
dissimilarity matrix ``RDM = 1 - Pearson(features_a, features_b)`` (K x K). The affinity of
two tasks at a location is Spearman's rank correlation between the strict upper triangles of
their RDMs. Everything is vectorised: one Gram product per task and location (streamed over
feature columns for large maps), one sort per triangle for the ranks (ties get average
ranks, as ``scipy.stats.rankdata``), and one product of standardised rank vectors for all
pairs. Computation is float64 on the chosen device (CUDA when available), so results match a
float64 scipy computation to ~1e-12 on CPU and within 1e-6 on GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import BranchnasError
from ._arrays import (
    DEFAULT_CHUNK_BYTES,
    DeviceLike,
    add_gram,
    as_matrix,
    check_finite_rows,
    column_chunks,
    resolve_device,
    unit_similarity,
)
from .measures import AffinityMeasure, register_measure

__all__ = ["RSAMeasure", "average_ranks", "correlation_rdm", "rsa_affinity"]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..M of a 1-D tensor, ties given their average rank (``rankdata`` 'average').

    Args:
        values: 1-D tensor.

    Returns:
        float64 tensor of ranks on the same device.
    """
    m = values.numel()
    sorted_vals, order = torch.sort(values)
    starts_group = torch.ones(m, dtype=torch.bool, device=values.device)
    starts_group[1:] = sorted_vals[1:] != sorted_vals[:-1]
    group = torch.cumsum(starts_group.to(torch.int64), 0) - 1
    first = torch.nonzero(starts_group).squeeze(1).to(torch.float64)
    count = torch.bincount(group).to(torch.float64)
    mean_rank = first + (count + 1.0) / 2.0  # (first+1 + first+count) / 2
    ranks = torch.empty(m, dtype=torch.float64, device=values.device)
    ranks[order] = mean_rank[group]
    return ranks


def _centred_gram(x: torch.Tensor, device: torch.device, chunk_bytes: int | None,
                  what: str) -> torch.Tensor:
    """Gram matrix of the row-centred (K, F) matrix, float64 on ``device``; checks values."""
    k, f = x.shape
    limit = DEFAULT_CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
    single = k * f * 8 <= limit
    chunks = [x.to(device=device, dtype=torch.float64)] if single else None

    def blocks():
        return iter(chunks) if chunks is not None else column_chunks(x, device, limit)

    # Pass 1: finiteness, row means, constant rows.
    total = torch.zeros(k, dtype=torch.float64, device=device)
    lo = torch.full((k,), float("inf"), dtype=torch.float64, device=device)
    hi = torch.full((k,), float("-inf"), dtype=torch.float64, device=device)
    for block in blocks():
        check_finite_rows(block, what)
        total += block.sum(dim=1)
        lo = torch.minimum(lo, block.amin(dim=1))
        hi = torch.maximum(hi, block.amax(dim=1))
    constant = torch.nonzero(lo == hi).squeeze(1)
    if constant.numel():
        raise BranchnasError(
            f"{what}: image {int(constant[0])} has constant features, so its Pearson correlation is "
            "undefined; choose a location where its features vary or drop that image"
        )
    mean = (total / f).unsqueeze(1)
    # Pass 2: Gram of centred rows.
    gram = torch.zeros((k, k), dtype=torch.float64, device=device)
    for block in blocks():
        centred = block - mean
        add_gram(gram, centred)
    return gram


def _rdm_from_gram(gram: torch.Tensor, what: str) -> torch.Tensor:
    norms = torch.sqrt(torch.diagonal(gram))
    tiny = torch.nonzero(norms == 0).squeeze(1)
    if tiny.numel():
        raise BranchnasError(
            f"{what}: image {int(tiny[0])} has constant features after centring, so its Pearson correlation "
            "is undefined; choose a location where its features vary or drop that image"
        )
    corr = gram / norms.unsqueeze(0) / norms.unsqueeze(1)
    return 1.0 - corr.clamp_(-1.0, 1.0)


def correlation_rdm(features: Any, *, device: DeviceLike = None,
                    chunk_bytes: int | None = None) -> np.ndarray:
    """The K x K RDM ``1 - Pearson`` between images' flattened features.

    Args:
        features: array or tensor ``(K, ...)``.
        device: compute device; ``None`` picks CUDA when available.
        chunk_bytes: bound on one float64 column block on the device.

    Returns:
        float64 numpy array ``(K, K)``, symmetric, zero diagonal.

    Raises:
        BranchnasError: for non-finite values or an image with constant features.
    """
    x = as_matrix(features, what="features")
    dev = resolve_device(device)
    rdm = _rdm_from_gram(_centred_gram(x, dev, chunk_bytes, "features"), "features")
    rdm.fill_diagonal_(0.0)
    return rdm.cpu().numpy()


@register_measure("rsa")
class RSAMeasure(AffinityMeasure):
    """RSA affinity: Spearman correlation of the tasks' correlation-distance RDMs.

    Args:
        device: compute device; ``None`` picks CUDA when available.
        chunk_bytes: bound on one float64 column block of a feature matrix on the device
            (default 256 MiB); lower it for huge feature maps on a small GPU.
    """

    needs = "features"

    def __init__(self, device: DeviceLike = None, chunk_bytes: int | None = None) -> None:
        self.device = device
        self.chunk_bytes = chunk_bytes

    def summarize(self, x: Any, *, task: str, location: str) -> torch.Tensor:
        """Standardised average ranks of the RDM's strict upper triangle (unit norm, zero mean)."""
        what = f"features of task {task!r} at {location}"
        mat = as_matrix(x, what=what)
        dev = resolve_device(self.device)
        rdm = _rdm_from_gram(_centred_gram(mat, dev, self.chunk_bytes, what), what)
        k = rdm.shape[0]
        upper = torch.ones((k, k), dtype=torch.bool, device=dev).triu_(1)
        ranks = average_ranks(rdm[upper])
        ranks -= ranks.mean()
        norm = torch.linalg.vector_norm(ranks)
        if float(norm) == 0.0:
            raise BranchnasError(
                f"{what}: all image pairs are equally dissimilar, so the Spearman correlation is undefined; "
                "use more or more varied images"
            )
        return ranks / norm

    def compare(self, summaries: Sequence[torch.Tensor], *, tasks: Sequence[str],
                location: str) -> np.ndarray:
        """Spearman correlations of all task pairs as one product of rank vectors."""
        return unit_similarity(summaries, location=location, what="RDMs")


def rsa_affinity(features: Mapping[str, Sequence[Any]], *, device: DeviceLike = None,
                 chunk_bytes: int | None = None) -> np.ndarray:
    """RSA task affinity ``A[d, i, j]`` as in the paper's §3.1.

    Args:
        features: task name → list of D arrays or tensors ``(K, ...)``: the single-task
            network's features at each location for the same K images (same order).
        device: compute device; ``None`` picks CUDA when available.
        chunk_bytes: bound on one float64 column block on the device (default 256 MiB).

    Returns:
        float64 numpy array ``(D, N, N)``, tasks in the mapping's order; symmetric with a
        unit diagonal.

    Raises:
        BranchnasError: for mismatched K, a different D per task, K < 3, an image with
            constant features, non-finite values, or RDMs whose entries are all equal.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> base = rng.normal(size=(30, 16))
        >>> feats = {"a": [base], "b": [base + 0.1 * rng.normal(size=(30, 16))]}
        >>> A = rsa_affinity(feats, device="cpu")
        >>> A.shape, bool(A[0, 0, 1] > 0.9)
        ((1, 2, 2), True)
    """
    return RSAMeasure(device=device, chunk_bytes=chunk_bytes)(features)
