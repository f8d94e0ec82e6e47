"""The trainer: determinism, checkpoint/resume (also after a real kill), run files,
partial labels, evaluation, schedules, config sources, and the async/memory hooks."""

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from branchnas.errors import BranchnasError
from branchnas.tasks import create_task
from branchnas.training import (
    RunDir,
    TrainConfig,
    add_train_arguments,
    evaluate,
    lr_factor,
    overrides_from_args,
    train,
)

HW = 8
TASKS = [create_task("seg", "segmentation", num_classes=3),
         create_task("cls", "classification", num_classes=3)]
NAMES = [t.name for t in TASKS]


class StandIn(nn.Module):
    """A tiny multi-task CNN with BatchNorm and dropout (so RNG and buffers matter)."""

    def __init__(self, seed=0, regularised=True):
        super().__init__()
        torch.manual_seed(seed)
        extra = [nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.1)] if regularised else [nn.ReLU()]
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *extra)
        self.heads = nn.ModuleDict({
            "seg": nn.Conv2d(8, 3, 1),
            "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Dropout(0.2 if regularised else 0.0), nn.Linear(8, 3)),
        })

    def forward(self, image, tasks=None):
        h = self.trunk(image)
        return {t: self.heads[t](h) for t in (tasks or NAMES)}

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def task_parameters(self, task):
        return list(self.heads[task].parameters())


def make_data(n, seed, cls_present=lambda i: i % 3 != 0):
    """Items as in docs/internals.md: seg = argmax channel per pixel, cls = argmax mean channel."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        image = torch.rand(3, HW, HW, generator=g)
        has_cls = bool(cls_present(i))
        items.append({
            "image": image,
            "labels": {"seg": image.argmax(0),
                       "cls": image.mean((1, 2)).argmax() if has_cls else torch.tensor(-1)},
            "present": {"seg": True, "cls": has_cls},
        })
    return items


def collate(items):
    return {
        "image": torch.stack([it["image"] for it in items]),
        "labels": {t: torch.stack([it["labels"][t] for it in items]) for t in NAMES},
        "present": {t: torch.tensor([it["present"][t] for it in items]) for t in NAMES},
    }


def config(**kw):
    base = dict(epochs=3, batch_size=8, lr=0.01, progress=False, eval_batch_size=16)
    base.update(kw)
    return TrainConfig(**base)


def run_train(model, run_dir, cfg, train_set=None, val_set=None, **kw):
    return train(model, TASKS, train_set if train_set is not None else make_data(28, 1),
                 val_set if val_set is not None else make_data(12, 2), cfg, run_dir,
                 device="cpu", collate_fn=collate, command=["test"], **kw)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def without_speed(result):
    """The result without its wall-clock figures (everything else must match bit for bit)."""
    return {k: v for k, v in result.items() if k not in ("images_per_s", "seconds")}


class Stop(KeyboardInterrupt):
    pass


def stop_after(epoch):
    def callback(record):
        if record["epoch"] == epoch:
            raise Stop()
    return callback


@pytest.mark.parametrize("kw", [
    dict(optimizer="adam", schedule="poly", weighting="dwa"),
    dict(optimizer="sgd", schedule="step", step_size=1, gamma=0.5, weighting="uncertainty"),
])
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, kw):
    cfg = config(**kw)
    full = StandIn()
    r_full = run_train(full, tmp_path / "full", cfg)

    part = StandIn()
    with pytest.raises(Stop):
        run_train(part, tmp_path / "part", cfg, on_epoch_end=stop_after(1))
    run = RunDir(tmp_path / "part")
    assert not run.is_done() and len(run.read_metrics()) == 1
    resumed = StandIn(seed=123)  # a fresh process builds a differently initialised model
    r_part = run_train(resumed, run, cfg)

    assert_same_state(full, resumed)
    assert without_speed(r_part) == without_speed(r_full)
    strip = lambda rs: [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k}  # noqa
                        for r in rs]
    assert strip(run.read_metrics()) == strip(RunDir(tmp_path / "full").read_metrics())
    assert RunDir(tmp_path / "part").command_path.read_text().splitlines() == ["test", "test"]


def test_cpu_training_is_deterministic(tmp_path):
    a, b = StandIn(), StandIn()
    run_train(a, tmp_path / "a", config(epochs=2))
    run_train(b, tmp_path / "b", config(epochs=2))
    assert_same_state(a, b)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import test_trainer as tt

    class KillMidEpoch2:
        def __init__(self, items, after):
            self.items, self.after, self.calls = items, after, 0
        def __len__(self):
            return len(self.items)
        def __getitem__(self, i):
            self.calls += 1
            if self.calls > self.after:
                os.kill(os.getpid(), signal.SIGKILL)
            return self.items[i]

    train_set = KillMidEpoch2(tt.make_data(28, 1), after=24 + 12)  # 3 steps of 8 per epoch
    tt.run_train(tt.StandIn(), {run!r}, tt.config(weighting="dwa"), train_set=train_set)
""")


