"""Task types: losses and metrics against hand-computed values, masking, registry contract."""

import math

import numpy as np
import pytest
import torch

from branchnas.errors import BranchnasError
from branchnas.tasks import (
    Task,
    create_task,
    get_task_type,
    list_task_types,
    metric_directions,
    register_task_type,
)

LN2, LN3 = math.log(2.0), math.log(3.0)
NAN = float("nan")


def logit(p):
    return math.log(p / (1.0 - p))


def one_hot_logits(labels, num_classes):
    """(B,H,W) labels -> (B,C,H,W) logits whose argmax is the label."""
    t = torch.as_tensor(labels)
    return torch.nn.functional.one_hot(t, num_classes).permute(0, 3, 1, 2).float() * 5.0


def vec_field(vectors):
    """list of B lists of W 3-vectors -> (B, 3, 1, W)."""
    return torch.tensor(vectors, dtype=torch.float32).permute(0, 2, 1).unsqueeze(2)


def direction(deg):
    """Unit vector at ``deg`` degrees from +z, in the x-z plane."""
    r = math.radians(deg)
    return [math.sin(r), 0.0, math.cos(r)]


# ------------------------------------------------------------------------- registry
def test_registry_lists_the_required_types():
    assert set(list_task_types()) >= {
        "segmentation", "depth", "normals", "edges", "instance", "keypoints",
        "classification", "binary",
    }
    assert get_task_type("depth").type == "depth"


def test_create_task_attributes():
    seg = create_task("seg", "segmentation", num_classes=19)
    assert (seg.name, seg.type, seg.dense, seg.out_channels) == ("seg", "segmentation", True, 19)
    assert seg.params == {"num_classes": 19, "ignore_index": 255}
    assert seg.metrics == {"miou": True, "pixel_acc": True}
    assert seg.default_head == "fcn"
    cls = create_task("scene", "classification", num_classes=10)
    assert (cls.dense, cls.out_channels, cls.default_head) == (False, 10, "mlp")
    assert cls.metrics == {"top1": True, "top5": True}
    normals = create_task("n", "normals")
    assert normals.metrics == {"mean": False, "median": False, "within_11.25": True,
                               "within_22.5": True, "within_30": True}
    assert create_task("d", "depth").metrics == {"abs_err": False, "rel_err": False}
    assert create_task("i", "instance").out_channels == 2
    assert create_task("a", "binary").metrics == {"accuracy": True}
    # instances do not share the metrics dict
    seg.metrics["extra"] = True
    assert "extra" not in create_task("s2", "segmentation", num_classes=2).metrics


def test_create_task_errors():
    with pytest.raises(BranchnasError, match="unknown task type 'sgmentation'.*segmentation"):
        create_task("s", "sgmentation", num_classes=3)
    with pytest.raises(BranchnasError, match="needs parameter.*num_classes"):
        create_task("s", "segmentation")
    with pytest.raises(BranchnasError, match="unknown parameter.*classes.*num_classes"):
        create_task("s", "segmentation", num_classes=3, classes=3)
    with pytest.raises(BranchnasError, match="num_classes must be an integer >= 2"):
        create_task("s", "segmentation", num_classes=1)
    with pytest.raises(BranchnasError, match="ignore_index"):
        create_task("s", "segmentation", num_classes=3, ignore_index=2)
    with pytest.raises(BranchnasError, match="task name"):
        create_task("", "depth")
    with pytest.raises(BranchnasError, match="distance"):
        create_task("n", "normals", distance="l2")
    with pytest.raises(BranchnasError, match="pos_weight"):
        create_task("e", "edges", pos_weight=1.5)


@pytest.mark.parametrize("type_name", list_task_types())
def test_every_type_declares_a_primary_measure(type_name):
    cls = get_task_type(type_name)
    assert cls.primary_metric in cls.metric_directions
    from branchnas.tasks.base import _TASK_TYPES

    assert _TASK_TYPES.meta(type_name)["primary"] == cls.primary_metric


def test_primary_measures_are_the_papers():
    expected = {"segmentation": "miou", "depth": "abs_err", "normals": "mean",
                "classification": "top1", "instance": "offset_err", "keypoints": "abs_err",
                "edges": "odsf", "binary": "accuracy"}
    for type_name, metric in expected.items():
        assert get_task_type(type_name).primary_metric == metric


