"""The convergence rule: early stopping on a held-out slice of the training split.

Every network the pipeline trains (single-task networks, trees, every baseline) runs under
the same rule, so no model simply trains longer than another:

* a fixed slice of the **training** split (``TrainConfig.holdout_fraction`` of its items,
  drawn by :func:`holdout_split` from the run's seed) is held out and not trained on; the
  validation split, which the results report, is never looked at for stopping;
* after every epoch the held-out slice is evaluated and compared with the best epoch so far
  (:meth:`Convergence.observe`, ``TrainConfig.monitor``): ``"metric"`` compares each task's
  primary measure (``Task.primary``; a task without one counts all its metrics) as Δm in
  percent against the best epoch's, so for a single-task network an epoch is better exactly
  when its primary measure is; ``"loss"`` compares the held-out loss (fixed task weights
  applied);
* an epoch whose gain over the best exceeds ``min_delta`` becomes the best (its weights are
  checkpointed, see :mod:`.trainer`); after ``patience`` epochs without one, training
  stops; ``epochs`` caps it in any case;
* the best epoch's weights are restored at the end, and the result reports them.

Comparing with the incumbent best (not with a fixed reference such as the first epoch) keeps
Δm's relative terms on the scale of a converging network: against the first epoch, a task
starting near zero (mIoU 2 %) would swamp every other task's change.

The rule's state is plain data (:meth:`Convergence.state_dict`), saved in every checkpoint,
so a resumed run stops where an uninterrupted one does.

Example:
    >>> rule = Convergence(patience=2, monitor="loss")
    >>> [rule.observe(e, [], {}, {}, total=v)[0] for e, v in enumerate([3.0, 2.0, 2.5, 2.1], 1)]
    [True, True, False, False]
    >>> rule.stopped, rule.best_epoch
    (True, 2)
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import BranchnasError
from .config import MONITORS

__all__ = ["MONITORS", "STOP_REASONS", "Convergence", "holdout_split", "holdout_size",
           "primary_metrics", "metric_score", "weighted_loss"]

STOP_REASONS: Tuple[str, ...] = ("plateau", "max_epochs")
"""Why a run ended: the held-out score stopped improving, or the epoch cap was reached."""

# Salt so the held-out draw is not the same stream as the epochs' data order.
_HOLDOUT_SALT = 0x5EED_0D0E


def holdout_size(n: int, fraction: float) -> int:
    """How many of ``n`` training items :func:`holdout_split` holds out (at least one).

    Raises:
        BranchnasError: when no item would be left to train on.
    """
    k = max(1, int(round(fraction * n)))
    if k >= n:
        raise BranchnasError(
            f"holding out {k} of {n} training items leaves none to train on; "
            "lower holdout_fraction or use a larger training set (or patience = none)"
        )
    return k


def holdout_split(n: int, fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Indices ``(train, held_out)`` of ``n`` training items, each list sorted.

    The draw depends on ``(n, fraction, seed)`` only, so every model of one seed (single-task
    networks, trees, baselines) holds out the same items.

    Args:
        n: items in the training split.
        fraction: share held out (``TrainConfig.holdout_fraction``).
        seed: the run's seed.

    Raises:
        BranchnasError: when no item would be left to train on.
    """
    k = holdout_size(n, fraction)
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + _HOLDOUT_SALT) % 2**63)
    perm = torch.randperm(n, generator=g).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


def primary_metrics(task: Any) -> Dict[str, bool]:
    """The metrics the rule watches for ``task``: ``{name: higher_is_better}``.

    The task's primary measure (``task.primary``) when it declares one, else all its
    metrics (``task.metrics``).
    """
    metrics: Mapping[str, bool] = task.metrics
    primary = getattr(task, "primary", None)
    if isinstance(primary, str) and primary in metrics:
        return {primary: bool(metrics[primary])}
    return {k: bool(v) for k, v in metrics.items()}


def metric_score(metrics: Mapping[str, Mapping[str, float]],
                 reference: Mapping[str, Mapping[str, float]],
                 watched: Mapping[str, Mapping[str, bool]]) -> float:
    """Δm (percent) of ``metrics`` against ``reference`` (the best epoch's) over the ``watched``
    metrics.

    ``100 / T · Σ_t mean_m ±(M_t,m − R_t,m) / |R_t,m|`` (+ where higher is better); a
    reference value of 0 divides by 1 instead, so the score stays defined (and is positive
    exactly when the metric improved).
    """
    terms = []
    for task, names in watched.items():
        parts = []
        for name, higher in names.items():
            value, ref = float(metrics[task][name]), float(reference[task][name])
            denom = abs(ref) if ref != 0 else 1.0
            parts.append((value - ref) / denom * (1.0 if higher else -1.0))
        terms.append(sum(parts) / len(parts))
    return 100.0 * sum(terms) / len(terms)


