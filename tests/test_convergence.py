"""The convergence rule: held-out slice of the training split, patience, epoch cap, best
checkpoint restored; its bookkeeping in the run directory; fixed per-task loss weights."""

import json
import math

import pytest
import torch
from torch import nn

from branchnas.errors import BranchnasError
from branchnas.tasks import create_task
from branchnas.training import RunDir, ScaledWeighting, TrainConfig, create_weighting, train
from branchnas.training.convergence import (
    Convergence,
    holdout_split,
    metric_score,
    primary_metrics,
    weighted_loss,
)
from branchnas.training import trainer as trainer_mod

HW = 4
DEPTH = create_task("depth", "depth")


class Constant(nn.Module):
    """Predicts one learnable depth ``b`` everywhere (starts at 0)."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, image, tasks=None):
        return {"depth": self.b.expand(image.shape[0], 1, *image.shape[-2:])}


def collate(items):
    return {"image": torch.stack([it["image"] for it in items]),
            "labels": {"depth": torch.stack([it["labels"]["depth"] for it in items])},
            "present": {"depth": torch.tensor([True] * len(items))}}


def item(depth):
    return {"image": torch.zeros(3, HW, HW), "labels": {"depth": torch.full((1, HW, HW), depth)},
            "present": {"depth": True}}


N, SEED = 11, 0  # 11 items: 1 held out, 10 trained in 2 batches of 5


def known_best_data():
    """Training items at depth 1.0, the held-out one at 0.3, the validation set at 1.0.

    SGD on the L1 loss moves ``b`` up by ``lr`` per step (the gradient is -1 below 1), so with
    lr 0.05 and 2 steps ``b`` is 0.1·epoch: the held-out error is least after epoch 3
    (b = 0.3) and grows after it, while the validation error keeps falling until epoch 10.
    """
    _, held = holdout_split(N, 0.1, SEED)
    assert len(held) == 1
    return [item(0.3 if i in held else 1.0) for i in range(N)], [item(1.0) for _ in range(4)]


def cfg(**kw):
    base = dict(optimizer="sgd", lr=0.05, momentum=0.0, weight_decay=0.0, schedule="none",
                batch_size=5, epochs=10, patience=2, holdout_fraction=0.1, seed=SEED,
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def fit(model, run_dir, config, data=None, **kw):
    train_set, val_set = data or known_best_data()
    return train(model, [DEPTH], train_set, val_set, config, run_dir, "cpu", collate_fn=collate,
                 command=["test"], **kw)


@pytest.mark.parametrize("monitor", ["metric", "loss"])
def test_stops_on_the_plateau_and_restores_the_best_epoch(tmp_path, monitor):
    model = Constant()
    result = fit(model, tmp_path, cfg(monitor=monitor))
    run = RunDir(tmp_path)
    records = run.read_metrics()
    # best after epoch 3, then two epochs without improvement (patience 2): stop after 5
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["best_epoch"] for r in records] == [1, 2, 3, 3, 3]
    gains = [r["holdout_gain"] for r in records]
    assert gains[0] is None and gains[1] > 0 and gains[2] > 0 and max(gains[3:]) < 0
    first = records[0]["holdout_score"]  # the curve: against the first evaluation
    assert all(r["holdout_score"] > first for r in records[1:4])
    assert [r["holdout"]["depth"]["abs_err"] for r in records] == pytest.approx(
        [0.2, 0.1, 0.0, 0.1, 0.2], abs=1e-6)
    assert result["epochs"] == 5 and result["best_epoch"] == 3 and result["max_epochs"] == 10
    assert result["stop_reason"] == "plateau" and result["monitor"] == monitor
    assert result["holdout_size"] == 1
    assert float(model.b.detach()) == pytest.approx(0.3, abs=1e-6)  # restored, not epoch 5's 0.5
    # the reported metrics are the validation set's at the best epoch, not the last one
    assert result["depth"] == records[2]["val"]["depth"]
    assert result["depth"]["abs_err"] == pytest.approx(0.7, abs=1e-6)
    # cost: images through a training step (10 per epoch), wall time, device
    assert result["images_seen"] == 50 and result["seconds"] > 0 and result["device"] == "cpu"
    assert json.loads(run.done_path.read_text()) == result
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 3 and torch.equal(best["model"]["b"], model.b.detach())
    assert torch.equal(run.model_state()["b"], model.b.detach())  # what later stages load


def test_the_cap_ends_a_run_that_keeps_improving(tmp_path):
    data = ([item(1.0) for _ in range(N)], [item(1.0) for _ in range(4)])
    result = fit(Constant(), tmp_path, cfg(epochs=4), data)
    assert result["epochs"] == 4 and result["best_epoch"] == 4
    assert result["stop_reason"] == "max_epochs"


def test_patience_zero_trains_every_epoch_on_every_item(tmp_path):
    model = Constant()
    data = ([item(1.0) for _ in range(N)], [item(1.0) for _ in range(4)])
    result = fit(model, tmp_path, cfg(patience=0, epochs=5), data)
    assert result["epochs"] == 5 and result["best_epoch"] == 5 and result["holdout_size"] == 0
    assert result["images_seen"] == 50 and result["monitor"] is None  # 11 items: 2 batches of 5
    assert not (tmp_path / "checkpoints" / "best.pt").exists()
    assert float(model.b.detach()) == pytest.approx(0.5, abs=1e-6)
    assert "holdout" not in RunDir(tmp_path).read_metrics()[0]


class Stop(KeyboardInterrupt):
    pass


def without_clock(result):
    return {k: v for k, v in result.items() if k not in ("seconds", "images_per_s")}


def test_resume_after_stopping_but_before_done_trains_no_more(tmp_path):
    first = fit(Constant(), tmp_path, cfg())
    RunDir(tmp_path).done_path.unlink()
    model = Constant()
    again = fit(model, tmp_path, cfg(), on_epoch_end=lambda r: pytest.fail("trained again"))
    assert without_clock(again) == without_clock(first)
    assert float(model.b.detach()) == pytest.approx(0.3, abs=1e-6)


def test_a_kill_between_the_checkpoint_and_best_pt_is_repaired(tmp_path, monkeypatch):
    full = Constant()
    expected = fit(full, tmp_path / "full", cfg())
    saved = trainer_mod._save_best

    def die_at_epoch_3(run, session, epoch):
        if epoch == 3:
            raise Stop()
        saved(run, session, epoch)

    monkeypatch.setattr(trainer_mod, "_save_best", die_at_epoch_3)  # killed after last.pt
    with pytest.raises(Stop):
        fit(Constant(), tmp_path / "part", cfg())
    assert torch.load(tmp_path / "part" / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(trainer_mod, "_save_best", saved)
    resumed = Constant()
    result = fit(resumed, tmp_path / "part", cfg())
    assert result["best_epoch"] == 3 and torch.equal(resumed.b, full.b)
    assert without_clock(result) == without_clock(expected)


def test_holdout_split_is_disjoint_seeded_and_refuses_to_take_everything():
    train_idx, held = holdout_split(100, 0.1, 3)
    assert len(held) == 10 and sorted(train_idx + held) == list(range(100))
    assert held == sorted(held) and holdout_split(100, 0.1, 3) == (train_idx, held)
    assert holdout_split(100, 0.1, 4)[1] != held
    assert len(holdout_split(5, 0.01, 0)[1]) == 1  # at least one item
    with pytest.raises(BranchnasError, match="none to train on"):
        holdout_split(1, 0.5, 0)


def test_rule_state_round_trips_and_counts_patience():
    rule = Convergence(patience=2, min_delta=0.5, monitor="loss")
    seen = [rule.observe(e, [], {}, {}, total=v) for e, v in enumerate([3.0, 2.6, 2.0, math.nan], 1)]
    # a drop of 0.4 is within min_delta; NaN never improves
    assert seen == [(True, None), (False, pytest.approx(0.4)), (True, pytest.approx(1.0)),
                    (False, pytest.approx(math.nan, nan_ok=True))]
    assert (rule.best_epoch, rule.bad_epochs, rule.stopped) == (3, 1, False)
    other = Convergence(patience=2, min_delta=0.5, monitor="loss")
    other.load_state_dict(json.loads(json.dumps(rule.state_dict())))
    assert other.state_dict() == rule.state_dict()
    other.observe(5, [], {}, {}, total=1.9)
    assert other.stopped
    with pytest.raises(BranchnasError, match="patience"):
        Convergence(patience=0)


def test_metric_gain_is_delta_m_against_the_best_epoch():
    seg = create_task("seg", "segmentation", num_classes=3)
    watched = {"seg": primary_metrics(seg), "depth": primary_metrics(DEPTH)}
    assert watched == {"seg": {"miou": True}, "depth": {"abs_err": False}}
    first = {"seg": {"miou": 40.0, "pixel_acc": 70.0}, "depth": {"abs_err": 2.0, "rel_err": 1.0}}
    second = {"seg": {"miou": 50.0, "pixel_acc": 0.0}, "depth": {"abs_err": 1.5, "rel_err": 9.0}}
    # by hand: seg +25 %, depth +25 % (lower is better), on the primary measures only
    assert metric_score(second, first, watched) == pytest.approx(25.0)
    rule = Convergence(patience=1)
    assert rule.observe(1, [seg, DEPTH], first, {}) == (True, None)
    assert rule.observe(2, [seg, DEPTH], second, {}) == (True, pytest.approx(25.0))
    # against the best (epoch 2), not the first epoch: seg +10 %, depth -40 % is worse
    third = {"seg": {"miou": 55.0}, "depth": {"abs_err": 2.1}}
    assert rule.observe(3, [seg, DEPTH], third, {}) == (False, pytest.approx(-15.0))
    assert rule.best_epoch == 2 and rule.stopped
    # the learning curve (holdout_score) is against the first evaluation instead
    assert rule.score([seg, DEPTH], first, {}) == 0.0
    assert rule.score([seg, DEPTH], third, {}) == pytest.approx((37.5 - 5.0) / 2)
    zero = {"seg": {"miou": 0.0}}
    assert metric_score({"seg": {"miou": 3.0}}, zero, {"seg": {"miou": True}}) == 300.0


def test_loss_monitor_applies_the_fixed_task_weights():
    seg = create_task("seg", "segmentation", num_classes=3)
    assert weighted_loss([seg, DEPTH], {"seg": 0.5, "depth": 0.25}, {"depth": 10.0}) == 3.0
    rule = Convergence(patience=1, monitor="loss")
    rule.observe(1, [seg, DEPTH], {}, {"seg": 0.5, "depth": 0.25}, {"depth": 10.0})
    assert rule.best_loss == 3.0
    with pytest.raises(BranchnasError, match="labels none"):
        rule.observe(2, [seg], {}, {"seg": None})


# ------------------------------------------------------------------ fixed per-task loss weights

def test_scaled_weighting_applies_loss_weights_before_the_weighting():
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    equal = create_weighting("equal", ["a", "b"])
    assert float(ScaledWeighting(equal, loss_weights={"b": 10.0}).combine(losses)) == 21.0
    unc = create_weighting("uncertainty", ["a", "b"])
    weighted = ScaledWeighting(unc, loss_weights={"b": 10.0}).combine(losses)
    by_hand = unc.combine({"a": losses["a"], "b": 10 * losses["b"]})
    assert float(weighted.detach()) == pytest.approx(float(by_hand.detach()))


class TwoTasks(nn.Module):
    def __init__(self):
        super().__init__()
        self.depth = Constant()
        self.cls = nn.Linear(3, 3)

    def forward(self, image, tasks=None):
        return {"depth": self.depth(image)["depth"], "cls": self.cls(image.mean((2, 3)))}


def test_trainer_total_is_the_weighted_sum_and_one_task_runs_ignore_weights(tmp_path):
    cls = create_task("cls", "classification", num_classes=3)
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(3, HW, HW, generator=g),
              "labels": {"depth": torch.full((1, HW, HW), 1.0), "cls": torch.tensor(i % 3)},
              "present": {"depth": True, "cls": True}} for i in range(10)]

    def coll(its):
        return {"image": torch.stack([it["image"] for it in its]),
                "labels": {t: torch.stack([it["labels"][t] for it in its]) for t in ("depth", "cls")},
                "present": {t: torch.tensor([True] * len(its)) for t in ("depth", "cls")}}

    config = cfg(lr=1e-12, epochs=1, patience=0, task_weights={"cls": 10.0})
    train(TwoTasks(), [DEPTH, cls], items, items[:4], config, tmp_path / "mt", "cpu",
          collate_fn=coll, command=["t"])
    rec = RunDir(tmp_path / "mt").read_metrics()[0]
    loss = rec["train_loss"]
    assert rec["train_total"] == pytest.approx(loss["depth"] + 10 * loss["cls"], rel=1e-5)
    assert json.loads((tmp_path / "mt" / "config.json").read_text())["task_weights"] == {
        "cls": 10.0}
    train(Constant(), [DEPTH], items, items[:4], config.replace(task_weights={"depth": 10.0}),
          tmp_path / "st", "cpu", collate_fn=coll, command=["t"])
    rec = RunDir(tmp_path / "st").read_metrics()[0]
    assert rec["train_total"] == pytest.approx(rec["train_loss"]["depth"], rel=1e-6)


def test_bad_convergence_settings_are_refused_up_front():
    with pytest.raises(BranchnasError, match="patience"):
        TrainConfig(patience=-1)
    with pytest.raises(BranchnasError, match="holdout_fraction"):
        TrainConfig(holdout_fraction=0.9)
    with pytest.raises(BranchnasError, match="monitor"):
        TrainConfig(monitor="accuracy")
    with pytest.raises(BranchnasError, match=r"task_weights\['k'\]"):
        TrainConfig(task_weights={"k": -1})
    assert TrainConfig.from_sources({"task_weights": {"k": 10}}, {}).task_weights == {"k": 10.0}
    assert math.isclose(TrainConfig().holdout_fraction, 0.1)