def test_primary_override_and_its_errors():
    params = {"classification": {"num_classes": 8}, "segmentation": {"num_classes": 3}}
    assert create_task("c", "classification", primary="top5", **params["classification"]).primary == "top5"
    assert create_task("c", "classification", **params["classification"]).primary == "top1"
    with pytest.raises(BranchnasError, match="primary measure 'top3' is not one of its metrics.*top1, top5"):
        create_task("c", "classification", primary="top3", **params["classification"])

    class NoPrimary(Task):
        metric_directions = {"x": True}

    with pytest.raises(BranchnasError, match="must declare primary_metric"):
        register_task_type("no_primary_xyz")(NoPrimary)
    assert "no_primary_xyz" not in list_task_types()


def test_space_file_overrides_the_primary_measure():
    from branchnas.spaces import SearchSpace, load_space

    d = load_space("scenes").to_dict()
    assert all("primary" not in t for t in d["tasks"])  # the types' own are not written out
    for t in d["tasks"]:
        if t["name"] == "scene":
            t["primary"] = "top5"
    space = SearchSpace.from_dict(d, name="scenes")
    assert space.task("scene").primary == "top5" and space.task("semseg").primary == "miou"
    again = SearchSpace.from_dict(space.to_dict(), name="scenes")
    assert again.task("scene").primary == "top5"
    assert space.subset(["scene"]).task("scene").primary == "top5"
    for t in d["tasks"]:
        if t["name"] == "scene":
            t["primary"] = "accuracy"
    with pytest.raises(BranchnasError, match="tasks\\[4\\].*primary measure 'accuracy'"):
        SearchSpace.from_dict(d, name="scenes")
    assert load_space("taskonomy-resnet50").task("scene").primary == "top5"  # its Table 2


def test_register_duplicate_and_non_task():
    with pytest.raises(BranchnasError, match="already registered"):
        register_task_type("depth")(get_task_type("keypoints"))
    with pytest.raises(BranchnasError, match="subclass"):
        register_task_type("not_a_task_xyz")(dict)
    assert "not_a_task_xyz" not in list_task_types()


def test_metric_directions_merges_and_detects_conflicts():
    tasks = [create_task("d", "depth"), create_task("k", "keypoints"),
             create_task("s", "segmentation", num_classes=3)]
    assert metric_directions(tasks) == {"abs_err": False, "rel_err": False,
                                        "miou": True, "pixel_acc": True}

    class Flipped(Task):
        metric_directions = {"abs_err": True}

    with pytest.raises(BranchnasError, match="abs_err"):
        metric_directions([tasks[0], Flipped("f")])


# --------------------------------------------------------------------- segmentation
def test_segmentation_loss_ignore_and_present():
    task = create_task("seg", "segmentation", num_classes=2)
    # pixel 0: logits (0, 0), label 0 -> ln 2; pixel 1: logits (ln3, 0), label 1 -> ln 4;
    # pixel 2: ignored
    pred = torch.tensor([[[[0.0, LN3, 9.0]], [[0.0, 0.0, -9.0]]]], requires_grad=True)
    target = torch.tensor([[[0, 1, 255]]])
    loss = task.loss(pred, target, torch.tensor([True]))
    assert loss.item() == pytest.approx(1.5 * LN2, abs=1e-6)
    loss.backward()
    assert pred.grad[0, :, 0, 2].abs().sum() == 0  # ignored pixel gets no gradient
    # a second, absent sample with arbitrary (even out-of-range) labels changes nothing
    pred2 = torch.cat([pred.detach(), torch.randn(1, 2, 1, 3)])
    target2 = torch.cat([target, torch.tensor([[[1, 7, 0]]])])
    present = torch.tensor([True, False])
    assert task.loss(pred2, target2, present).item() == pytest.approx(1.5 * LN2, abs=1e-6)
    per_sample = task.loss(pred2, target2, present, reduction="none")
    assert per_sample.shape == (2,)
    assert per_sample[0].item() == pytest.approx(1.5 * LN2, abs=1e-6)
    assert math.isnan(per_sample[1].item())


