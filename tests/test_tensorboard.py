"""TensorBoard event files: a tiny run's losses, loss weights, learning rate and validation
metrics read back with TensorBoard's own reader; a resumed run logs each epoch once; without
the tensorboard package training works and says once that logging is off."""

import logging
import sys

import pytest
import torch
from torch import nn

from branchnas.tasks import create_task
from branchnas.training import RunDir, TrainConfig, train
from branchnas.training import tensorboard as tb
from branchnas.training.tensorboard import TENSORBOARD_DIR, epoch_scalars

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the tensorboard package (extra [tensorboard]) is not installed")

TASKS = [create_task("seg", "segmentation", num_classes=3),
         create_task("cls", "classification", num_classes=3)]
NAMES = [t.name for t in TASKS]


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleDict({"seg": nn.Conv2d(4, 3, 1), "cls": nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))})

    def forward(self, image, tasks=None):
        h = self.trunk(image)
        return {t: self.heads[t](h) for t in (tasks or NAMES)}


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        image = torch.rand(3, 6, 6, generator=g)
        items.append({"image": image,
                      "labels": {"seg": image.argmax(0), "cls": image.mean((1, 2)).argmax()},
                      "present": {"seg": True, "cls": True}})
    return items


def collate(items):
    return {"image": torch.stack([it["image"] for it in items]),
            "labels": {t: torch.stack([it["labels"][t] for it in items]) for t in NAMES},
            "present": {t: torch.tensor([it["present"][t] for it in items]) for t in NAMES}}


def fit(run_dir, weighting="dwa", patience=0, holdout_fraction=0.1, **kw):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.01, progress=False, eval_batch_size=8,
                      weighting=weighting, schedule="poly", patience=patience,
                      holdout_fraction=holdout_fraction)
    return train(TwoHeads(), TASKS, data(12, 1), data(8, 2), cfg, run_dir, device="cpu",
                 collate_fn=collate, command=["test"], **kw)


def read_scalars(run_dir):
    """{tag: [(step, value), ...]} as TensorBoard shows them (purged events dropped)."""
    acc = event_accumulator.EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_scalars(run_dir):
    """The same, computed independently from metrics.jsonl."""
    out = {}
    for r in RunDir(run_dir).read_metrics():
        rows = {"loss/total": r["train_total"], "lr": r["lr"],
                "speed/images_per_s": r["images_per_s"]}
        rows.update({f"loss/{t}": v for t, v in r["train_loss"].items()})
        rows.update({f"loss_weight/{t}": v for t, v in r["weights"].items()})
        rows.update({f"val/{t}/{m}": v for t, ms in r["val"].items() for m, v in ms.items()})
        if r.get("holdout") is not None:  # the convergence rule's held-out slice
            rows.update({f"holdout/{t}/{m}": v for t, ms in r["holdout"].items()
                         for m, v in ms.items()})
            rows.update({f"holdout_loss/{t}": v for t, v in r["holdout_loss"].items()})
            rows["holdout/score"] = r["holdout_score"]
            if r.get("holdout_gain") is not None:
                rows["holdout/gain"] = r["holdout_gain"]
        for tag, value in rows.items():
            out.setdefault(tag, []).append((r["epoch"], value))
    return out


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        # event files store float32
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6), tag


def test_tiny_run_leaves_an_event_file_with_its_metrics(tmp_path):
    fit(tmp_path / "run")
    scalars = read_scalars(tmp_path / "run")
    assert {"loss/total", "loss/seg", "loss/cls", "loss_weight/seg", "loss_weight/cls", "lr",
            "val/seg/miou", "val/cls/top1"} <= set(scalars)
    assert_same(scalars, expected_scalars(tmp_path / "run"))
    # DWA's weights move after the second epoch; the poly schedule lowers the rate
    assert scalars["loss_weight/seg"][0][1] == pytest.approx(1.0)
    assert scalars["loss_weight/seg"][2][1] != pytest.approx(1.0, abs=1e-6)
    lrs = [v for _, v in scalars["lr"]]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(0.01)


def test_uncertainty_weights_are_logged(tmp_path):
    fit(tmp_path / "run", weighting="uncertainty")
    scalars = read_scalars(tmp_path / "run")
    assert_same(scalars, expected_scalars(tmp_path / "run"))
    assert scalars["loss_weight/cls"][-1][1] != pytest.approx(1.0, abs=1e-6)  # exp(-s) learnt


class Stop(KeyboardInterrupt):
    pass


def test_resumed_run_logs_each_epoch_once(tmp_path):
    run = tmp_path / "run"

    def stop(record):
        if record["epoch"] == 2:
            raise Stop()

    with pytest.raises(Stop):
        fit(run, on_epoch_end=stop)
    # a kill between the checkpoint and the event write: epoch 2's events are lost
    for path in (run / TENSORBOARD_DIR).iterdir():
        path.unlink()
    fit(run)
    assert len(list((run / TENSORBOARD_DIR).iterdir())) == 1  # old files replaced, not added to
    assert_same(read_scalars(run), expected_scalars(run))
    assert [s for s, _ in read_scalars(run)["loss/total"]] == [1, 2, 3]


def test_without_tensorboard_training_works_and_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    monkeypatch.setattr(tb, "_told_unavailable", False)
    with caplog.at_level(logging.INFO, logger=tb.__name__):
        fit(tmp_path / "a")
        fit(tmp_path / "b")
    assert RunDir(tmp_path / "a").is_done() and RunDir(tmp_path / "b").is_done()
    assert not (tmp_path / "a" / TENSORBOARD_DIR).exists()
    said = [r for r in caplog.records if "TensorBoard logging is off" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO


def test_early_stopping_holdout_is_logged(tmp_path):
    fit(tmp_path / "run", patience=2, holdout_fraction=0.25)
    scalars = read_scalars(tmp_path / "run")
    assert {"holdout/score", "holdout/gain", "holdout/seg/miou", "holdout_loss/cls"} <= set(scalars)
    assert_same(scalars, expected_scalars(tmp_path / "run"))


def test_epoch_scalars_skips_missing_and_non_finite_values():
    record = {"epoch": 4, "train_total": float("nan"), "train_loss": {"a": 1.5, "b": None},
              "weights": {"a": 2.0, "b": 0.5}, "lr": 0.1, "val": None, "images_per_s": None}
    assert epoch_scalars(record) == {"loss/a": 1.5, "loss_weight/a": 2.0, "loss_weight/b": 0.5,
                                     "lr": 0.1}