def test_killed_process_resumes_to_the_same_result(tmp_path):
    run_dir = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), run=str(run_dir))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = RunDir(run_dir)
    assert not run.is_done()
    assert run.load_checkpoint()["epoch"] == 1

    resumed = StandIn(seed=5)
    result = run_train(resumed, run_dir, config(weighting="dwa"))
    full = StandIn()
    expected = run_train(full, tmp_path / "full", config(weighting="dwa"))
    assert_same_state(full, resumed)
    assert without_speed(result) == without_speed(expected)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]


def test_done_run_is_skipped(tmp_path):
    first = run_train(StandIn(), tmp_path, config(epochs=1))
    untouched = StandIn(seed=9)
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    calls = []
    again = run_train(untouched, tmp_path, config(epochs=1), on_epoch_end=calls.append)
    assert again == first and calls == []
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())


def test_resume_with_another_config_is_refused(tmp_path):
    with pytest.raises(Stop):
        run_train(StandIn(), tmp_path, config(), on_epoch_end=stop_after(1))
    with pytest.raises(BranchnasError, match="lr"):
        run_train(StandIn(), tmp_path, config(lr=0.5))
    # runtime-only settings may change
    run_train(StandIn(), tmp_path, config(eval_batch_size=5, progress=True))
    assert RunDir(tmp_path).is_done()


def test_run_directory_contents_and_metrics(tmp_path):
    cfg = config(epochs=2, schedule="none", weighting="dwa", seed=3)
    result = run_train(StandIn(), tmp_path, cfg, meta={"stage": "test"})
    run = RunDir(tmp_path)
    for name in ("config.json", "command.txt", "environment.json", "seed", "git_revision",
                 "metrics.jsonl", "checkpoints/last.pt", "done"):
        assert (tmp_path / name).is_file(), name
    stored = json.loads(run.config_path.read_text())
    assert stored["lr"] == 0.01 and stored["tasks"] == NAMES and stored["stage"] == "test"
    assert stored["parameters"] == sum(p.numel() for p in StandIn().parameters())
    assert run.seed_path.read_text().strip() == "3"
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert set(r["train_loss"]) == set(NAMES) and r["lr"] == 0.01
        assert r["images"] == 24 and r["images_per_s"] > 0
        assert set(r["val"]) == set(NAMES) and 0 <= r["val"]["cls"]["top1"] <= 100
        assert r["weights"] == {"seg": 1.0, "cls": 1.0}  # DWA: equal for two epochs
    assert result["seg"] == records[-1]["val"]["seg"]
    assert result["epochs"] == 2 and result["images_per_s"] > 0
    assert json.loads((tmp_path / "done").read_text()) == result
    ckpt = run.load_checkpoint()
    assert ckpt["epoch"] == 2 and {"model", "optimizer", "weighting", "rng"} <= set(ckpt)