def test_segmentation_meter_confusion_matrix_across_batches():
    task = create_task("seg", "segmentation", num_classes=4)  # class 3 never appears
    meter = task.meter()
    # batch A (gt, pred): (0,0) (1,0) (1,1), one ignored pixel
    meter.update(one_hot_logits([[[0, 0, 1, 2]]], 4), torch.tensor([[[0, 1, 1, 255]]]))
    # batch B: (2,2) (0,2) (2,0), plus an absent sample that must not count
    pred_b = one_hot_logits([[[2, 2, 0]], [[1, 1, 1]]], 4)
    meter.update(pred_b, torch.tensor([[[2, 0, 2]], [[1, 1, 1]]]), torch.tensor([True, False]))
    out = meter.compute()
    # IoU0 = 1/(2+3-1), IoU1 = 1/(2+1-1), IoU2 = 1/(2+2-1); class 3 excluded
    assert out["miou"] == pytest.approx(100 * (1 / 4 + 1 / 2 + 1 / 3) / 3)
    assert out["pixel_acc"] == pytest.approx(50.0)
    # the mean of per-batch mIoUs would be (1/2 + 1/6) / 2 = 1/3, not 13/36
    assert out["miou"] != pytest.approx(100 / 3)
    meter.reset()
    assert math.isnan(meter.compute()["miou"])


def test_segmentation_rejects_bad_labels_and_shapes():
    task = create_task("seg", "segmentation", num_classes=3)
    with pytest.raises(BranchnasError, match="class id 5 outside"):
        task.loss(torch.zeros(1, 3, 1, 2), torch.tensor([[[0, 5]]]))
    with pytest.raises(BranchnasError, match=r"\(B, 3, H, W\)"):
        task.loss(torch.zeros(1, 4, 1, 2), torch.tensor([[[0, 1]]]))
    with pytest.raises(BranchnasError, match="int64"):
        task.loss(torch.zeros(1, 3, 1, 2), torch.tensor([[[0.0, 1.0]]]))
    with pytest.raises(BranchnasError, match="present"):
        task.loss(torch.zeros(2, 3, 1, 2), torch.zeros(2, 1, 2, dtype=torch.long),
                  torch.tensor([True]))
    with pytest.raises(BranchnasError, match="reduction"):
        task.loss(torch.zeros(1, 3, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long),
                  reduction="sum")


# ---------------------------------------------------------------------------- depth
def test_depth_loss_and_per_sample():
    task = create_task("depth", "depth")
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 7.0, 7.0, 7.0, 7.0]).view(2, 1, 1, 4)
    target = torch.tensor([2.0, NAN, 1.0, 0.0, NAN, NAN, NAN, NAN]).view(2, 1, 1, 4)
    # valid: |1-2| = 1, |3-1| = 2; NaN and 0 are "no measurement"
    assert task.loss(pred, target).item() == pytest.approx(1.5)
    per_sample = task.loss(pred, target, reduction="none")
    assert per_sample[0].item() == pytest.approx(1.5) and math.isnan(per_sample[1].item())


def test_depth_meter_exact_over_dataset():
    task = create_task("depth", "depth")
    meter = task.meter()
    meter.update(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4),
                 torch.tensor([2.0, NAN, 1.0, 0.0]).view(1, 1, 1, 4))
    meter.update(torch.tensor([5.0, 9.0]).view(2, 1, 1, 1),
                 torch.tensor([4.0, 1.0]).view(2, 1, 1, 1), torch.tensor([True, False]))
    out = meter.compute()
    assert out["abs_err"] == pytest.approx((1 + 2 + 1) / 3)
    assert out["rel_err"] == pytest.approx((1 / 2 + 2 / 1 + 1 / 4) / 3)


# -------------------------------------------------------------------------- normals
def test_normals_losses_on_unit_vectors():
    up = [0.0, 0.0, 1.0]
    pred = vec_field([[[0.0, 0.0, 2.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]]])
    target = vec_field([[up, up, up, [NAN, NAN, NAN]]])
    # l1 between unit vectors: 0; 1/sqrt2 + (1 - 1/sqrt2) = 1; 1 + 1 = 2
    assert create_task("n", "normals").loss(pred, target).item() == pytest.approx(1.0, abs=1e-6)
    cosine = create_task("n", "normals", distance="cosine").loss(pred, target)
    assert cosine.item() == pytest.approx((0 + (1 - 1 / math.sqrt(2)) + 1) / 3, abs=1e-6)


