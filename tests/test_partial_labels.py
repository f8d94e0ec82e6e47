"""Partial labels: presence masks in batches, union of datasets, hidden labels."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from branchnas.data import ScenesDataset, TaskDataset
from branchnas.data.partial import HiddenLabels, UnionDataset, collate, make_tasks
from branchnas.errors import BranchnasError

RES = 16


@pytest.fixture(scope="module")
def seg_set():
    return ScenesDataset("val", size=3, resolution=RES, cache_dir=False,
                         tasks=["semseg", "scene", "attr_has_red"])


@pytest.fixture(scope="module")
def depth_set():
    return ScenesDataset("test", size=4, resolution=RES, cache_dir=False,
                         tasks=["depth", "normals", "scene"])


class _Tiny(TaskDataset):
    """Two constant items labelling one task as the test says."""

    def __init__(self, catalogue, res=RES):
        super().__init__(catalogue, None, dataset="tiny")
        self.res = res

    def __len__(self):
        return 2

    def __getitem__(self, i):
        labels = {}
        for name, spec in self.tasks.items():
            if spec["type"] == "segmentation":
                labels[name] = torch.full((self.res, self.res), i, dtype=torch.int64)
            else:
                labels[name] = torch.full((1, self.res, self.res), float(i + 1))
        return self.make_item(torch.zeros(3, self.res, self.res), labels)


def test_collate_stacks_and_marks_presence(seg_set):
    batch = collate([seg_set[0], seg_set[1], seg_set[2]])
    assert batch["image"].shape == (3, 3, RES, RES)
    assert batch["labels"]["semseg"].shape == (3, RES, RES)
    assert batch["labels"]["semseg"].dtype == torch.int64
    assert batch["labels"]["scene"].shape == (3,) and batch["labels"]["scene"].dtype == torch.int64
    assert batch["labels"]["attr_has_red"].shape == (3,)
    for name in seg_set.tasks:
        assert batch["present"][name].dtype == torch.bool
        assert batch["present"][name].tolist() == [True] * 3


def test_union_fills_missing_labels(seg_set, depth_set):
    union = UnionDataset([seg_set, depth_set])
    assert len(union) == 7
    assert list(union.tasks) == ["semseg", "scene", "attr_has_red", "depth", "normals"]
    assert union.locate(2) == (0, 2) and union.locate(3) == (1, 0) and union.locate(-1) == (1, 3)
    a, b = union[1], union[4]
    assert set(a["labels"]) == set(b["labels"]) == set(union.tasks)
    assert a["present"] == {"semseg": True, "scene": True, "attr_has_red": True,
                            "depth": False, "normals": False}
    assert b["present"] == {"semseg": False, "scene": True, "attr_has_red": False,
                            "depth": True, "normals": True}
    # missing labels carry each type's invalid marker
    assert torch.isnan(a["labels"]["depth"]).all() and a["labels"]["depth"].shape == (1, RES, RES)
    assert torch.isnan(a["labels"]["normals"]).all()
    assert (b["labels"]["semseg"] == 255).all() and b["labels"]["semseg"].dtype == torch.int64
    assert math.isnan(float(b["labels"]["attr_has_red"]))
    # present labels are untouched
    assert torch.equal(a["labels"]["semseg"], seg_set[1]["labels"]["semseg"])
    assert torch.equal(b["labels"]["depth"], depth_set[1]["labels"]["depth"])
    with pytest.raises(IndexError):
        union[7]


def test_union_batches_through_a_dataloader(seg_set, depth_set):
    union = UnionDataset([seg_set, depth_set])
    loader = DataLoader(union, batch_size=7, shuffle=False, collate_fn=union.collate)
    batch = next(iter(loader))
    assert batch["present"]["semseg"].tolist() == [True] * 3 + [False] * 4
    assert batch["present"]["depth"].tolist() == [False] * 3 + [True] * 4
    assert batch["present"]["scene"].all()
    assert batch["labels"]["normals"].shape == (7, 3, RES, RES)


def test_losses_skip_absent_samples(seg_set, depth_set):
    """A batch with missing labels gives the loss of its labelled samples only."""
    union = UnionDataset([seg_set, depth_set])
    batch = union.collate([union[i] for i in range(7)])
    tasks = make_tasks(union.tasks)
    torch.manual_seed(0)
    pred = torch.randn(7, 1, RES, RES)
    full = tasks["depth"].loss(pred, batch["labels"]["depth"], batch["present"]["depth"])
    only = tasks["depth"].loss(pred[3:], batch["labels"]["depth"][3:],
                               batch["present"]["depth"][3:])
    assert torch.isfinite(full) and torch.allclose(full, only)
    logits = torch.randn(7, 6, RES, RES)
    full = tasks["semseg"].loss(logits, batch["labels"]["semseg"], batch["present"]["semseg"])
    only = tasks["semseg"].loss(logits[:3], batch["labels"]["semseg"][:3],
                                batch["present"]["semseg"][:3])
    assert torch.allclose(full, only)


def test_union_rejects_conflicting_definitions():
    a = _Tiny({"seg": {"type": "segmentation", "num_classes": 3}})
    b = _Tiny({"seg": {"type": "segmentation", "num_classes": 5}})
    with pytest.raises(BranchnasError, match="seg"):
        UnionDataset([a, b])
    with pytest.raises(BranchnasError, match="at least one"):
        UnionDataset([])
    with pytest.raises(BranchnasError, match="catalogue"):
        UnionDataset([[1, 2, 3]])


def test_collate_errors_and_filling():
    seg = _Tiny({"seg": {"type": "segmentation", "num_classes": 3}})
    dep = _Tiny({"depth": {"type": "depth"}})
    with pytest.raises(BranchnasError, match="no items"):
        collate([])
    with pytest.raises(BranchnasError, match="no label for task"):
        collate([seg[0], dep[1]])
    batch = collate([seg[0], dep[1]], tasks={**seg.tasks, **dep.tasks})
    assert batch["present"]["seg"].tolist() == [True, False]
    assert batch["present"]["depth"].tolist() == [False, True]
    assert (batch["labels"]["seg"][1] == 255).all() and (batch["labels"]["seg"][0] == 0).all()
    assert torch.isnan(batch["labels"]["depth"][0]).all()
    assert (batch["labels"]["depth"][1] == 2.0).all()
    big = _Tiny({"seg": {"type": "segmentation", "num_classes": 3}}, res=RES * 2)
    with pytest.raises(BranchnasError, match="same resolution"):
        collate([seg[0], big[0]])


def test_hidden_labels_are_deterministic_fractions(seg_set):
    ds = ScenesDataset("val", size=20, resolution=12, cache_dir=False,
                       tasks=["depth", "semseg", "scene"])
    hidden = HiddenLabels(ds, {"depth": 0.25, "scene": 1.0}, seed=3)
    again = HiddenLabels(ds, {"depth": 0.25, "scene": 1.0}, seed=3)
    other = HiddenLabels(ds, {"depth": 0.25, "scene": 1.0}, seed=4)
    assert hidden.tasks == ds.tasks and len(hidden) == 20
    flags = [hidden[i]["present"]["depth"] for i in range(20)]
    assert flags.count(False) == 5
    assert flags == [again[i]["present"]["depth"] for i in range(20)]
    assert flags != [other[i]["present"]["depth"] for i in range(20)]
    for i in range(20):
        it = hidden[i]
        assert it["present"]["semseg"] and not it["present"]["scene"]
        assert int(it["labels"]["scene"]) == -1
        assert hidden.is_hidden("depth", i) == (not it["present"]["depth"])
        if not it["present"]["depth"]:
            assert torch.isnan(it["labels"]["depth"]).all()
        else:
            assert torch.equal(it["labels"]["depth"], ds[i]["labels"]["depth"])
    batch = collate([hidden[i] for i in range(20)])
    assert batch["present"]["depth"].sum() == 15
    with pytest.raises(BranchnasError, match="labels"):
        HiddenLabels(ds, {"normals": 0.5})
    with pytest.raises(BranchnasError, match=r"\[0, 1\]"):
        HiddenLabels(ds, {"depth": 1.5})