def test_training_learns(tmp_path):
    data = make_data(64, 1)
    run_train(StandIn(), tmp_path, config(epochs=5, lr=0.03, batch_size=16), train_set=data)
    losses = [r["train_total"] for r in RunDir(tmp_path).read_metrics()]
    assert losses[-1] < 0.8 * losses[0]
    val = RunDir(tmp_path).read_result()
    assert val["seg"]["pixel_acc"] > 50  # percent; chance is 1/3


def test_absent_labels_do_not_train_the_task(tmp_path):
    data = make_data(24, 1, cls_present=lambda i: False)
    model = StandIn()
    head0 = [p.detach().clone() for p in model.task_parameters("cls")]
    trunk0 = [p.detach().clone() for p in model.shared_parameters()]
    cfg = config(epochs=2, optimizer="sgd", weight_decay=0.0, weighting="uncertainty")
    run_train(model, tmp_path, cfg, train_set=data)
    assert all(torch.equal(a, b) for a, b in zip(head0, model.task_parameters("cls")))
    assert not all(torch.equal(a, b) for a, b in zip(trunk0, model.shared_parameters()))
    rec = RunDir(tmp_path).read_metrics()[-1]
    assert rec["train_loss"]["cls"] is None and rec["train_loss"]["seg"] > 0
    assert rec["weights"]["cls"] == 1.0  # s_cls never moved


def test_partial_label_loss_mean_counts_labelled_samples_only(tmp_path):
    """The epoch's mean loss of a task averages over its labelled samples, not over batches."""
    data = make_data(12, 1, cls_present=lambda i: i in (0, 3, 4, 7, 11))  # 5 of 12, 3 batches
    model = StandIn(regularised=False)  # per-sample outputs independent of the batch
    with torch.no_grad():
        batch = collate(data)
        keep = batch["present"]["cls"]
        pred = model(batch["image"])["cls"]
        expected = TASKS[1].loss(pred[keep], batch["labels"]["cls"][keep])
    cfg = config(epochs=1, batch_size=4, optimizer="sgd", lr=1e-12, weight_decay=0.0,
                 schedule="none", patience=0)  # every item trains: no held-out slice
    run_train(model, tmp_path, cfg, train_set=data)
    rec = RunDir(tmp_path).read_metrics()[0]
    assert rec["train_loss"]["cls"] == pytest.approx(float(expected), rel=1e-5)


def test_evaluate_matches_a_manual_count():
    model = StandIn().eval()
    val = make_data(10, 4)
    metrics = evaluate(model, TASKS, val, "cpu", batch_size=3, collate_fn=collate)
    batch = collate(val)
    with torch.no_grad():
        pred = model(batch["image"])["cls"].argmax(1)
    keep = batch["present"]["cls"]
    top1 = (pred[keep] == batch["labels"]["cls"][keep]).float().mean().item()
    assert metrics["cls"]["top1"] == pytest.approx(100 * top1)  # percent
    assert set(metrics["seg"]) == {"miou", "pixel_acc"}
    assert not model.training