class Convergence:
    """Early-stopping state of one run (plain data; see the module docstring).

    Args:
        patience: epochs without an improvement before stopping (>= 1).
        min_delta: the smallest gain over the best epoch that counts as an improvement:
            Δm percentage points (``monitor="metric"``) or loss units (``"loss"``).
        monitor: ``"metric"`` or ``"loss"``.

    Attributes:
        best_epoch: the 1-based epoch of the best held-out evaluation so far (0: none yet).
        best_metrics: that epoch's watched metrics (``"metric"``).
        best_loss: that epoch's weighted held-out loss (``"loss"``).
        bad_epochs: epochs since the best one.
        first_metrics: the first held-out evaluation's watched metrics, the reference of
            :meth:`score` (the learning curve; the rule itself compares with the best).
    """

    def __init__(self, patience: int, min_delta: float = 0.0, monitor: str = "metric") -> None:
        if patience < 1:
            raise BranchnasError(f"patience must be >= 1, got {patience!r}")
        if monitor not in MONITORS:
            raise BranchnasError(f"monitor {monitor!r} is not supported; choose one of: "
                                 f"{', '.join(MONITORS)}")
        self.patience, self.min_delta, self.monitor = int(patience), float(min_delta), monitor
        self.best_epoch = 0
        self.best_metrics: Optional[Dict[str, Dict[str, float]]] = None
        self.best_loss: Optional[float] = None
        self.bad_epochs = 0
        self.first_metrics: Optional[Dict[str, Dict[str, float]]] = None

    def score(self, tasks: Sequence[Any], metrics: Mapping[str, Mapping[str, float]],
              losses: Mapping[str, Optional[float]],
              task_weights: Optional[Mapping[str, float]] = None) -> float:
        """One epoch's point of the held-out learning curve (higher is better; recorded as
        ``holdout_score``): ``"metric"``, Δm (percent) of the watched metrics against the first
        held-out evaluation (which this call records when it is the first); ``"loss"``, the
        negated weighted held-out loss. Only for showing: :meth:`observe` decides."""
        if self.monitor == "loss":
            return -weighted_loss(tasks, losses, task_weights)
        watched = {t.name: primary_metrics(t) for t in tasks}
        if self.first_metrics is None:
            self.first_metrics = {t: {m: float(metrics[t][m]) for m in ms}
                                  for t, ms in watched.items()}
        return metric_score(metrics, self.first_metrics, watched)

    def observe(self, epoch: int, tasks: Sequence[Any],
                metrics: Mapping[str, Mapping[str, float]],
                losses: Mapping[str, Optional[float]],
                task_weights: Optional[Mapping[str, float]] = None,
                total: Optional[float] = None) -> Tuple[bool, Optional[float]]:
        """Record epoch ``epoch``'s held-out evaluation.

        Args:
            epoch: the 1-based epoch.
            tasks: the :class:`~branchnas.tasks.Task` objects trained.
            metrics: ``{task: {metric: value}}`` on the held-out slice.
            losses: ``{task: mean loss}`` on the held-out slice (None: no labelled sample).
            task_weights: fixed per-task loss weights (``"loss"``; missing: 1).
            total: the weighted held-out loss itself (``"loss"``; instead of ``losses``).

        Returns:
            ``(improved, gain)``: whether the epoch is the new best, and its gain over the
            previous best (Δm percent or loss decrease; None for the first evaluation). A
            non-finite evaluation never improves (a diverging epoch counts against patience).

        Raises:
            BranchnasError: when the held-out slice labels none of the tasks (``"loss"``).
        """
        gain: Optional[float]
        if self.monitor == "loss":
            value = total if total is not None else weighted_loss(tasks, losses, task_weights)
            finite = math.isfinite(value)
            gain = None if self.best_loss is None else self.best_loss - value
        else:
            watched = {t.name: primary_metrics(t) for t in tasks}
            current = {t: {m: float(metrics[t][m]) for m in ms} for t, ms in watched.items()}
            finite = all(math.isfinite(v) for ms in current.values() for v in ms.values())
            gain = (None if self.best_metrics is None or not finite
                    else metric_score(current, self.best_metrics, watched))
        improved = finite and (gain is None or gain > self.min_delta)
        if improved:
            self.best_epoch, self.bad_epochs = int(epoch), 0
            if self.monitor == "loss":
                self.best_loss = float(value)
            else:
                self.best_metrics = current
        else:
            self.bad_epochs += 1
        return improved, gain

    @property
    def stopped(self) -> bool:
        """True once ``patience`` epochs in a row brought no improvement."""
        return self.bad_epochs >= self.patience

    def state_dict(self) -> Dict[str, Any]:
        """Plain data for the checkpoint."""
        return {"best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
                "best_loss": self.best_loss, "bad_epochs": self.bad_epochs,
                "first_metrics": self.first_metrics}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        loss = state.get("best_loss")
        self.best_loss = None if loss is None else float(loss)
        best = state.get("best_metrics")
        self.best_metrics = None if best is None else {t: dict(m) for t, m in best.items()}
        first = state.get("first_metrics")
        self.first_metrics = None if first is None else {t: dict(m) for t, m in first.items()}


def weighted_loss(tasks: Sequence[Any], losses: Mapping[str, Optional[float]],
                  task_weights: Optional[Mapping[str, float]] = None) -> float:
    """``Σ_t w_t · loss_t`` over the tasks with a held-out loss (``w_t`` missing: 1).

    Raises:
        BranchnasError: when no task has one (the held-out slice labels none of them).
    """
    weights = dict(task_weights or {})
    known = [(weights.get(t.name, 1.0), losses.get(t.name)) for t in tasks]
    known = [(w, v) for w, v in known if v is not None]
    if not known:
        raise BranchnasError("the held-out slice labels none of the tasks; raise holdout_fraction")
    return float(sum(w * v for w, v in known))
