"""The affinity-measure registry and the interface every measure follows.

A measure turns per-task, per-location inputs into an affinity tensor ``(D, N, N)``
(symmetric, unit diagonal, tasks in the order of the mapping). It declares which input it
needs: ``"features"`` (arrays ``(K, ...)`` of a network's activations at a location: RSA,
CKA) or ``"losses"`` (per-example losses ``(K,)``: Lu et al.'s measure).

Every measure works in two steps so that callers can stream: :meth:`AffinityMeasure.summarize`
reduces one task's input at one location to a small summary (for RSA the ranked upper
triangle of the RDM, for CKA the normalised centred Gram matrix), after which the raw
features can be dropped; :meth:`AffinityMeasure.compare` turns the N tasks' summaries at
one location into the N x N matrix. Calling the measure does both.

Example:
    >>> import numpy as np
    >>> from branchnas.affinity import create_measure
    >>> rng = np.random.default_rng(0)
    >>> feats = {t: [rng.normal(size=(20, 8))] for t in ("seg", "depth")}
    >>> create_measure("rsa", device="cpu")(feats).shape
    (1, 2, 2)
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from .._registry import Registry
from ..errors import BranchnasError
from ._arrays import as_tensor

__all__ = [
    "MIN_IMAGES",
    "AffinityMeasure",
    "create_measure",
    "get_measure",
    "list_measures",
    "register_measure",
]

#: Fewest images (examples) a measure accepts: RSA needs 3 to rank at least 3 pairs.
MIN_IMAGES = 3

INPUT_KINDS = ("features", "losses")

_MEASURES: Registry[type[AffinityMeasure]] = Registry("affinity measure")


class AffinityMeasure(abc.ABC):
    """Base class of the registered measures; constructors take options only.

    Subclasses set ``needs`` (one of ``"features"``, ``"losses"``) and implement
    :meth:`summarize` and :meth:`compare`. ``name`` is set by :func:`register_measure`.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[str] = "features"

    @abc.abstractmethod
    def summarize(self, x: Any, *, task: str, location: str) -> torch.Tensor:
        """Reduce one task's input ``x`` (first dimension K) at one location to a summary.

        Args:
            x: features ``(K, ...)`` or losses ``(K,)``, numpy or torch.
            task: the task's name, for error messages.
            location: the location's name, for error messages.

        Raises:
            BranchnasError: for input the measure is undefined on, naming task and location.
        """

    @abc.abstractmethod
    def compare(self, summaries: Sequence[torch.Tensor], *, tasks: Sequence[str],
                location: str) -> np.ndarray:
        """The ``(N, N)`` float64 affinity at one location from the N tasks' summaries."""

    def __call__(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Affinity tensor ``(D, N, N)`` of the tasks in ``inputs`` (in mapping order).

        Args:
            inputs: task name → list of D per-location inputs, each with the same first
                dimension K (for a ``"losses"`` measure a single ``(K,)`` array means D = 1).

        Raises:
            BranchnasError: for an empty mapping, a value that is not a list, a different D
                per task, mismatched K, K < 3, or input the measure is undefined on.
        """
        tasks, per_task = self.validate_inputs(inputs)
        depth = len(per_task[0])
        out = np.empty((depth, len(tasks), len(tasks)), dtype=np.float64)
        for d in range(depth):
            location = f"location {d + 1}"
            summaries = [self.summarize(xs[d], task=t, location=location) for t, xs in zip(tasks, per_task)]
            out[d] = self.compare(summaries, tasks=tasks, location=location)
        return out

    def validate_inputs(self, inputs: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
        """Check the mapping's structure and shapes; return (task names, per-task lists).

        Raises:
            BranchnasError: as described in :meth:`__call__`.
        """
        if not isinstance(inputs, Mapping) or len(inputs) == 0:
            raise BranchnasError(
                f"{self.name} affinity needs a non-empty mapping task name -> list of D {self.needs} arrays"
            )
        tasks = [str(t) for t in inputs]
        per_task: list[list[Any]] = []
        for task, value in inputs.items():
            if self.needs == "losses" and isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1:
                value = [value]
            if not isinstance(value, (list, tuple)):
                raise BranchnasError(
                    f"{self.needs} of task {task!r} is a {type(value).__name__}; give a list of D arrays, "
                    "one per location"
                )
            if len(value) == 0:
                raise BranchnasError(f"{self.needs} of task {task!r} is an empty list; give one array per location")
            per_task.append(list(value))
        depths = {len(v) for v in per_task}
        if len(depths) > 1:
            counts = ", ".join(f"{t}: {len(v)}" for t, v in zip(tasks, per_task))
            raise BranchnasError(f"tasks have {self.needs} at different numbers of locations ({counts}); "
                                 "give every task the same D locations")
        ref = None
        for task, values in zip(tasks, per_task):
            for d, x in enumerate(values):
                what = f"{self.needs} of task {task!r} at location {d + 1}"
                t = as_tensor(x, what=what)
                if self.needs == "losses" and t.ndim != 1:
                    raise BranchnasError(f"{what} have shape {tuple(t.shape)}; give one loss per example, shape (K,)")
                if self.needs == "features" and t.ndim < 2:
                    raise BranchnasError(
                        f"{what} have shape {tuple(t.shape)}; give shape (K, ...) with features per image"
                    )
                k = int(t.shape[0])
                if ref is None:
                    ref = (k, task, d)
                elif k != ref[0]:
                    raise BranchnasError(
                        f"{what} cover K={k} images but task {ref[1]!r} at location {ref[2] + 1} covers "
                        f"K={ref[0]}; give every task and location the same K images"
                    )
        assert ref is not None
        if ref[0] < MIN_IMAGES:
            raise BranchnasError(
                f"{self.name} affinity needs at least {MIN_IMAGES} images, got K={ref[0]}; use more held-out images"
            )
        return tasks, per_task


def register_measure(name: str) -> Callable[[type[AffinityMeasure]], type[AffinityMeasure]]:
    """Class decorator registering an :class:`AffinityMeasure` subclass as ``name``.

    Raises:
        BranchnasError: for a duplicate name, a class that is not an AffinityMeasure, or an
            unknown ``needs``.
    """

    def add(cls: type[AffinityMeasure]) -> type[AffinityMeasure]:
        if not (isinstance(cls, type) and issubclass(cls, AffinityMeasure)):
            raise BranchnasError(f"affinity measure {name!r} must subclass AffinityMeasure")
        if cls.needs not in INPUT_KINDS:
            raise BranchnasError(
                f"affinity measure {name!r} needs {cls.needs!r}; choose one of: {', '.join(INPUT_KINDS)}"
            )
        _MEASURES.register(name, cls)
        cls.name = name
        return cls

    return add


def list_measures() -> list[str]:
    """Names of the registered measures, sorted."""
    return _MEASURES.names()


def get_measure(name: str) -> type[AffinityMeasure]:
    """The measure class registered as ``name``.

    Raises:
        BranchnasError: for an unknown name, listing the known ones.
    """
    return _MEASURES.get(name)


def create_measure(name: str, **options: Any) -> AffinityMeasure:
    """An instance of measure ``name`` configured with ``options`` (e.g. ``device``).

    Raises:
        BranchnasError: for an unknown name or an option the measure does not take.
    """
    return _MEASURES.create(name, **options)