def test_normals_meter_angles_across_batches():
    task = create_task("n", "normals")
    meter = task.meter()
    up = direction(0)
    meter.update(vec_field([[direction(10), [0.0, 0.0, 3.0]]]), vec_field([[up, up]]))
    second = [direction(12), direction(20), direction(25), direction(45), [0.0, 1.0, 0.0], up]
    meter.update(vec_field([second]), vec_field([[up] * 5 + [[NAN, NAN, NAN]]]))
    out = meter.compute()
    # angles 10, 0 | 12, 20, 25, 45, 90 (the last pixel is unlabelled)
    assert out["mean"] == pytest.approx(202 / 7, abs=1e-4)
    assert out["median"] == pytest.approx(20.0, abs=1e-4)
    assert out["within_11.25"] == pytest.approx(100 * 2 / 7)
    assert out["within_22.5"] == pytest.approx(100 * 4 / 7)
    assert out["within_30"] == pytest.approx(100 * 5 / 7)


def test_normals_median_even_count_and_histogram_fallback():
    angles = [0.0, 10.0, 20.0, 45.0]  # median of an even count: (10 + 20) / 2
    pred = vec_field([[direction(a) for a in angles]])
    target = vec_field([[direction(0)] * 4])
    exact = create_task("n", "normals").meter()
    exact.update(pred, target)
    assert exact.compute()["median"] == pytest.approx(15.0, abs=1e-4)
    # beyond the limit the angles go into a 0.001 degree histogram
    rng = np.random.default_rng(0)
    degs = rng.uniform(0, 90, size=(3, 50))
    binned = create_task("n", "normals", exact_median_limit=60).meter()
    for row in degs:
        binned.update(vec_field([[direction(a) for a in row]]), vec_field([[direction(0)] * 50]))
    assert binned.histogram is not None and binned.angles == []
    out = binned.compute()
    assert out["median"] == pytest.approx(np.median(degs), abs=1e-3)
    assert out["mean"] == pytest.approx(degs.mean(), abs=1e-4)


# ---------------------------------------------------------------------------- edges
def test_edges_balanced_bce():
    pred = torch.tensor([0.0, 0.0, LN3, 4.0]).view(1, 1, 1, 4)
    target = torch.tensor([1.0, 0.0, 0.0, NAN]).view(1, 1, 1, 4)
    # beta = 2/3 non-edges: (2/3) ln2 + (1/3) ln2 + (1/3) ln4, mean over 3 pixels
    loss = create_task("e", "edges").loss(pred, target)
    assert loss.item() == pytest.approx(5 / 9 * LN2, abs=1e-6)
    fixed = create_task("e", "edges", pos_weight=0.9).loss(pred, target)
    assert fixed.item() == pytest.approx((0.9 * LN2 + 0.1 * LN2 + 0.1 * 2 * LN2) / 3, abs=1e-6)


def test_edges_meter_ods_over_threshold_grid():
    task = create_task("e", "edges", thresholds=3)  # grid 0.25, 0.5, 0.75
    meter = task.meter()
    probs = [0.9, 0.6, 0.3, 0.8, 0.6, 0.1]
    labels = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    logits = torch.tensor([logit(p) for p in probs])
    meter.update(logits[:3].view(1, 1, 1, 3), torch.tensor(labels[:3]).view(1, 1, 1, 3))
    meter.update(logits[3:].view(1, 1, 1, 3), torch.tensor(labels[3:]).view(1, 1, 1, 3))
    out = meter.compute()
    # F = 2TP / (2TP + FP + FN) with counts over both batches:
    # t=0.25: TP3 FP2 FN0 -> 6/8; t=0.5: TP2 FP2 FN1 -> 4/7; t=0.75: TP2 FP0 FN1 -> 4/5
    assert out["odsf"] == pytest.approx(80.0)
    bce = -(math.log(0.9) + math.log(0.4) + math.log(0.3) + math.log(0.8) + math.log(0.4)
            + math.log(0.9)) / 6
    assert out["bce"] == pytest.approx(bce, abs=1e-6)


def test_edges_reject_labels_outside_unit_interval():
    with pytest.raises(BranchnasError, match=r"\[0, 1\]"):
        create_task("e", "edges").loss(torch.zeros(1, 1, 1, 2), torch.tensor([[[[0.0, 2.0]]]]))


