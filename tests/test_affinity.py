"""Affinity measures (RSA, CKA, Lu et al.'s FA), the measure registry and compute_affinity.

References are computed independently: np.corrcoef + scipy.stats.spearmanr per pair for
RSA, the feature-space CKA formula for CKA, and explicit counting for FA.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from branchnas.affinity import (
    AffinityMeasure,
    average_ranks,
    cka_affinity,
    compute_affinity,
    correlation_rdm,
    create_measure,
    fa_affinity,
    get_measure,
    list_measures,
    register_measure,
    rsa_affinity,
    select_images,
)
from branchnas.errors import BranchnasError

CPU = "cpu"


# ----------------------------------------------------------------------------- references


def reference_rsa(features):
    names = list(features)
    depth = len(features[names[0]])
    out = np.empty((depth, len(names), len(names)))
    for d in range(depth):
        triangles = []
        for t in names:
            x = np.asarray(features[t][d], dtype=np.float64)
            k = x.shape[0]
            rdm = 1.0 - np.corrcoef(x.reshape(k, -1))
            triangles.append(rdm[np.triu_indices(k, 1)])
        for i in range(len(names)):
            for j in range(len(names)):
                out[d, i, j] = scipy.stats.spearmanr(triangles[i], triangles[j]).statistic
    return out


def reference_cka(x, y):
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    y = y.reshape(y.shape[0], -1).astype(np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def related_features(rng, k, shape, noise, names=("seg", "depth", "normals"), depth=2):
    """Per task and location: a shared signal plus task-specific noise of growing size."""
    out = {t: [] for t in names}
    for _ in range(depth):
        base = rng.normal(size=(k, *shape))
        for i, t in enumerate(names):
            out[t].append(base + noise * (i + 1) * rng.normal(size=(k, *shape)))
    return out


# ----------------------------------------------------------------------------- RSA


@pytest.mark.parametrize("k,shape", [(5, (4,)), (12, (3, 4, 4)), (40, (2, 3)), (25, (1, 1, 7))])
def test_rsa_matches_scipy_reference(k, shape):
    rng = np.random.default_rng(k)
    feats = related_features(rng, k, shape, noise=0.7)
    got = rsa_affinity(feats, device=CPU)
    assert got.shape == (2, 3, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, reference_rsa(feats), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got, got.transpose(0, 2, 1))
    np.testing.assert_array_equal(np.diagonal(got, axis1=1, axis2=2), 1.0)


def test_rsa_ties_get_average_ranks_like_scipy():
    # Images repeated from zero-sum integer patterns: the arithmetic is exact in both
    # implementations, so the many tied RDM entries are genuine ties for both.
    patterns = np.array([[1, 1, -1, -1, 0, 0], [1, -1, 1, -1, 2, -2], [3, -1, -1, -1, 0, 0], [0, 0, 1, -1, 1, -1]],
                        dtype=np.float64)
    pick = np.array([0, 1, 2, 0, 1, 2, 0, 3, 1, 3])
    rng = np.random.default_rng(1)
    feats = {"a": [patterns[pick]], "b": [patterns[pick[::-1]] * 2.0 + 1.0], "c": [rng.normal(size=(10, 6))]}
    rdm = 1.0 - np.corrcoef(feats["a"][0])
    assert len(np.unique(rdm[np.triu_indices(10, 1)])) < 10  # many ties among 45 entries
    np.testing.assert_allclose(rsa_affinity(feats, device=CPU), reference_rsa(feats), atol=1e-6, rtol=0)


def test_average_ranks_matches_rankdata():
    values = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 1.0, 5.0, 3.0])
    np.testing.assert_array_equal(average_ranks(values).numpy(), scipy.stats.rankdata(values.numpy()))


def test_rsa_chunked_equals_unchunked_and_accepts_tensors():
    rng = np.random.default_rng(2)
    feats = related_features(rng, 15, (8, 5), noise=0.5)
    whole = rsa_affinity(feats, device=CPU)
    tiny_chunks = rsa_affinity(feats, device=CPU, chunk_bytes=15 * 8 * 3)  # 3 columns per chunk
    as_tensors = rsa_affinity({t: [torch.from_numpy(x).float() for x in v] for t, v in feats.items()},
                              device=CPU)
    np.testing.assert_allclose(tiny_chunks, whole, atol=1e-12)
    np.testing.assert_allclose(as_tensors, whole, atol=1e-5)


def test_rsa_orders_tasks_like_the_mapping_and_handles_one_task():
    rng = np.random.default_rng(3)
    feats = related_features(rng, 10, (4,), noise=1.0)
    forward = rsa_affinity(feats, device=CPU)
    backward = rsa_affinity(dict(reversed(list(feats.items()))), device=CPU)
    np.testing.assert_allclose(backward, forward[:, ::-1, ::-1], atol=1e-12)
    assert rsa_affinity({"seg": feats["seg"]}, device=CPU).tolist() == [[[1.0]], [[1.0]]]


def test_correlation_rdm_matches_corrcoef():
    x = np.random.default_rng(4).normal(size=(7, 2, 3))
    rdm = correlation_rdm(x, device=CPU)
    np.testing.assert_allclose(rdm, 1.0 - np.corrcoef(x.reshape(7, -1)), atol=1e-12)
    assert np.all(np.diag(rdm) == 0.0)


def _ok(k=6, f=4, seed=0):
    return np.random.default_rng(seed).normal(size=(k, f))


@pytest.mark.parametrize(
    "features,pattern",
    [
        ({"a": [_ok(6)], "b": [_ok(7)]}, r"task 'b' at location 1 cover K=7 .* K=6; give every task"),
        ({"a": [_ok(6), _ok(5)], "b": [_ok(6), _ok(5)]}, r"location 2 cover K=5 .* K=6"),
        ({"a": [_ok(6)], "b": [_ok(6), _ok(6)]}, r"different numbers of locations \(a: 1, b: 2\)"),
        ({"a": [_ok(2)], "b": [_ok(2)]}, r"at least 3 images, got K=2"),
        ({"a": _ok(6)}, r"task 'a' is a ndarray; give a list of D arrays"),
        ({}, r"non-empty mapping"),
        ({"a": [np.arange(6.0)]}, r"shape \(6,\); give shape \(K, \.\.\.\)"),
    ],
)
def test_rsa_structural_errors(features, pattern):
    with pytest.raises(BranchnasError, match=pattern):
        rsa_affinity(features, device=CPU)


def test_rsa_constant_image_names_task_location_and_image():
    bad = _ok(6, seed=1)
    bad[4] = 2.5
    with pytest.raises(BranchnasError, match=r"task 'b' at location 2: image 4 has constant features"):
        rsa_affinity({"a": [_ok(6), _ok(6)], "b": [_ok(6), bad]}, device=CPU)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("chunk_bytes", [None, 6 * 8])
def test_rsa_nonfinite_values_name_the_image(value, chunk_bytes):
    bad = _ok(6, seed=2)
    bad[3, 2] = value
    with pytest.raises(BranchnasError, match=r"task 'a' at location 1: image 3 has non-finite values"):
        rsa_affinity({"a": [bad], "b": [_ok(6)]}, device=CPU, chunk_bytes=chunk_bytes)


def test_rsa_equally_dissimilar_pairs_are_an_error():
    # Three orthogonal one-hot images: every pair has correlation -0.5, so all RDM entries tie.
    with pytest.raises(BranchnasError, match=r"all image pairs are equally dissimilar"):
        rsa_affinity({"a": [np.eye(3)], "b": [_ok(3)]}, device=CPU)


# ----------------------------------------------------------------------------- CKA


def test_cka_matches_feature_space_formula():
    rng = np.random.default_rng(5)
    feats = related_features(rng, 9, (3, 2, 2), noise=0.8)
    feats["seg"][1] = rng.normal(size=(9, 5))  # tasks may differ in width at a location
    got = cka_affinity(feats, device=CPU, chunk_bytes=9 * 8 * 2)
    names = list(feats)
    for d in range(2):
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                assert got[d, i, j] == pytest.approx(reference_cka(feats[a][d], feats[b][d]), abs=1e-10)
    np.testing.assert_array_equal(got, got.transpose(0, 2, 1))
    np.testing.assert_array_equal(np.diagonal(got, axis1=1, axis2=2), 1.0)


def test_cka_invariant_to_rotation_and_scale():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(12, 5))
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    got = cka_affinity({"a": [x], "b": [3.0 * x @ q + 1.0]}, device=CPU)
    assert got[0, 0, 1] == pytest.approx(1.0, abs=1e-12)


def test_cka_identical_images_are_an_error():
    same = np.tile(_ok(1, 4), (5, 1))
    with pytest.raises(BranchnasError, match=r"task 'b' at location 1: every image has the same features"):
        cka_affinity({"a": [_ok(5)], "b": [same]}, device=CPU)


# ----------------------------------------------------------------------------- FA (Lu et al.)


def test_fa_counts_joint_easy_and_hard_examples():
    losses = {
        "a": np.array([1.0, 2.0, 0.5, 4.0, 5.0, 5.5]),
        "b": np.array([1.0, 2.0, 0.5, 4.0, 5.0, 2.5]),
        "c": np.array([5.0, 5.0, np.nan, 1.0, 1.0, np.nan]),
    }
    # a: mean 3.0 -> hard [0,0,0,1,1,1]; b: mean 2.5 -> hard [0,0,0,1,1,1] (2.5 >= 2.5)
    # c: mean 3.0 over labelled -> hard [1,1,-,0,0,-]
    got = fa_affinity(losses, device=CPU)
    assert got.shape == (1, 3, 3)
    assert got[0, 0, 1] == 1.0
    assert got[0, 0, 2] == 0.0  # over examples 0, 1, 3, 4: always opposite
    assert got[0, 1, 2] == 0.0
    np.testing.assert_array_equal(np.diagonal(got[0]), 1.0)


def test_fa_matches_explicit_counting_and_broadcasts():
    rng = np.random.default_rng(7)
    losses = {t: rng.gamma(2.0, size=30) for t in "abcd"}
    got = fa_affinity(losses, num_locations=3, device=CPU)
    assert got.shape == (3, 4, 4)
    hard = {t: v >= v.mean() for t, v in losses.items()}
    for i, a in enumerate("abcd"):
        for j, b in enumerate("abcd"):
            expect = np.mean(hard[a] & hard[b]) + np.mean(~hard[a] & ~hard[b])
            assert got[:, i, j] == pytest.approx([expect] * 3, abs=1e-12)
    per_location = fa_affinity({t: [v, v[::-1]] for t, v in losses.items()}, device=CPU)
    assert per_location.shape == (2, 4, 4)
    np.testing.assert_allclose(per_location[0], got[0])


@pytest.mark.parametrize(
    "losses,kw,pattern",
    [
        ({"a": np.array([1.0, np.inf, 2.0]), "b": np.ones(3)}, {}, r"task 'a' .* example 1 has an infinite loss"),
        ({"a": np.full(3, np.nan), "b": np.ones(3)}, {}, r"task 'a' .* no example has a label"),
        ({"a": np.array([1.0, np.nan, np.nan]), "b": np.array([np.nan, 1.0, 2.0])}, {},
         r"tasks 'a' and 'b' share no labelled example"),
        ({"a": np.ones(3), "b": np.ones(4)}, {}, r"K=4 .* K=3"),
        ({"a": np.ones((3, 2)), "b": np.ones(3)}, {}, r"give a list of D arrays"),
        ({"a": [np.ones(3)] * 2, "b": [np.ones(3)] * 2}, {"num_locations": 3}, r"losses are given at 2 locations"),
    ],
)
def test_fa_errors(losses, kw, pattern):
    with pytest.raises(BranchnasError, match=pattern):
        fa_affinity(losses, device=CPU, **kw)


# ----------------------------------------------------------------------------- registry


def test_registry_lists_measures_and_their_inputs():
    assert {"rsa", "cka", "fa"} <= set(list_measures())
    assert get_measure("rsa").needs == "features"
    assert get_measure("cka").needs == "features"
    assert get_measure("fa").needs == "losses"
    feats = related_features(np.random.default_rng(8), 8, (3,), noise=0.3)
    np.testing.assert_array_equal(create_measure("rsa", device=CPU)(feats), rsa_affinity(feats, device=CPU))


def test_registry_errors_name_the_choices():
    with pytest.raises(BranchnasError, match=r"unknown affinity measure 'rdm'; choose one of: .*cka, fa, rsa"):
        create_measure("rdm")
    with pytest.raises(BranchnasError, match=r"'fa' does not take 'chunk_bytes'; it takes: device"):
        create_measure("fa", chunk_bytes=10)
    with pytest.raises(BranchnasError, match=r"'rsa' is already registered"):
        register_measure("rsa")(get_measure("cka"))
    with pytest.raises(BranchnasError, match=r"needs 'pixels'"):

        class Bad(AffinityMeasure):
            needs = "pixels"

        register_measure("test-bad-needs")(Bad)
    assert "test-bad-needs" not in list_measures()


# ----------------------------------------------------------------------------- compute_affinity


class TinyNet(nn.Module):
    """Stand-in single-task network: two conv blocks (the D=2 locations) and a 1-channel head."""

    def __init__(self, task: str, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.task = task
        self.block1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Tanh())
        self.head = nn.Conv2d(6, 1, 1)

    def forward_features(self, image, task):
        assert task == self.task
        f1 = self.block1(image)
        return [f1, self.block2(f1)]

    def forward(self, image, tasks=None):
        pred = self.head(self.forward_features(image, self.task)[-1])
        return {self.task: nn.functional.interpolate(pred, size=image.shape[-2:])}


class TinyTask:
    """Stand-in dense regression task: per-sample mean squared error, NaN without a label."""

    def __init__(self, name: str) -> None:
        self.name = name

    def loss(self, pred, target, present, reduction="mean"):
        per = ((pred - target) ** 2).flatten(1).mean(1)
        per = torch.where(present, per, torch.full_like(per, float("nan")))
        return per if reduction == "none" else per[present].mean()


TASKS = ("seg", "depth", "edges")


def tiny_dataset(n=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        image = torch.randn(3, 6, 6, generator=g)
        labels = {t: image[j:j + 1] * (j + 1) + 0.1 * torch.randn(1, 6, 6, generator=g) for j, t in enumerate(TASKS)}
        present = {t: not (t == "edges" and i % 5 == 0) for t in TASKS}
        items.append({"image": image, "labels": labels, "present": present})
    return items


def tiny_models():
    return {t: TinyNet(t, seed=i) for i, t in enumerate(TASKS)}


def direct_features(models, dataset, indices):
    images = torch.stack([dataset[i]["image"] for i in indices])
    with torch.no_grad():
        return {t: [f.numpy() for f in models[t].eval().forward_features(images, t)] for t in TASKS}


def test_select_images_is_seeded_sorted_and_clipped(caplog):
    a = select_images(100, 10, seed=3)
    assert a.tolist() == select_images(100, 10, seed=3).tolist()
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 10
    assert a.tolist() != select_images(100, 10, seed=4).tolist()
    with caplog.at_level(logging.WARNING, logger="branchnas.affinity.extract"):
        assert select_images(5, 500).tolist() == [0, 1, 2, 3, 4]
    assert "K=500 images asked for but the dataset has 5" in caplog.text
    with pytest.raises(BranchnasError, match=r"dataset has 2 image\(s\); affinity needs at least 3"):
        select_images(2, 500)
    with pytest.raises(BranchnasError, match=r"K=2 images asked for"):
        select_images(100, 2)


@pytest.mark.parametrize("measure,reference", [("rsa", rsa_affinity), ("cka", cka_affinity)])
def test_compute_affinity_matches_features_of_the_seeded_subset(measure, reference):
    data, models = tiny_dataset(), tiny_models()
    models["seg"].eval()
    tasks = [TinyTask(t) for t in TASKS]
    got, locations, meta = compute_affinity(models, data, tasks, k=9, seed=1, measure=measure,
                                            batch_size=4, device=CPU)
    indices = select_images(len(data), 9, seed=1)
    expect = reference(direct_features(tiny_models(), data, indices), device=CPU)
    np.testing.assert_allclose(got, expect, atol=1e-9)
    assert locations == ["block1", "block2"]
    assert meta["K"] == 9 and meta["seed"] == 1 and meta["measure"] == measure
    assert meta["feature_shapes"] == {"block1": [4, 6, 6], "block2": [6, 3, 3]}
    assert models["depth"].training and not models["seg"].training  # modes restored as found


def test_compute_affinity_memory_bound_gives_the_same_result():
    data, models = tiny_dataset(), tiny_models()
    roomy, _, _ = compute_affinity(models, data, TASKS, k=10, batch_size=3, device=CPU)
    tight, _, _ = compute_affinity(models, data, TASKS, k=10, batch_size=3, device=CPU,
                                   max_feature_bytes=1, chunk_bytes=80)
    np.testing.assert_allclose(tight, roomy, atol=1e-12)


def test_compute_affinity_fa_uses_per_example_losses():
    data, models = tiny_dataset(), tiny_models()
    tasks = [TinyTask(t) for t in TASKS]
    got, locations, _meta = compute_affinity(models, data, tasks, k=12, seed=2, measure="fa",
                                            batch_size=5, device=CPU, locations=["early", "late"])
    assert locations == ["early", "late"] and got.shape == (2, 3, 3)
    indices = select_images(len(data), 12, seed=2)
    images = torch.stack([data[i]["image"] for i in indices])
    losses = {}
    for t, task, model in zip(TASKS, tasks, tiny_models().values()):
        with torch.no_grad():
            pred = model.eval()(images)[t]
        target = torch.stack([data[i]["labels"][t] for i in indices])
        present = torch.tensor([data[i]["present"][t] for i in indices])
        losses[t] = task.loss(pred, target, present, reduction="none").numpy()
    assert np.isnan(losses["edges"]).any()  # unlabelled examples are skipped, not failed
    np.testing.assert_allclose(got, fa_affinity(losses, num_locations=2, device=CPU), atol=1e-12)


def test_compute_affinity_clips_k_and_reports_bad_setups(caplog):
    data, models = tiny_dataset(n=5), tiny_models()
    with caplog.at_level(logging.WARNING):
        got, _, meta = compute_affinity(models, data, TASKS, k=500, device=CPU)
    assert meta["K"] == 5 and got.shape == (2, 3, 3)
    with pytest.raises(BranchnasError, match=r"no trained network for task\(s\) 'normals'"):
        compute_affinity(models, data, [*TASKS, "normals"], device=CPU)
    with pytest.raises(BranchnasError, match=r"2 feature locations but 3 location names"):
        compute_affinity(models, data, TASKS, device=CPU, locations=["a", "b", "c"])
    with pytest.raises(BranchnasError, match=r"fa measure needs Task objects with a loss"):
        compute_affinity(models, data, TASKS, device=CPU, measure="fa")
    with pytest.raises(BranchnasError, match=r"affinity needs at least 3"):
        compute_affinity(models, data[:2], TASKS, device=CPU)


@pytest.mark.parametrize("name", list_measures())
def test_every_registered_measure_gives_a_valid_affinity_tensor(name):
    """Contract over the measure registry: (D, N, N), finite, symmetric, unit diagonal, in [-1, 1]."""
    rng = np.random.default_rng(0)
    measure = create_measure(name)
    k, tasks, depth = 24, ["a", "b", "c"], 2
    if measure.needs == "losses":
        inputs = {t: [rng.random(k) for _ in range(depth)] for t in tasks}
    else:
        inputs = {t: [rng.normal(size=(k, 3, 2, 2)) for _ in range(depth)] for t in tasks}
    a = np.asarray(measure(inputs))
    assert a.shape == (depth, len(tasks), len(tasks))
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, a.transpose(0, 2, 1), atol=1e-9)
    np.testing.assert_allclose(np.diagonal(a, axis1=1, axis2=2), 1.0, atol=1e-9)
    assert np.abs(a).max() <= 1.0 + 1e-9