def test_lr_schedules():
    step = TrainConfig(schedule="step", step_size=2, gamma=0.5, epochs=6)
    assert [lr_factor(step, e, 0, 10) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    poly = TrainConfig(schedule="poly", poly_power=2.0, epochs=2)
    assert lr_factor(poly, 0, 0, 10) == 1.0
    assert lr_factor(poly, 1, 0, 10) == pytest.approx(0.25)
    assert lr_factor(poly, 1, 5, 10) == pytest.approx(0.0625)
    assert lr_factor(TrainConfig(schedule="none"), 5, 3, 10) == 1.0


def test_config_from_sources_and_command_line():
    cfg = TrainConfig.from_sources({"optimizer": "sgd", "lr": 1, "epochs": 4},
                                   {"lr": 0.05, "epochs": None})
    assert (cfg.optimizer, cfg.lr, cfg.epochs) == ("sgd", 0.05, 4)
    assert isinstance(cfg.lr, float)
    with pytest.raises(BranchnasError, match="'learning_rate'"):
        TrainConfig.from_sources({"learning_rate": 0.1}, {})
    with pytest.raises(BranchnasError, match="'epochs'"):
        TrainConfig.from_sources({"epochs": "many"}, {})
    with pytest.raises(BranchnasError, match="optimizer"):
        TrainConfig.from_sources({}, {"optimizer": "rmsprop"})
    with pytest.raises(BranchnasError, match="weighting"):
        TrainConfig(weighting="gradnorm")
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--lr", "0.2", "--async-updates", "true", "--schedule", "step",
                              "--task-batch-size-for", "seg=10", "--max-train-batches", "3"])
    over = overrides_from_args(args)
    assert over == {"lr": 0.2, "async_updates": True, "schedule": "step",
                    "task_batch_sizes": {"seg": 10}, "max_train_batches": 3}
    cfg = TrainConfig.from_sources({"lr": 0.1, "batch_size": 4}, over)
    assert cfg.effective_batch_sizes(["seg", "cls"]) == {"shared": 4, "seg": 10, "cls": 4}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_async_trainer_equals_plain_when_every_label_is_present(tmp_path):
    data = make_data(24, 1, cls_present=lambda i: True)
    kw = dict(epochs=2, optimizer="sgd", weighting="dwa")
    plain, asyn = StandIn(), StandIn()
    run_train(plain, tmp_path / "p", config(**kw), train_set=data)
    run_train(asyn, tmp_path / "a", config(async_updates=True, **kw), train_set=data)
    for (k, p), q in zip(plain.state_dict().items(), asyn.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-5), k


def test_async_trainer_holds_rare_task_until_its_batch_size(tmp_path):
    data = make_data(24, 1, cls_present=lambda i: i % 4 == 0)  # 6 of 24 labelled
    model = StandIn()
    head0 = [p.detach().clone() for p in model.task_parameters("cls")]
    cfg = config(epochs=1, optimizer="sgd", weight_decay=0.0, async_updates=True,
                 task_batch_sizes={"cls": 100}, patience=0)  # counts every item: none held out
    run_train(model, tmp_path, cfg, train_set=data)
    assert all(torch.equal(a, b) for a, b in zip(head0, model.task_parameters("cls")))
    ckpt = RunDir(tmp_path).load_checkpoint()
    assert ckpt["updater"]["counts"]["cls"] == sum(d["present"]["cls"] for d in data)
    assert ckpt["updater"]["updates"]["seg"] == 3


def test_memory_bounded_hook(tmp_path, monkeypatch):
    """With memory_bounded, the trainer's backward is training.memory's function."""
    import branchnas.training.memory as memory

    calls = []

    def fake(model, batch, tasks, weighting):
        calls.append(len(tasks))
        preds = model(batch["image"], tasks=[t.name for t in tasks])
        losses = {t.name: t.loss(preds[t.name], batch["labels"][t.name], batch["present"][t.name])
                  for t in tasks}
        weighting.combine(losses).backward()
        return {t: loss.detach() for t, loss in losses.items()}

    monkeypatch.setattr(memory, "memory_bounded_backward", fake)
    ordinary, bounded = StandIn(), StandIn()
    run_train(ordinary, tmp_path / "o", config(epochs=1, weighting="uncertainty"))
    run_train(bounded, tmp_path / "m", config(epochs=1, weighting="uncertainty",
                                               memory_bounded=True))
    assert calls == [2, 2, 2]
    assert_same_state(ordinary, bounded)


