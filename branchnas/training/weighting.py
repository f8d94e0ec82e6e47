"""Loss weighting: how per-task losses become the one scalar that is back-propagated.

A :class:`Weighting` is an ``nn.Module`` (its parameters, if any, join the optimizer):

* ``combine(losses, present=None)`` -> the total loss (a sum of per-task :meth:`terms`),
* ``end_epoch(mean_losses)`` -> lets the weighting adapt between epochs (DWA),
* ``current_weights()`` -> task -> weight currently applied to its loss,
* ``state_dict()`` / ``load_state_dict()`` for checkpoints (history included).

Registered weightings (``list_weightings()``):

``equal``
    ``total = Σ_t L_t``.
``dwa``
    Dynamic Weight Averaging (Liu et al. 2019), exactly as in the MTAN notes:
    ``λ_t(k) = K exp(w_t(k-1)/T) / Σ_i exp(w_i(k-1)/T)`` with
    ``w_t(k-1) = L_t(k-1) / L_t(k-2)``, ``K`` the number of tasks, ``T`` the temperature
    (2), ``L_t(k)`` task t's average training loss over epoch k (1-based). The weights sum
    to ``K``; epochs 1 and 2 use ``λ_t = 1``. A ratio whose denominator is zero or was
    not observed counts as 1.
``uncertainty``
    Homoscedastic uncertainty weighting (Kendall et al. 2018) with a learnable
    ``s_t = log σ_t²`` per task, initialised to 0: ``total = Σ_t exp(-s_t) L_t + s_t``.
    We use this one form for every task type, as Liu et al.'s MTAN code does, instead of
    the paper's ``1/(2σ²) L + log σ`` (regression) vs ``1/σ² L + log σ``
    (classification): for regression it is exactly twice the paper's objective (same
    minimiser, same ``σ``), and it needs no knowledge of which tasks are regressions.

A task whose batch has no labelled sample (``present[t] == 0``) is left out of the
total, so that uncertainty's ``+ s_t`` does not drive ``s_t`` down on batches that say
nothing about task t. (Equal and DWA are unaffected: such a task's loss is an exact zero.)

Example:
    >>> import torch
    >>> w = create_weighting("dwa", ["seg", "depth"])
    >>> w.end_epoch({"seg": 2.0, "depth": 1.0}); w.end_epoch({"seg": 1.0, "depth": 1.0})
    >>> {t: round(v, 4) for t, v in w.current_weights().items()}
    {'seg': 0.8756, 'depth': 1.1244}
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Type, Union

import torch
from torch import Tensor, nn

from .._registry import Registry
from ..errors import BranchnasError

__all__ = [
    "Weighting",
    "EqualWeighting",
    "DWAWeighting",
    "UncertaintyWeighting",
    "ScaledWeighting",
    "register_weighting",
    "list_weightings",
    "get_weighting",
    "create_weighting",
]

_WEIGHTINGS: "Registry[Type[Weighting]]" = Registry("loss weighting")

Counts = Mapping[str, Union[int, bool, Tensor]]


def register_weighting(name: str) -> Callable[[Type["Weighting"]], Type["Weighting"]]:
    """Class decorator registering a :class:`Weighting` subclass under ``name``."""
    return _WEIGHTINGS.register(name)


def list_weightings() -> List[str]:
    """Names of the registered weightings, sorted."""
    return _WEIGHTINGS.names()


def get_weighting(name: str) -> Type["Weighting"]:
    """The weighting class registered as ``name``.

    Raises:
        BranchnasError: for an unknown name, listing the known ones.
    """
    return _WEIGHTINGS.get(name)


def create_weighting(name: str, tasks: Sequence[str], **kwargs: Any) -> "Weighting":
    """A fresh weighting over ``tasks``.

    Args:
        name: a registered weighting (``list_weightings()``).
        tasks: task names, in a fixed order.
        **kwargs: the weighting's own options (``temperature`` for ``dwa``).

    Raises:
        BranchnasError: for an unknown name or option.
    """
    cls = get_weighting(name)
    try:
        return cls(tasks, **kwargs)
    except TypeError as exc:
        raise BranchnasError(f"loss weighting {name!r}: {exc}; check its options") from None


class Weighting(nn.Module):
    """Base class: per-task terms, summed. Subclasses override :meth:`terms` (and the
    epoch hooks where they adapt).

    Args:
        tasks: the task names; :meth:`combine` accepts any subset of them.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        names = tuple(tasks)
        if not names or len(set(names)) != len(names):
            raise BranchnasError(
                f"a loss weighting needs distinct task names, got {list(names)!r}"
            )
        self.tasks = names
        self._index = {t: i for i, t in enumerate(names)}

    def terms(self, losses: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """Task -> its contribution to the total loss (weight × loss, plus any regulariser)."""
        weights = self.current_weights()
        return {t: weights[t] * loss for t, loss in losses.items()}

    def combine(self, losses: Mapping[str, Tensor], present: Optional[Counts] = None) -> Tensor:
        """The total loss to back-propagate.

        Args:
            losses: task -> scalar loss (a subset of :attr:`tasks` is fine).
            present: optional task -> number (or bool) of labelled samples in the batch;
                tasks with zero are left out of the total.

        Returns:
            A scalar tensor (attached to the losses' graphs even when every task is left out).

        Raises:
            BranchnasError: for a task this weighting does not know.
        """
        self._check_known(losses)
        if not losses:
            raise BranchnasError("combine() got no losses; give at least one task's loss")
        terms = self.terms(losses)
        total: Optional[Tensor] = None
        for task, term in terms.items():
            if present is not None and not _positive(present.get(task, True)):
                term = term * 0.0
            total = term if total is None else total + term
        assert total is not None
        return total

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Called once per epoch with each task's average training loss (unweighted)."""

    def current_weights(self) -> Dict[str, float]:
        """Task -> the weight its loss currently gets."""
        return {t: 1.0 for t in self.tasks}

    def task_parameters(self, task: str) -> List[nn.Parameter]:
        """Parameters that belong to one task (updated with it under asynchronous SGD)."""
        return []

    def _check_known(self, losses: Mapping[str, Any]) -> None:
        unknown = [t for t in losses if t not in self._index]
        if unknown:
            raise BranchnasError(
                f"loss weighting got unknown task(s) {', '.join(unknown)}; "
                f"it was built for: {', '.join(self.tasks)}"
            )

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}"