# ------------------------------------------------------------- instance, keypoints
def test_instance_offsets_l1():
    task = create_task("i", "instance")
    # (1, 2, 1, 3): channel 0 = dy, channel 1 = dx; the third pixel is not an instance
    pred = torch.tensor([[[1.0, -1.0, 3.0]], [[2.0, 0.5, 3.0]]]).unsqueeze(0)
    target = torch.tensor([[[0.0, 1.0, NAN]], [[0.0, 1.0, NAN]]]).unsqueeze(0)
    # |1-0| + |2-0| = 3; |-1-1| + |0.5-1| = 2.5
    assert task.loss(pred, target).item() == pytest.approx(2.75)
    meter = task.meter()
    meter.update(pred, target)
    meter.update(torch.tensor([[[[0.0]], [[0.0]]]]), torch.tensor([[[[1.0]], [[-0.5]]]]))
    assert meter.compute()["offset_err"] == pytest.approx((3 + 2.5 + 1.5) / 3)


def test_keypoints_l1():
    task = create_task("k", "keypoints")
    pred = torch.tensor([0.5, 0.2, 0.9]).view(1, 1, 1, 3)
    target = torch.tensor([0.0, NAN, 1.0]).view(1, 1, 1, 3)
    assert task.loss(pred, target).item() == pytest.approx(0.3)
    meter = task.meter()
    meter.update(pred, target)
    assert meter.compute()["abs_err"] == pytest.approx(0.3)


# ------------------------------------------------------------------- image-level
def test_classification_loss_with_missing_labels():
    task = create_task("c", "classification", num_classes=3)
    pred = torch.tensor([[0.0, LN2, 0.0], [0.0, 0.0, 0.0], [9.0, 0.0, 0.0]])
    target = torch.tensor([1, 2, -1])
    # -log(2/4) = ln 2, -log(1/3) = ln 3; third sample unlabelled
    assert task.loss(pred, target).item() == pytest.approx((LN2 + LN3) / 2, abs=1e-6)
    with pytest.raises(BranchnasError, match="class id 3 outside"):
        task.loss(pred, torch.tensor([1, 3, -1]))


def test_classification_topk():
    task = create_task("c", "classification", num_classes=6)
    scores = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0]).repeat(4, 1)
    meter = task.meter()
    meter.update(scores[:2], torch.tensor([0, 2]))  # rank 1 and rank 3
    meter.update(scores[2:], torch.tensor([5, 1]), torch.tensor([True, False]))  # rank 6
    out = meter.compute()
    assert out["top1"] == pytest.approx(100 / 3)
    assert out["top5"] == pytest.approx(200 / 3)
    small = create_task("c3", "classification", num_classes=3).meter()
    small.update(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([2]))  # k = min(5, 3)
    assert small.compute() == {"top1": 0.0, "top5": 100.0}


def test_binary_loss_and_accuracy():
    task = create_task("a", "binary")
    pred = torch.tensor([[0.0], [LN3], [1.0]])
    target = torch.tensor([1.0, 0.0, NAN])
    # -log sigmoid(0) = ln 2; -log(1 - 3/4) = ln 4
    assert task.loss(pred, target).item() == pytest.approx(1.5 * LN2, abs=1e-6)
    meter = task.meter()
    meter.update(torch.tensor([[2.0], [-1.0]]), torch.tensor([1.0, 0.0]))
    meter.update(torch.tensor([[0.5], [3.0]]), torch.tensor([0.0, 1.0]),
                 torch.tensor([True, False]))
    assert meter.compute()["accuracy"] == pytest.approx(200 / 3)


# ------------------------------------------------------------ contract, every type
REQUIRED_PARAMS = {"segmentation": {"num_classes": 3}, "classification": {"num_classes": 6}}
B, H, W = 3, 4, 5


def labelled_target(task, gen):
    """A fully labelled random target of the right format."""
    kind = task.type
    if kind == "segmentation":
        return torch.randint(0, task.out_channels, (B, H, W), generator=gen)
    if kind == "classification":
        return torch.randint(0, task.out_channels, (B,), generator=gen)
    if kind == "binary":
        return torch.randint(0, 2, (B,), generator=gen).float()
    if kind == "edges":
        return torch.randint(0, 2, (B, 1, H, W), generator=gen).float()
    if kind == "depth":
        return torch.rand(B, 1, H, W, generator=gen) + 0.5
    if kind == "normals":
        return torch.nn.functional.normalize(torch.randn(B, 3, H, W, generator=gen), dim=1)
    return torch.randn(B, task.out_channels, H, W, generator=gen)


def pred_for(task, gen):
    shape = (B, task.out_channels, H, W) if task.dense else (B, task.out_channels)
    return torch.randn(*shape, generator=gen).requires_grad_(True)


