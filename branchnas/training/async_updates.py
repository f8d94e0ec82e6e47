"""UberNet's asynchronous SGD (Kokkinos 2017, §3 and Table 1) over mini-batches.

With partial labels, a batch may hold few samples labelled for task t, so a plain update
of t's parameters would use a noisy gradient. UberNet instead gives every parameter
group its own *effective batch size* ``B_p``: the shared trunk (``p = 0``) counts every
sample, task t's own parameters count only samples labelled for t. Gradients are summed
over samples into an accumulator ``dw_p``; when the counter ``c_p`` reaches ``B_p`` the
group steps with ``dw_p / c_p`` (the mean over the samples it saw; its optimizer adds the
weight decay) and both are reset.

How it maps onto batches here:

* The backward pass must produce gradients *summed over samples*: the trainer
  back-propagates ``Σ_t n_t · term_t`` (``n_t`` = labelled samples of t in the batch,
  ``term_t`` the weighted mean loss, see :class:`~branchnas.training.weighting.ScaledWeighting`),
  so shared parameters receive ``Σ_t Σ_{i: δ_t,i = 1} γ_t ∇L_t,i`` as in the paper's Eq. 4
  and task t's parameters ``Σ_{i: δ_t,i = 1} γ_t ∇L_t,i`` (Eq. 5), both unnormalised.
* Each parameter's ``.grad`` is its group's accumulator: a group that does not step keeps
  its ``.grad`` (the next backward adds to it); a group that steps has it cleared.
* Counters advance a batch at a time, so a group steps at the first batch that brings
  ``c_p`` to at least ``B_p``, and then averages over all ``c_p`` samples it saw
  (UberNet streams single samples, where ``c_p`` hits ``B_p`` exactly).

With every label present and every ``B_p`` equal to the loader's batch size this is plain
mini-batch training.

Example:
    >>> import torch
    >>> from torch import nn
    >>> trunk, head = nn.Linear(2, 2), nn.Linear(2, 1)
    >>> make = lambda params: torch.optim.SGD(params, lr=0.1)
    >>> up = AsyncUpdater({"shared": trunk.parameters(), "t": head.parameters()},
    ...                   {"shared": 4, "t": 4}, make)
    >>> head(trunk(torch.ones(2, 2))).sum().backward()
    >>> up.step({"shared": 2, "t": 2})  # 2 of 4 samples seen: nobody steps yet
    []
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import BranchnasError

__all__ = ["AsyncUpdater", "SHARED"]

log = logging.getLogger(__name__)

SHARED = "shared"
"""The group name of the shared (trunk) parameters."""

ParamSpec = Union[Iterable[nn.Parameter], Sequence[Dict[str, Any]]]


def _param_groups(spec: ParamSpec) -> List[Dict[str, Any]]:
    """Normalise parameters or optimizer-style param-group dicts into a list of dicts."""
    items = list(spec)
    if items and isinstance(items[0], dict):
        return [dict(g, params=list(g["params"])) for g in items]
    return [{"params": items}]


class AsyncUpdater:
    """One optimizer per parameter group, each stepping at its own effective batch size.

    Args:
        groups: group name -> its parameters (or optimizer-style param-group dicts, e.g.
            to give some of them ``weight_decay=0``). Use :data:`SHARED` for the trunk and
            task names for task-specific parameters. A parameter may belong to one group.
        batch_sizes: group name -> effective batch size ``B_p`` (samples for ``shared``,
            labelled samples for a task).
        make_optimizer: builds one group's optimizer from its list of param-group dicts.

    Raises:
        BranchnasError: when a group has no batch size, a batch size is < 1, or a parameter
            sits in two groups.
    """

    def __init__(
        self,
        groups: Mapping[str, ParamSpec],
        batch_sizes: Mapping[str, int],
        make_optimizer: Callable[[List[Dict[str, Any]]], torch.optim.Optimizer],
    ) -> None:
        self.batch_sizes: Dict[str, int] = {}
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self._params: Dict[str, List[nn.Parameter]] = {}
        seen: Dict[int, str] = {}
        for name, spec in groups.items():
            if name not in batch_sizes:
                raise BranchnasError(
                    f"asynchronous updates: no effective batch size for group {name!r}; "
                    f"give one (groups: {', '.join(groups)})"
                )
            size = int(batch_sizes[name])
            if size < 1:
                raise BranchnasError(
                    f"asynchronous updates: batch size of group {name!r} must be >= 1, got {size}"
                )
            pgroups = _param_groups(spec)
            params = [p for g in pgroups for p in g["params"] if p.requires_grad]
            for p in params:
                if id(p) in seen:
                    raise BranchnasError(
                        f"asynchronous updates: a parameter is in both group {seen[id(p)]!r} and "
                        f"{name!r}; each parameter must belong to one group"
                    )
                seen[id(p)] = name
            pgroups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in pgroups]
            pgroups = [g for g in pgroups if g["params"]]
            self.batch_sizes[name] = size
            self._params[name] = params
            if params:
                self.optimizers[name] = make_optimizer(pgroups)
            else:
                log.debug("asynchronous updates: group %r has no trainable parameters", name)
        self.counts: Dict[str, int] = {name: 0 for name in self.batch_sizes}
        self.updates: Dict[str, int] = {name: 0 for name in self.batch_sizes}

    @property
    def groups(self) -> List[str]:
        """The group names."""
        return list(self.batch_sizes)

    def parameters(self, group: str) -> List[nn.Parameter]:
        """The trainable parameters of one group."""
        return list(self._params[group])

    def step(self, counts: Mapping[str, int]) -> List[str]:
        """Account for one backward pass; step every group whose count reached its batch size.

        Call after back-propagating the batch's gradients *summed* over samples (see the
        module docstring), never zeroing gradients in between.

        Args:
            counts: group name -> samples this batch contributed (``shared``: the batch
                size; a task: its labelled samples). Missing groups count 0.

        Returns:
            The names of the groups that stepped, in group order.
        """
        unknown = [g for g in counts if g not in self.batch_sizes]
        if unknown:
            raise BranchnasError(
                f"asynchronous updates: unknown group(s) {', '.join(unknown)}; "
                f"groups: {', '.join(self.batch_sizes)}"
            )
        stepped = []
        for name, size in self.batch_sizes.items():
            self.counts[name] += int(counts.get(name, 0))
            if self.counts[name] < size:
                continue
            params = self._params[name]
            if params:
                scale = 1.0 / self.counts[name]
                with torch.no_grad():
                    for p in params:
                        if p.grad is not None:
                            p.grad.mul_(scale)
                self.optimizers[name].step()
                for p in params:
                    p.grad = None
            self.counts[name] = 0
            self.updates[name] += 1
            stepped.append(name)
        return stepped

    def param_groups(self) -> List[Dict[str, Any]]:
        """Every optimizer's param groups (e.g. to set learning rates)."""
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        """Counters, optimizer states and the pending (accumulated) gradients."""
        return {
            "counts": dict(self.counts),
            "updates": dict(self.updates),
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "grads": {
                n: [None if p.grad is None else p.grad.detach().clone() for p in ps]
                for n, ps in self._params.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (same groups, same parameters)."""
        if set(state["counts"]) != set(self.batch_sizes):
            raise BranchnasError(
                "asynchronous updates: the checkpoint's groups "
                f"({', '.join(state['counts'])}) differ from this model's "
                f"({', '.join(self.batch_sizes)}); resume with the same model and tasks"
            )
        self.counts = {n: int(v) for n, v in state["counts"].items()}
        self.updates = {n: int(v) for n, v in state["updates"].items()}
        for n, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][n])
        for n, ps in self._params.items():
            grads: Sequence[Optional[Tensor]] = state["grads"][n]
            for p, g in zip(ps, grads):
                p.grad = None if g is None else g.to(device=p.device, dtype=p.dtype).clone()