def _positive(value: Union[int, bool, Tensor]) -> bool:
    if isinstance(value, Tensor):
        return bool(value.detach().reshape(-1).to(torch.float64).sum().item() > 0)
    return bool(value)


@register_weighting("equal")
class EqualWeighting(Weighting):
    """Every task's loss counts once: ``total = Σ_t L_t``."""

    def terms(self, losses: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        return dict(losses)


@register_weighting("dwa")
class DWAWeighting(Weighting):
    """Dynamic Weight Averaging (Liu et al. 2019), see the module docstring.

    Args:
        tasks: task names.
        temperature: ``T``; larger values give weights closer to 1.
    """

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if not temperature > 0:
            raise BranchnasError(f"DWA temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self._history: List[Dict[str, float]] = []  # the last two epochs' mean losses
        self._weights = {t: 1.0 for t in self.tasks}

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        self._check_known(mean_losses)
        self._history = (self._history + [{t: float(v) for t, v in mean_losses.items()}])[-2:]
        self._weights = self._compute()

    def _compute(self) -> Dict[str, float]:
        if len(self._history) < 2:
            return {t: 1.0 for t in self.tasks}
        before, last = self._history
        ratios = []
        for t in self.tasks:
            num, den = last.get(t, math.nan), before.get(t, math.nan)
            ok = math.isfinite(num) and math.isfinite(den) and den != 0
            ratios.append(num / den if ok else 1.0)
        exps = [math.exp(r / self.temperature) for r in ratios]
        norm = sum(exps)
        k = len(self.tasks)
        return {t: k * e / norm for t, e in zip(self.tasks, exps)}

    def current_weights(self) -> Dict[str, float]:
        return dict(self._weights)

    def get_extra_state(self) -> Any:
        return {"history": [dict(h) for h in self._history], "temperature": self.temperature}

    def set_extra_state(self, state: Any) -> None:
        self._history = [dict(h) for h in state["history"]]
        self.temperature = float(state["temperature"])
        self._weights = self._compute()

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}, temperature={self.temperature}"


@register_weighting("uncertainty")
class UncertaintyWeighting(Weighting):
    """Kendall et al.'s uncertainty weighting: ``Σ_t exp(-s_t) L_t + s_t``, ``s_t`` learned.

    See the module docstring for the choice of the one form for all task types.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.log_vars = nn.ParameterList(
            [nn.Parameter(torch.zeros(())) for _ in self.tasks]
        )

    def terms(self, losses: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        out = {}
        for task, loss in losses.items():
            s = self.log_vars[self._index[task]]
            out[task] = torch.exp(-s) * loss + s
        return out

    def current_weights(self) -> Dict[str, float]:
        return {t: math.exp(-float(s.detach())) for t, s in zip(self.tasks, self.log_vars)}

    def task_parameters(self, task: str) -> List[nn.Parameter]:
        return [self.log_vars[self._index[task]]]


class ScaledWeighting:
    """A view of a weighting whose :meth:`combine` multiplies each task's term by a scale.

    ``combine(losses, present) = factor * Σ_t scales[t] * term_t(loss_weights[t] * L_t)``
    (tasks with no labelled sample left out, as in :meth:`Weighting.combine`). The trainer
    hands it to backward code instead of the weighting itself, for asynchronous updates
    (``scales[t]`` = labelled samples of task t in the batch, so gradients become sums over
    samples), for fp16 loss scaling (``factor``) and for fixed per-task loss weights
    (``loss_weights``, ``TrainConfig.task_weights``: applied to the loss before the weighting
    sees it, so with ``equal`` the total is the paper's ``Σ_t w_t L_t``). Every other
    attribute is the wrapped weighting's.

    Args:
        weighting: the weighting to wrap.
        scales: task -> multiplier of its term (missing tasks: 1).
        factor: a multiplier for the whole total.
        loss_weights: task -> fixed multiplier of its loss (missing tasks: 1).
    """

    def __init__(
        self,
        weighting: Weighting,
        scales: Optional[Mapping[str, float]] = None,
        factor: float = 1.0,
        loss_weights: Optional[Mapping[str, float]] = None,
    ) -> None:
        self.weighting = weighting
        self.scales = dict(scales or {})
        self.factor = float(factor)
        self.loss_weights = dict(loss_weights or {})

    def combine(self, losses: Mapping[str, Tensor], present: Optional[Counts] = None) -> Tensor:
        """The scaled total loss (see the class docstring)."""
        self.weighting._check_known(losses)
        if not losses:
            raise BranchnasError("combine() got no losses; give at least one task's loss")
        if self.loss_weights:
            losses = {t: loss * self.loss_weights[t] if t in self.loss_weights else loss
                      for t, loss in losses.items()}
        total: Optional[Tensor] = None
        for task, term in self.weighting.terms(losses).items():
            scale = self.factor * float(self.scales.get(task, 1.0))
            if present is not None and not _positive(present.get(task, True)):
                scale = 0.0
            term = term * scale
            total = term if total is None else total + term
        assert total is not None
        return total

    def __getattr__(self, name: str) -> Any:
        if name == "weighting":
            raise AttributeError(name)
        return getattr(self.weighting, name)
