"""Loss weightings: the registry contract, DWA's formula, uncertainty's gradient, equal."""

import math

import pytest
import torch

from branchnas.errors import BranchnasError
from branchnas.training.weighting import (
    ScaledWeighting,
    create_weighting,
    get_weighting,
    list_weightings,
)

TASKS = ["seg", "depth", "cls"]


def _losses(values):
    return {t: torch.tensor(float(v), requires_grad=True) for t, v in zip(TASKS, values)}


def test_registry_lists_the_three():
    assert list_weightings() == ["dwa", "equal", "uncertainty"]


def test_unknown_weighting_lists_choices():
    with pytest.raises(BranchnasError, match="dwa, equal, uncertainty"):
        create_weighting("gradnorm", TASKS)


def test_unknown_option_is_a_branchnas_error():
    with pytest.raises(BranchnasError, match="equal"):
        create_weighting("equal", TASKS, temperature=2.0)


@pytest.mark.parametrize("name", list_weightings())
def test_contract(name):
    """Every weighting: scalar total, gradient to every loss and to its own parameters,
    weights for every task, a state_dict that round-trips, unknown tasks rejected."""
    w = create_weighting(name, TASKS)
    losses = _losses([1.0, 2.0, 3.0])
    total = w.combine(losses)
    assert total.dim() == 0
    total.backward()
    for t, loss in losses.items():
        assert loss.grad is not None and loss.grad.item() > 0, t
    for p in w.parameters():
        assert p.grad is not None
    assert set(w.current_weights()) == set(TASKS)
    w.end_epoch({"seg": 1.0, "depth": 2.0, "cls": 3.0})
    w2 = create_weighting(name, TASKS)
    w2.load_state_dict(w.state_dict())
    assert w2.current_weights() == w.current_weights()
    with pytest.raises(BranchnasError, match="unknown task"):
        w.combine({"nope": torch.tensor(1.0)})


def test_equal_is_the_sum():
    w = create_weighting("equal", TASKS)
    total = w.combine(_losses([1.5, 2.0, 0.25]))
    assert total.item() == pytest.approx(3.75)
    assert w.current_weights() == {t: 1.0 for t in TASKS}


def test_dwa_first_two_epochs_equal_then_formula():
    w = create_weighting("dwa", TASKS)  # T = 2
    assert w.current_weights() == {t: 1.0 for t in TASKS}
    w.end_epoch({"seg": 4.0, "depth": 2.0, "cls": 1.0})  # epoch 1
    assert w.current_weights() == {t: 1.0 for t in TASKS}  # epoch 2 still equal
    w.end_epoch({"seg": 2.0, "depth": 2.0, "cls": 1.5})  # epoch 2
    # epoch 3: w_t = L_t(2) / L_t(1) = 0.5, 1.0, 1.5; λ_t = 3 exp(w_t/2) / Σ exp(w_i/2)
    e = [math.exp(0.25), math.exp(0.5), math.exp(0.75)]
    expected = {t: 3 * x / sum(e) for t, x in zip(TASKS, e)}
    got = w.current_weights()
    for t in TASKS:
        assert got[t] == pytest.approx(expected[t], rel=1e-12)
    assert sum(got.values()) == pytest.approx(3.0)
    # the task whose loss fell least gets the largest weight
    assert got["cls"] > got["depth"] > got["seg"]
    # combine applies them
    total = w.combine(_losses([1.0, 2.0, 3.0]))
    weighted = expected["seg"] + 2 * expected["depth"] + 3 * expected["cls"]
    assert total.item() == pytest.approx(weighted)
    # only the last two epochs count
    w.end_epoch({"seg": 2.0, "depth": 1.0, "cls": 1.5})  # epoch 3: ratios 1, 0.5, 1
    e = [math.exp(0.5), math.exp(0.25), math.exp(0.5)]
    got = w.current_weights()
    assert got["depth"] == pytest.approx(3 * e[1] / sum(e), rel=1e-12)
    assert sum(got.values()) == pytest.approx(3.0)


def test_dwa_temperature_and_zero_denominator():
    w = create_weighting("dwa", ["a", "b"], temperature=1.0)
    w.end_epoch({"a": 0.0, "b": 1.0})
    w.end_epoch({"a": 1.0, "b": 3.0})  # a: 1/0 counts as ratio 1; b: ratio 3
    e = [math.exp(1.0), math.exp(3.0)]
    assert w.current_weights()["b"] == pytest.approx(2 * e[1] / sum(e), rel=1e-12)
    with pytest.raises(BranchnasError, match="temperature"):
        create_weighting("dwa", ["a"], temperature=0.0)


def test_dwa_state_restores_history():
    w = create_weighting("dwa", TASKS)
    w.end_epoch({"seg": 1.0, "depth": 1.0, "cls": 1.0})
    w2 = get_weighting("dwa")(TASKS)
    w2.load_state_dict(w.state_dict())
    w.end_epoch({"seg": 0.5, "depth": 1.0, "cls": 2.0})
    w2.end_epoch({"seg": 0.5, "depth": 1.0, "cls": 2.0})
    assert w2.current_weights() == w.current_weights() != {t: 1.0 for t in TASKS}


def test_uncertainty_value_and_gradient_on_log_variance():
    w = create_weighting("uncertainty", ["a", "b"])
    with torch.no_grad():
        w.log_vars[0].fill_(0.0)
        w.log_vars[1].fill_(math.log(2.0))
    losses = {"a": torch.tensor(3.0), "b": torch.tensor(4.0)}
    total = w.combine(losses)
    # exp(-s) L + s per task
    assert total.item() == pytest.approx(3.0 + 0.0 + 4.0 / 2.0 + math.log(2.0))
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    assert w.log_vars[0].grad.item() == pytest.approx(1 - 3.0)
    assert w.log_vars[1].grad.item() == pytest.approx(1 - 4.0 / 2.0)
    assert w.current_weights() == pytest.approx({"a": 1.0, "b": 0.5})
    # the optimum of exp(-s) L + s is s = log L
    assert w.task_parameters("b") == [w.log_vars[1]]


def test_absent_task_is_left_out():
    w = create_weighting("uncertainty", ["a", "b"])
    losses = {"a": torch.tensor(2.0, requires_grad=True),
              "b": torch.tensor(0.0, requires_grad=True)}
    total = w.combine(losses, present={"a": 3, "b": 0})
    assert total.item() == pytest.approx(2.0)
    total.backward()
    assert w.log_vars[1].grad.item() == 0.0  # no pull on s_b from a batch without b
    assert w.log_vars[0].grad.item() == pytest.approx(1 - 2.0)


def test_scaled_weighting():
    w = create_weighting("uncertainty", ["a", "b"])
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(5.0)}
    scaled = ScaledWeighting(w, scales={"a": 3.0, "b": 0.0}, factor=2.0)
    assert scaled.combine(losses).item() == pytest.approx(2.0 * 3.0 * (2.0 + 0.0))
    assert scaled.combine(losses, present={"a": torch.tensor(0), "b": 1}).item() == 0.0
    assert scaled.tasks == ("a", "b")  # other attributes are the weighting's