def test_model_param_groups_are_honoured(tmp_path):
    class WithGroups(StandIn):
        def param_groups(self, base_lr):
            head = list(self.heads.parameters())
            return [{"params": list(self.trunk.parameters()), "lr": base_lr},
                    {"params": head, "lr": base_lr * 100}]

    run_train(WithGroups(), tmp_path, config(epochs=1, schedule="none"))
    groups = RunDir(tmp_path).load_checkpoint()["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [pytest.approx(0.01), pytest.approx(1.0)]


def test_bad_inputs(tmp_path):
    with pytest.raises(BranchnasError, match="no labels for task"):
        train(StandIn(), TASKS + [create_task("depth", "depth")], make_data(8, 1),
              make_data(4, 2), config(epochs=1), tmp_path / "x", "cpu", collate_fn=collate)

    class NoGroups(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = StandIn()

        def forward(self, image, tasks=None):
            return self.inner(image, tasks)

    with pytest.raises(BranchnasError, match="shared_parameters"):
        run_train(NoGroups(), tmp_path / "y", config(epochs=1, async_updates=True))
    with pytest.raises(BranchnasError, match="duplicate"):
        train(StandIn(), TASKS + TASKS, make_data(8, 1), make_data(4, 2), config(epochs=1),
              tmp_path / "z", "cpu", collate_fn=collate)


# ------------------------------------------------------------------ train_single (real modules)

TINY_SPACE = """
[backbone]
name = "smallcnn"

[input]
size = [16, 16]

[dataset]
name = "scenes"
size = 16
resolution = [16, 16]
cache_dir = false

[[tasks]]
name = "depth"
type = "depth"

[[tasks]]
name = "scene"
type = "classification"
params = { num_classes = 8 }

[training]
epochs = 2
batch_size = 8
progress = false
"""

KILL_SINGLE = textwrap.dedent("""
    import os, signal, sys
    from branchnas.training import RunDir, train_single

    saved = RunDir.save_checkpoint
    def save_then_die(self, state):
        saved(self, state)
        if self.path.name == "scene":  # the second task, after its first epoch
            os.kill(os.getpid(), signal.SIGKILL)
    RunDir.save_checkpoint = save_then_die
    train_single({space!r}, None, {out!r})
""")


def test_train_single_skips_done_and_resumes_after_a_kill(tmp_path):
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    out = tmp_path / "out"
    script = KILL_SINGLE.format(space=str(space), out=str(out))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert RunDir(out / "single" / "depth").is_done()
    assert not RunDir(out / "single" / "scene").is_done()
    assert RunDir(out / "single" / "scene").load_checkpoint()["epoch"] == 1

    from branchnas.training import load_single_task_model, train_single

    results = train_single(str(space), None, out)  # depth skipped, scene resumed
    clean = train_single(str(space), None, tmp_path / "clean")
    assert set(results) == {"depth", "scene"}
    assert set(results["scene"]["scene"]) == {"top1", "top5"}
    assert set(results["depth"]["depth"]) == {"abs_err", "rel_err"}
    for task in ("depth", "scene"):
        assert without_speed(results[task]) == without_speed(clean[task])
        a = load_single_task_model(str(space), task, out)
        b = load_single_task_model(str(space), task, tmp_path / "clean")
        assert_same_state(a, b)
        stored = json.loads((out / "single" / task / "config.json").read_text())
        assert stored["task"] == task and stored["stage"] == "single" and stored["tasks"] == [task]
        assert stored["epochs"] == 2  # from the space's [training] table
    assert len((out / "single" / "scene" / "command.txt").read_text().splitlines()) == 2
    with pytest.raises(BranchnasError, match="no task"):
        train_single(str(space), ["semseg"], out)


def test_memory_bounded_with_the_real_module_matches_ordinary_backprop(tmp_path):
    from branchnas.data import collate as real_collate
    from branchnas.data import create_dataset
    from branchnas.models import BranchedNet
    from branchnas.spaces import load_space
    from branchnas.tree import Tree

    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPACE)
    space = load_space(str(path))
    tree = Tree(space.task_names, [[space.task_names]] * 2 + [[["depth"], ["scene"]]] * 2)
    data = {s: create_dataset("scenes", split=s, size=16, resolution=16, cache_dir=False,
                              tasks=space.task_names) for s in ("train", "val")}
    nets = []
    for bounded in (False, True):
        torch.manual_seed(0)
        net = BranchedNet(tree, space)
        cfg = TrainConfig(epochs=1, batch_size=8, progress=False, weighting="uncertainty",
                          memory_bounded=bounded)
        train(net, space.tasks, data["train"], data["val"], cfg, tmp_path / str(bounded), "cpu",
              collate_fn=real_collate)
        nets.append(net)
    for (k, p), q in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-5), k
