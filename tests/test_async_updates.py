"""UberNet's asynchronous SGD: per-group counters, thresholds, means over samples seen."""

import pytest
import torch
from torch import nn

from branchnas.errors import BranchnasError
from branchnas.training.async_updates import SHARED, AsyncUpdater
from branchnas.training.weighting import ScaledWeighting, create_weighting

TASKS = ["a", "b"]


class Tiny(nn.Module):
    """A linear trunk and one linear head per task (the multi-task model interface)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(3, 4)
        self.heads = nn.ModuleDict({t: nn.Linear(4, 1) for t in TASKS})

    def forward(self, x, tasks=None):
        h = torch.tanh(self.trunk(x))
        return {t: self.heads[t](h).squeeze(1) for t in (tasks or TASKS)}

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def task_parameters(self, task):
        return list(self.heads[task].parameters())


def _loss(pred, target, present):
    """Mean squared error over present samples (an exact, attached zero when none)."""
    err = (pred - target) ** 2 * present
    return err.sum() / present.sum().clamp(min=1)


def _data(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), {t: torch.randn(n, generator=g) for t in TASKS}


def _async_step(model, updater, weighting, x, y, present):
    preds = model(x)
    losses = {t: _loss(preds[t], y[t], present[t].float()) for t in TASKS}
    counts = {t: int(present[t].sum()) for t in TASKS}
    ScaledWeighting(weighting, scales=counts).combine(losses, present=counts).backward()
    return updater.step({SHARED: x.shape[0], **counts})


def _updater(model, sizes, lr=0.1, momentum=0.0):
    groups = {SHARED: model.shared_parameters(), **{t: model.task_parameters(t) for t in TASKS}}
    return AsyncUpdater(groups, sizes, lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum))


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_task_without_labels_gets_no_update():
    model = Tiny()
    up = _updater(model, {SHARED: 4, "a": 4, "b": 4})
    w = create_weighting("equal", TASKS)
    b0, a0, s0 = (_snapshot(model.task_parameters("b")), _snapshot(model.task_parameters("a")),
                  _snapshot(model.shared_parameters()))
    for seed in range(5):
        x, y = _data(4, seed)
        present = {"a": torch.ones(4, dtype=torch.bool), "b": torch.zeros(4, dtype=torch.bool)}
        assert "b" not in _async_step(model, up, w, x, y, present)
    assert _same(b0, model.task_parameters("b"))
    assert not _same(a0, model.task_parameters("a"))
    assert not _same(s0, model.shared_parameters())
    assert up.updates == {SHARED: 5, "a": 5, "b": 0}


def test_task_steps_exactly_at_its_threshold_with_the_mean_over_its_samples():
    model = Tiny()
    lr = 0.1
    up = _updater(model, {SHARED: 100, "a": 5, "b": 100}, lr=lr)
    w = create_weighting("equal", TASKS)
    head = model.task_parameters("a")
    start = _snapshot(head)
    xs, ys, masks = [], [], []
    for seed in range(3):
        x, y = _data(4, seed)
        present = {"a": torch.tensor([True, False, True, False]),
                   "b": torch.ones(4, dtype=torch.bool)}
        stepped = _async_step(model, up, w, x, y, present)
        xs.append(x), ys.append(y), masks.append(present["a"])
        if seed < 2:  # 2, then 4 labelled samples of a: below 5
            assert stepped == [] and _same(start, head), seed
    assert stepped == ["a"]  # 6 >= 5: a steps, nothing else
    assert up.counts == {SHARED: 0 + 12, "a": 0, "b": 12}
    # expected: w - lr * (mean over the 6 labelled samples of the per-sample gradient)
    ref = Tiny()
    ref.load_state_dict({**ref.state_dict(), **{f"heads.a.{k}": v for k, v in
                                                 zip(("weight", "bias"), start)}})
    grads = [torch.zeros_like(p) for p in start]
    n = 0
    for x, y, m in zip(xs, ys, masks):
        for i in range(4):
            if not m[i]:
                continue
            ref.zero_grad()
            ((ref(x[i:i + 1])["a"] - y["a"][i:i + 1]) ** 2).sum().backward()
            for g, p in zip(grads, ref.heads["a"].parameters()):
                g += p.grad
            n += 1
    assert n == 6
    for p, p0, g in zip(head, start, grads):
        assert torch.allclose(p, p0 - lr * g / n, atol=1e-7)
    # gradients of the groups that did not step are still pending
    assert all(p.grad is not None for p in model.shared_parameters())
    assert all(p.grad is None for p in head)


def test_equals_plain_sgd_when_everything_is_present():
    torch.manual_seed(0)
    plain, asyn = Tiny(), Tiny()
    asyn.load_state_dict(plain.state_dict())
    opt = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9)
    up = _updater(asyn, {SHARED: 6, "a": 6, "b": 6}, lr=0.05, momentum=0.9)
    w = create_weighting("dwa", TASKS)
    all_present = {t: torch.ones(6, dtype=torch.bool) for t in TASKS}
    for seed in range(6):
        x, y = _data(6, seed)
        preds = plain(x)
        opt.zero_grad()
        w.combine({t: _loss(preds[t], y[t], all_present[t].float()) for t in TASKS}).backward()
        opt.step()
        assert _async_step(asyn, up, w, x, y, all_present) == [SHARED, "a", "b"]
    for p, q in zip(plain.parameters(), asyn.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_state_dict_keeps_counts_and_pending_gradients():
    model = Tiny()
    up = _updater(model, {SHARED: 10, "a": 10, "b": 10})
    w = create_weighting("equal", TASKS)
    x, y = _data(4)
    _async_step(model, up, w, x, y, {t: torch.ones(4, dtype=torch.bool) for t in TASKS})
    state = up.state_dict()
    other = Tiny()
    up2 = _updater(other, {SHARED: 10, "a": 10, "b": 10})
    up2.load_state_dict(state)
    assert up2.counts == {SHARED: 4, "a": 4, "b": 4}
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_bad_groups_are_rejected():
    model = Tiny()
    make = lambda ps: torch.optim.SGD(ps, lr=0.1)  # noqa: E731
    with pytest.raises(BranchnasError, match="no effective batch size for group 'b'"):
        AsyncUpdater({SHARED: model.shared_parameters(), "b": model.task_parameters("b")},
                     {SHARED: 2}, make)
    with pytest.raises(BranchnasError, match="both group"):
        AsyncUpdater({SHARED: model.shared_parameters(), "a": model.shared_parameters()},
                     {SHARED: 2, "a": 2}, make)
    with pytest.raises(BranchnasError, match=">= 1"):
        AsyncUpdater({SHARED: model.shared_parameters()}, {SHARED: 0}, make)
    up = _updater(model, {SHARED: 2, "a": 2, "b": 2})
    with pytest.raises(BranchnasError, match="unknown group"):
        up.step({"c": 1})
