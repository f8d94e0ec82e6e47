"""The embedded benchmark: determinism, caching, exact and mutually consistent labels."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from branchnas.data import ScenesDataset, _render, create_dataset, list_datasets
from branchnas.data.preview import preview_panels, render_preview
from branchnas.data.scenes import (
    ATTRIBUTES,
    SCENE_CLASSES,
    SCENES_TASKS,
    SEMSEG_CLASSES,
    render_scenes,
    sample_scene,
    scene_attributes,
)
from branchnas.errors import BranchnasError

RES = 40


@pytest.fixture(scope="module")
def batch():
    """16 val scenes at 40x40 (rendered once for the module)."""
    ds = ScenesDataset("val", size=16, resolution=RES, cache_dir=False)
    return ds, [ds[i] for i in range(len(ds))]


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(
        torch.equal(torch.nan_to_num(a, nan=-12345.0), torch.nan_to_num(b, nan=-12345.0))
    )


def test_catalogue_and_registry():
    assert "scenes" in list_datasets()
    assert len(SEMSEG_CLASSES) >= 6 and SEMSEG_CLASSES[:2] == ("floor", "wall")
    names = [f"attr_{a.name}" for a in ATTRIBUTES]
    assert len(names) >= 40 and len(set(names)) == len(names)
    assert SCENES_TASKS["semseg"] == {"type": "segmentation", "num_classes": len(SEMSEG_CLASSES)}
    assert SCENES_TASKS["scene"] == {"type": "classification", "num_classes": len(SCENE_CLASSES)}
    for t in ("depth", "normals", "edges", "instance"):
        assert SCENES_TASKS[t]["type"] == t
    assert all(SCENES_TASKS[n] == {"type": "binary"} for n in names)


def test_catalogue_builds_tasks():
    from branchnas.tasks import create_task

    for name, spec in SCENES_TASKS.items():
        task = create_task(name, **spec)
        assert task.type == spec["type"]


def test_deterministic_and_independent_of_size():
    a = ScenesDataset("train", size=5, resolution=24, seed=3, cache_dir=False)
    b = ScenesDataset("train", size=3, resolution=24, seed=3, cache_dir=False)
    for i in range(3):
        ia, ib = a[i], b[i]
        assert torch.equal(ia["image"], ib["image"])
        for t in ia["labels"]:
            assert _equal(ia["labels"][t], ib["labels"][t]), t
    other_seed = ScenesDataset("train", size=3, resolution=24, seed=4, cache_dir=False)
    other_split = ScenesDataset("test", size=3, resolution=24, seed=3, cache_dir=False)
    assert not torch.equal(a[0]["image"], other_seed[0]["image"])
    assert not torch.equal(a[0]["image"], other_split[0]["image"])
    assert sample_scene(3, "train", 2) == a.spec(2)


def test_item_format(batch):
    ds, items = batch
    it = items[0]
    assert set(it) == {"image", "labels", "present"}
    assert it["image"].dtype == torch.float32 and it["image"].shape == (3, RES, RES)
    assert 0.0 <= float(it["image"].min()) and float(it["image"].max()) <= 1.0
    assert set(it["labels"]) == set(SCENES_TASKS) == set(ds.tasks)
    assert all(it["present"][t] is True for t in SCENES_TASKS)
    lab = it["labels"]
    assert lab["semseg"].dtype == torch.int64 and lab["semseg"].shape == (RES, RES)
    assert lab["depth"].shape == (1, RES, RES) and lab["normals"].shape == (3, RES, RES)
    assert lab["edges"].shape == (1, RES, RES) and lab["instance"].shape == (2, RES, RES)
    assert lab["scene"].dtype == torch.int64 and lab["scene"].dim() == 0
    assert lab["attr_has_red"].dtype == torch.float32 and lab["attr_has_red"].dim() == 0
    assert set(torch.unique(lab["edges"]).tolist()) <= {0.0, 1.0}


def test_geometry_is_exact(batch):
    """Normals are unit, face the camera, and floor points back-project onto one plane."""
    ds, items = batch
    f, cx, cy = _render.intrinsics(RES, RES)
    jj, ii = np.meshgrid(np.arange(RES) + 0.5, np.arange(RES) + 0.5)
    ray = np.stack([(jj - cx) / f, (ii - cy) / f, np.ones_like(jj)])
    for i, it in enumerate(items):
        n = it["labels"]["normals"].numpy()
        z = it["labels"]["depth"].numpy()[0]
        seg = it["labels"]["semseg"].numpy()
        assert np.isfinite(z).all() and (z > 0).all()
        assert np.allclose(np.linalg.norm(n, axis=0), 1.0, atol=1e-5)
        assert ((n * ray).sum(0) < 1e-3).all()  # visible surfaces face the camera
        pts = ray * z  # camera-frame points
        floor = seg == 0
        offset = (n * pts).sum(0)[floor]  # n·X is minus the camera height on the floor
        assert np.ptp(n[:, floor], axis=1).max() < 1e-2
        cam_h = ds.spec(i).cam_pos[1]
        assert np.allclose(-offset, cam_h, rtol=2e-3, atol=2e-3)


def test_instance_offsets_point_to_centroids(batch):
    _, items = batch
    for it in items:
        seg = it["labels"]["semseg"].numpy()
        off = it["labels"]["instance"].numpy()
        objects = seg >= 2
        assert np.isnan(off[:, ~objects]).all() and np.isfinite(off[:, objects]).all()
        yy, xx = np.mgrid[:RES, :RES]
        ty, tx = yy + off[0], xx + off[1]
        # pixels of one instance share a target, which is their centroid
        keys = np.round(np.stack([ty[objects], tx[objects]], 1), 3)
        for key in np.unique(keys, axis=0):
            members = np.all(keys == key, axis=1)
            assert np.allclose([yy[objects][members].mean(), xx[objects][members].mean()],
                               key, atol=1e-3)


def _instance_ids(off: np.ndarray) -> np.ndarray:
    ids = np.zeros(off.shape[1:], np.int64)
    valid = np.isfinite(off[0])
    yy, xx = np.mgrid[: off.shape[1], : off.shape[2]]
    keys = np.round(np.stack([(yy + off[0])[valid], (xx + off[1])[valid]], 1), 3)
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    ids[valid] = inv.ravel() + 1
    return ids


def test_edges_coincide_with_discontinuities(batch):
    _, items = batch
    cos20 = np.cos(np.radians(19.0))
    for it in items:
        edge = it["labels"]["edges"].numpy()[0] > 0
        seg = it["labels"]["semseg"].numpy()
        inst = _instance_ids(it["labels"]["instance"].numpy())
        n = it["labels"]["normals"].numpy()
        z = it["labels"]["depth"].numpy()[0]
        near_disc = np.zeros_like(edge)
        for axis in (0, 1):
            a = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
            b = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
            changes = (seg[a] != seg[b]) | (inst[a] != inst[b])
            crease = (n[(slice(None),) + a] * n[(slice(None),) + b]).sum(0) < cos20
            # every segment/instance boundary carries an edge on one side
            assert (edge[a] | edge[b])[changes].all()
            # the edge sits on the nearer pixel of an occlusion boundary
            occl = changes & (np.abs(z[a] - z[b]) > 0.2 * np.minimum(z[a], z[b]))
            nearer_a = z[a] < z[b]
            assert edge[a][occl & nearer_a].all() and edge[b][occl & ~nearer_a].all()
            disc = changes | crease
            near_disc[a] |= disc
            near_disc[b] |= disc
        # and every edge pixel lies on a discontinuity of segments, instances or normals
        assert near_disc[edge].all()
        assert edge.any()


def test_attributes_are_balanced_and_follow_factors():
    specs = [sample_scene(11, "train", i) for i in range(400)]
    A = np.stack([scene_attributes(s) for s in specs]).astype(float)
    rates = A.mean(0)
    bad = {a.name: round(r, 2) for a, r in zip(ATTRIBUTES, rates) if not 0.1 <= r <= 0.9}
    assert not bad, f"unbalanced attributes: {bad}"
    idx = {a.name: i for i, a in enumerate(ATTRIBUTES)}
    style = np.array([s.style for s in specs])
    assert np.array_equal(A[:, idx["warm_light"]], (style >> 2) & 1)
    assert np.array_equal(A[:, idx["tiled_floor"]], (style >> 1) & 1)
    assert np.array_equal(A[:, idx["striped_walls"]], style & 1)
    # colour facts are independent of the room style and of the camera
    cam_high = A[:, idx["camera_high"]]
    for colour in ("has_red", "has_blue"):
        assert abs(np.corrcoef(A[:, idx[colour]], cam_high)[0, 1]) < 0.2
    n_obj = np.array([len(s.objects) for s in specs])
    assert set(n_obj) == {1, 2, 3, 4}
    assert np.array_equal(A[:, idx["single_object"]], n_obj == 1)


def test_rendered_semantics_match_factors():
    specs = [sample_scene(5, "val", i) for i in range(6)]
    out = render_scenes(specs, (32, 32))
    for i, s in enumerate(specs):
        shapes = {o.shape for o in s.objects}
        assert set(out["slot_shape"][i][out["slot_shape"][i] >= 0]) == shapes
        visible = set(np.unique(out["surface"][i])) - {0, 1, 2, 3}
        assert visible <= {4 + k for k in range(len(s.objects))} and visible
    assert np.array_equal(out["scene"], [s.style for s in specs])


def test_non_square_resolution():
    ds = ScenesDataset("val", size=2, resolution=(24, 40), cache_dir=False, tasks=["normals"])
    it = ds[1]
    assert it["image"].shape == (3, 24, 40) and it["labels"]["normals"].shape == (3, 24, 40)


def test_cache_roundtrip_and_corruption(tmp_path, caplog):
    kw = {"split": "val", "size": 4, "resolution": 16, "seed": 1, "cache_dir": tmp_path}
    fresh = ScenesDataset(**{**kw, "cache_dir": False})
    first = ScenesDataset(**kw)
    entries = list((tmp_path / "scenes").iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    again = ScenesDataset(**kw)
    assert isinstance(again._arrays["image"], np.memmap)
    for i in range(4):
        for t in SCENES_TASKS:
            assert _equal(fresh[i]["labels"][t], again[i]["labels"][t])
            assert _equal(first[i]["labels"][t], again[i]["labels"][t])
    # truncate one file: the entry is detected, logged and regenerated
    depth_file = entries[0] / "depth.npy"
    depth_file.write_bytes(depth_file.read_bytes()[:-7])
    with caplog.at_level(logging.WARNING):
        healed = ScenesDataset(**kw)
    assert "corrupt" in caplog.text
    assert _equal(healed[2]["labels"]["depth"], fresh[2]["labels"]["depth"])
    # garbage metadata likewise
    (entries[0] / "meta.json").write_text("{not json")
    healed = ScenesDataset(**kw)
    assert torch.equal(healed[0]["image"], fresh[0]["image"])
    assert not [p for p in (tmp_path / "scenes").iterdir() if p.name.startswith(".")]


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BRANCHNAS_CACHE", str(tmp_path))
    ScenesDataset("val", size=2, resolution=12)
    assert len(list((tmp_path / "scenes").iterdir())) == 1


def test_task_selection_and_errors():
    ds = create_dataset("scenes", split="val", tasks=["depth", "attr_has_red"], size=2,
                        resolution=12, cache_dir=False)
    assert list(ds.tasks) == ["depth", "attr_has_red"]
    assert set(ds[0]["labels"]) == {"depth", "attr_has_red"}
    with pytest.raises(BranchnasError, match="no task"):
        ScenesDataset("val", size=2, resolution=12, tasks=["depth", "colour"], cache_dir=False)
    with pytest.raises(BranchnasError, match="split"):
        ScenesDataset("dev", size=2, cache_dir=False)
    with pytest.raises(BranchnasError, match="resolution"):
        ScenesDataset("val", size=2, resolution=(3, 2, 1), cache_dir=False)
    with pytest.raises(BranchnasError, match="size"):
        ScenesDataset("val", size=0, cache_dir=False)
    with pytest.raises(IndexError):
        ds[2]


def test_preview(tmp_path, batch):
    ds, _ = batch
    panels = preview_panels(ds, 2)
    assert len(panels) == 2
    titles = [t for t, _ in panels[0]["panels"]]
    assert titles[:2] == ["image", "semseg"] and "normals" in titles
    assert all(a.shape == (RES, RES, 3) and 0 <= a.min() and a.max() <= 1
               for _, a in panels[0]["panels"])
    assert "scene=" in panels[0]["caption"]
    path = render_preview(ds, 2, tmp_path / "sheet.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
