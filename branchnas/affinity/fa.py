"""The task affinity of Lu et al. 2017 ("Fully-adaptive feature sharing in multi-task
networks with applications in person attribute classification"), which the paper compares
against (its "FA" groupings).

An example is *difficult* for task i when its loss reaches the task's expected loss:
``e_i(n) = 1 if L_i(n) >= E[L_i] else 0`` (the expectation taken over the examples). Two
tasks are affine when they find the same examples easy or hard:
``A(i, j) = P(e_i = 1, e_j = 1) + P(e_i = 0, e_j = 0)``, estimated over the examples both
tasks label. Lu et al. keep a running average during training; here the expectation and the
probabilities are sample means over the K held-out examples. The measure looks at the tasks'
outputs only, so it is the same at every location of the encoder. A NaN loss means "no
label for this example" (as ``Task.loss(..., reduction="none")`` reports it) and is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import BranchnasError
from ._arrays import DeviceLike, as_tensor, resolve_device
from .measures import AffinityMeasure, register_measure

__all__ = ["FAMeasure", "fa_affinity"]


@register_measure("fa")
class FAMeasure(AffinityMeasure):
    """Lu et al.'s easy/hard agreement between tasks, from per-example losses.

    Args:
        device: compute device; ``None`` picks CUDA when available (the work is tiny).
    """

    needs = "losses"

    def __init__(self, device: DeviceLike = None) -> None:
        self.device = device

    def summarize(self, x: Any, *, task: str, location: str) -> torch.Tensor:
        """A (2, K) float64 tensor: row 0 marks difficult examples, row 1 easy ones (0 where unlabelled)."""
        what = f"losses of task {task!r} at {location}"
        loss = as_tensor(x, what=what).to(device=resolve_device(self.device), dtype=torch.float64)
        if loss.ndim != 1:
            raise BranchnasError(f"{what} have shape {tuple(loss.shape)}; give one loss per example, shape (K,)")
        inf = torch.nonzero(torch.isinf(loss)).squeeze(1)
        if inf.numel():
            raise BranchnasError(f"{what}: example {int(inf[0])} has an infinite loss; "
                                 "check the network's outputs or drop that example")
        labelled = ~torch.isnan(loss)
        if not bool(labelled.any()):
            raise BranchnasError(f"{what}: no example has a label (all losses are NaN); "
                                 "use examples labelled for this task")
        expected = loss[labelled].mean()
        hard = labelled & (loss >= expected)
        easy = labelled & (loss < expected)
        return torch.stack([hard, easy]).to(torch.float64)

    def compare(self, summaries: Sequence[torch.Tensor], *, tasks: Sequence[str],
                location: str) -> np.ndarray:
        """Fraction of jointly labelled examples on which two tasks agree (both hard or both easy)."""
        sizes = {int(s.shape[1]) for s in summaries}
        if len(sizes) > 1:
            raise BranchnasError(f"losses at {location} cover different numbers of examples; "
                                 "give every task the same K examples")
        dev = summaries[0].device
        hard = torch.stack([s[0].to(dev) for s in summaries])
        easy = torch.stack([s[1].to(dev) for s in summaries])
        labelled = hard + easy
        both = labelled @ labelled.T
        missing = torch.nonzero(both == 0)
        if missing.numel():
            i, j = (int(v) for v in missing[0])
            raise BranchnasError(
                f"tasks {tasks[i]!r} and {tasks[j]!r} share no labelled example at {location}; "
                "use examples labelled for both tasks"
            )
        agree = (hard @ hard.T + easy @ easy.T) / both
        agree = 0.5 * (agree + agree.T)
        agree.fill_diagonal_(1.0)
        return agree.cpu().numpy()


def fa_affinity(losses: Mapping[str, Any], *, num_locations: int | None = None,
                device: DeviceLike = None) -> np.ndarray:
    """Lu et al.'s task affinity from per-example losses.

    Args:
        losses: task name → per-example losses ``(K,)`` (one set, used for every location)
            or a list of D such arrays (one per location). NaN marks an unlabelled example.
        num_locations: with one set of losses per task, repeat the matrix for this many
            locations; must equal D when lists are given.
        device: compute device; ``None`` picks CUDA when available.

    Returns:
        float64 numpy array ``(D, N, N)`` with values in [0, 1], symmetric, unit diagonal.

    Raises:
        BranchnasError: for mismatched K, K < 3, infinite losses, a task with no labelled
            example, two tasks without a common labelled example, or a D that contradicts
            ``num_locations``.

    Example:
        >>> import numpy as np
        >>> A = fa_affinity({"a": np.array([1., 2, 3, 4]), "b": np.array([1., 2, 4, 3])}, num_locations=2)
        >>> A[:, 0, 1].tolist()
        [1.0, 1.0]
    """
    out = FAMeasure(device=device)(losses)
    if num_locations is not None:
        if num_locations < 1:
            raise BranchnasError(f"num_locations is {num_locations}; give at least 1")
        if out.shape[0] == 1:
            out = np.repeat(out, num_locations, axis=0)
        elif out.shape[0] != num_locations:
            raise BranchnasError(f"losses are given at {out.shape[0]} locations but num_locations is "
                                 f"{num_locations}; give one set of losses per task or one per location")
    return out
