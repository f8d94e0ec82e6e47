"""Array plumbing shared by the affinity measures (private).

Inputs arrive as numpy arrays or torch tensors of shape ``(K, ...)``; the measures view
them as ``(K, F)`` matrices and stream them to the compute device in float64 column chunks,
so a feature map with millions of values per image never has to be copied whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .._device import DeviceLike, resolve_device  # noqa: F401  (the one device resolver, re-exported)
from ..errors import BranchnasError

__all__ = [
    "unit_similarity",
    "DEFAULT_CHUNK_BYTES",
    "add_gram",
    "as_matrix",
    "as_tensor",
    "column_chunks",
    "check_finite_rows",
    "resolve_device",
]

#: Upper bound on the bytes of one float64 chunk of a (K, F) feature matrix on the device.
DEFAULT_CHUNK_BYTES = 256 * 2**20



def as_tensor(x: Any, *, what: str) -> torch.Tensor:
    """``x`` (numpy array or tensor) as a detached tensor without copying where possible.

    Raises:
        BranchnasError: if ``x`` is neither an array nor a tensor, or is not numeric.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise BranchnasError(f"{what} has dtype {x.dtype}; give numeric arrays")
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise BranchnasError(
            f"{what} is a {type(x).__name__}; give a numpy array or a torch tensor"
        )
    if t.is_complex():
        raise BranchnasError(f"{what} is complex; give real-valued arrays")
    return t


def as_matrix(x: Any, *, what: str) -> torch.Tensor:
    """``x`` of shape ``(K, ...)`` viewed as ``(K, F)`` (a view when ``x`` is contiguous).

    Raises:
        BranchnasError: if ``x`` has fewer than 2 dimensions or no features per image.
    """
    t = as_tensor(x, what=what)
    if t.ndim < 2:
        raise BranchnasError(
            f"{what} has shape {tuple(t.shape)}; give shape (K, ...) with features per image"
        )
    if t[0].numel() == 0 and t.shape[0] > 0:
        raise BranchnasError(f"{what} has shape {tuple(t.shape)} with no features per image; give non-empty features")
    return t.reshape(t.shape[0], -1)


def column_chunks(
    x: torch.Tensor, device: torch.device, chunk_bytes: int | None = None
) -> Iterator[torch.Tensor]:
    """Yield float64 column blocks of the (K, F) matrix ``x`` on ``device``.

    Each block holds at most ``chunk_bytes`` bytes (at least one column).
    """
    limit = DEFAULT_CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
    k, f = x.shape
    cols = max(1, limit // (8 * max(k, 1)))
    for start in range(0, f, cols):
        yield x[:, start : start + cols].to(device=device, dtype=torch.float64)


def check_finite_rows(block: torch.Tensor, what: str) -> None:
    """Raise, naming the first image (row) of ``block`` holding a NaN or an infinity.

    Raises:
        BranchnasError: when some row is not finite.
    """
    bad = ~torch.isfinite(block)
    if block.ndim > 1:
        bad = bad.any(dim=1)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise BranchnasError(f"{what}: image {row} has non-finite values (NaN or inf); "
                             "check the network's outputs or drop that image")


def add_gram(gram: torch.Tensor, block: torch.Tensor) -> None:
    """``gram += block @ block.T`` in place (float64, same device).

    On the CPU the product goes through numpy, whose ``a @ a.T`` calls BLAS ``syrk`` (half
    the work of a general product); on a GPU it is one ``addmm_``.
    """
    if block.device.type == "cpu":
        b = block.contiguous().numpy()
        gram += torch.from_numpy(b @ b.T)
    else:
        gram.addmm_(block, block.T)


def unit_similarity(summaries: Any, *, location: str, what: str) -> np.ndarray:
    """All pairwise inner products of unit-norm summary vectors, as a clean similarity matrix.

    RSA (standardised rank vectors) and CKA (normalised centred Gram matrices) both reduce
    their pairwise comparison to this: one product, symmetrised and clamped against rounding,
    with an exact unit diagonal.

    Raises:
        BranchnasError: when the summaries come from different numbers of images.
    """
    if len({int(s.numel()) for s in summaries}) > 1:
        raise BranchnasError(f"{what} at {location} come from different numbers of images; "
                             "give every task the same K images")
    stacked = torch.stack([s.to(summaries[0].device) for s in summaries])
    sim = stacked @ stacked.T
    sim = 0.5 * (sim + sim.T)
    sim.clamp_(-1.0, 1.0).fill_diagonal_(1.0)
    return sim.cpu().numpy()