def test_every_registered_type_has_a_target_recipe():
    known = {"segmentation", "classification", "binary", "edges", "depth", "normals",
             "instance", "keypoints"}
    assert set(list_task_types()) <= known, "add the new task type to labelled_target()"


@pytest.mark.parametrize("kind", list_task_types())
def test_contract(kind):
    gen = torch.Generator().manual_seed(0)
    task = create_task("t", kind, **REQUIRED_PARAMS.get(kind, {}))
    assert set(task.metrics) and all(isinstance(v, bool) for v in task.metrics.values())
    assert task.default_head == ("fcn" if task.dense else "mlp")
    pred, target = pred_for(task, gen), labelled_target(task, gen)
    loss = task.loss(pred, target, torch.ones(B, dtype=torch.bool))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    per_sample = task.loss(pred, target, torch.tensor([True, False, True]), reduction="none")
    assert per_sample.shape == (B,)
    assert torch.isfinite(per_sample[[0, 2]]).all() and math.isnan(per_sample[1].item())
    # "mean" pools the valid elements of present samples: with all elements valid and
    # equal counts per sample, it is the mean of the per-sample values
    all_present = task.loss(pred, target, reduction="none")
    if kind != "edges":  # edges weight by the batch's edge fraction
        assert task.loss(pred, target).item() == pytest.approx(all_present.mean().item(), rel=1e-5)

    # empty targets: nothing valid, loss an exact zero still on the graph, meter NaN
    empty = task.empty_target((B, 3, H, W))
    assert empty.shape == target.shape and empty.dtype == target.dtype
    single = task.empty_target(torch.zeros(3, H, W))
    assert single.shape == target.shape[1:]
    assert not task.valid_mask(empty).any()
    pred2 = pred_for(task, gen)
    zero = task.loss(pred2, empty)
    assert zero.item() == 0.0 and zero.grad_fn is not None
    zero.backward()
    assert pred2.grad is not None and pred2.grad.abs().sum() == 0
    assert torch.isnan(task.loss(pred2, empty, reduction="none")).all()
    absent = task.loss(pred2, target, torch.zeros(B, dtype=torch.bool))
    assert absent.item() == 0.0 and absent.grad_fn is not None

    meter = task.meter()
    meter.update(pred, empty)
    assert all(math.isnan(v) for v in meter.compute().values())
    meter.update(pred, target)
    out = meter.compute()
    assert set(out) == set(task.metrics) and all(math.isfinite(v) for v in out.values())


@pytest.mark.parametrize("kind", list_task_types())
def test_meter_batches_equal_one_shot(kind):
    gen = torch.Generator().manual_seed(1)
    task = create_task("t", kind, **REQUIRED_PARAMS.get(kind, {}))
    pred, target = pred_for(task, gen).detach(), labelled_target(task, gen)
    present = torch.tensor([True, False, True])
    whole = task.meter()
    whole.update(pred, target, present)
    parts = task.meter()
    for i in range(B):
        parts.update(pred[i:i + 1], target[i:i + 1], present[i:i + 1])
    a, b = whole.compute(), parts.compute()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-9)


def test_empty_target_markers():
    seg = create_task("s", "segmentation", num_classes=3, ignore_index=250)
    assert seg.empty_target((4, 5)).unique().tolist() == [250]
    assert create_task("c", "classification", num_classes=3).empty_target((3, 4, 5)).item() == -1
    assert torch.isnan(create_task("d", "depth").empty_target((3, 4, 5))).all()
    assert create_task("n", "normals").empty_target((2, 3, 4, 5)).shape == (2, 3, 4, 5)
    assert create_task("b", "binary").empty_target((2, 3, 4, 5)).shape == (2,)
    with pytest.raises(BranchnasError, match="empty_target"):
        create_task("d", "depth").empty_target((5,))


def test_half_precision_pred_is_reduced_in_float32():
    # 90,000 unit errors sum past float16's largest value (65,504)
    task = create_task("d", "depth")
    pred = torch.ones(1, 1, 300, 300, dtype=torch.float16, requires_grad=True)
    loss = task.loss(pred, torch.full((1, 1, 300, 300), 2.0, dtype=torch.float16))
    assert loss.dtype == torch.float32 and loss.item() == 1.0
    loss.backward()
    assert pred.grad.dtype == torch.float16
