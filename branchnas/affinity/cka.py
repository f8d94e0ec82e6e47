"""Linear centred kernel alignment (CKA, Kornblith et al. 2019) as a task affinity.

For two tasks' features X (K x F1) and Y (K x F2) at a location, with columns centred over
the K images, ``CKA = <X Xᵀ, Y Yᵀ>_F / (‖X Xᵀ‖_F ‖Y Yᵀ‖_F)`` (equivalently
``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)``), the HSIC ratio with linear kernels. Each task's
centred Gram matrix is accumulated over feature-column chunks and normalised once; all pairs
then come from one product. Values lie in [0, 1]; the diagonal is 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import BranchnasError
from ._arrays import (
    DeviceLike,
    add_gram,
    as_matrix,
    check_finite_rows,
    column_chunks,
    resolve_device,
    unit_similarity,
)
from .measures import AffinityMeasure, register_measure

__all__ = ["CKAMeasure", "cka_affinity"]


@register_measure("cka")
class CKAMeasure(AffinityMeasure):
    """Linear CKA between the tasks' features at each location.

    Args:
        device: compute device; ``None`` picks CUDA when available.
        chunk_bytes: bound on one float64 column block on the device (default 256 MiB).
    """

    needs = "features"

    def __init__(self, device: DeviceLike = None, chunk_bytes: int | None = None) -> None:
        self.device = device
        self.chunk_bytes = chunk_bytes

    def summarize(self, x: Any, *, task: str, location: str) -> torch.Tensor:
        """The column-centred Gram matrix, flattened and scaled to unit Frobenius norm."""
        what = f"features of task {task!r} at {location}"
        mat = as_matrix(x, what=what)
        dev = resolve_device(self.device)
        k = mat.shape[0]
        gram = torch.zeros((k, k), dtype=torch.float64, device=dev)
        for block in column_chunks(mat, dev, self.chunk_bytes):
            check_finite_rows(block, what)
            centred = block - block.mean(dim=0, keepdim=True)
            add_gram(gram, centred)
        norm = torch.linalg.matrix_norm(gram)
        if float(norm) == 0.0:
            raise BranchnasError(
                f"{what}: every image has the same features, so CKA is undefined; "
                "choose a location where the features vary across images"
            )
        return (gram / norm).reshape(-1)

    def compare(self, summaries: Sequence[torch.Tensor], *, tasks: Sequence[str],
                location: str) -> np.ndarray:
        """CKA of all task pairs as one product of normalised Gram matrices."""
        return unit_similarity(summaries, location=location, what="Gram matrices")


def cka_affinity(features: Mapping[str, Sequence[Any]], *, device: DeviceLike = None,
                 chunk_bytes: int | None = None) -> np.ndarray:
    """Linear-CKA task affinity ``A[d, i, j]``.

    Args:
        features: task name → list of D arrays or tensors ``(K, ...)`` for the same K images.
        device: compute device; ``None`` picks CUDA when available.
        chunk_bytes: bound on one float64 column block on the device.

    Returns:
        float64 numpy array ``(D, N, N)`` in the mapping's task order; symmetric, unit diagonal.

    Raises:
        BranchnasError: for mismatched K, a different D per task, K < 3, non-finite values,
            or features identical across all images.
    """
    return CKAMeasure(device=device, chunk_bytes=chunk_bytes)(features)
