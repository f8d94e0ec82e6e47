"""Real-dataset loaders, each on tiny files written here in the dataset's exact format."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from branchnas.data import create_dataset, list_datasets
from branchnas.data.partial import collate
from branchnas.errors import BranchnasError

H, W = 6, 8
RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------ NYUv2


def _write_nyuv2(root, split="train", n=3, normals=True):
    d = root / split
    for sub in ("image", "label", "depth") + (("normal",) if normals else ()):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(d / "image" / f"{i}.npy", RNG.random((H, W, 3)).astype(np.float32))
        label = RNG.integers(0, 13, (H, W)).astype(np.float32)
        label[0, 0] = -1.0
        np.save(d / "label" / f"{i}.npy", label)
        depth = RNG.uniform(0.5, 9.0, (H, W, 1)).astype(np.float32)
        depth[1, 1, 0] = 0.0
        np.save(d / "depth" / f"{i}.npy", depth)
        if normals:
            nrm = RNG.normal(size=(H, W, 3)).astype(np.float32)
            nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
            nrm[2, 2] = 0.0
            np.save(d / "normal" / f"{i}.npy", nrm)


def test_nyuv2_reads_mtan_layout(tmp_path):
    _write_nyuv2(tmp_path, "train", 3)
    _write_nyuv2(tmp_path, "val", 2)
    ds = create_dataset("nyuv2", split="train", root=tmp_path)
    assert len(ds) == 3
    assert ds.tasks == {"semantic": {"type": "segmentation", "num_classes": 13},
                        "depth": {"type": "depth"}, "normals": {"type": "normals"}}
    it = ds[1]
    img = np.load(tmp_path / "train" / "image" / "1.npy")
    assert torch.allclose(it["image"], torch.from_numpy(img).permute(2, 0, 1))
    seg = it["labels"]["semantic"]
    assert seg.dtype == torch.int64 and seg.shape == (H, W) and int(seg[0, 0]) == 255
    raw = np.load(tmp_path / "train" / "label" / "1.npy")
    assert torch.equal(seg[raw >= 0], torch.from_numpy(raw[raw >= 0].astype(np.int64)))
    depth = it["labels"]["depth"]
    assert depth.shape == (1, H, W) and math.isnan(float(depth[0, 1, 1]))
    assert torch.isfinite(depth).sum() == H * W - 1
    n = it["labels"]["normals"]
    assert n.shape == (3, H, W) and torch.isnan(n[:, 2, 2]).all()
    valid = torch.isfinite(n[0])
    assert torch.allclose(n.norm(dim=0)[valid], torch.ones(int(valid.sum())), atol=1e-5)
    # MTAN evaluates on val: "test" falls back to it
    assert len(create_dataset("nyuv2", split="test", root=tmp_path)) == 2
    batch = collate([ds[0], ds[2]])
    assert batch["labels"]["normals"].shape == (2, 3, H, W)


def test_nyuv2_resize_and_optional_folders(tmp_path):
    _write_nyuv2(tmp_path, "train", 2, normals=False)
    ds = create_dataset("nyuv2", root=tmp_path, resolution=(12, 16))
    assert list(ds.tasks) == ["semantic", "depth"]
    it = ds[0]
    assert it["image"].shape == (3, 12, 16) and it["labels"]["semantic"].shape == (12, 16)
    assert set(torch.unique(it["labels"]["semantic"]).tolist()) <= set(range(13)) | {255}
    with pytest.raises(BranchnasError, match=r"normal.*layout"):
        create_dataset("nyuv2", root=tmp_path, tasks=["normals"])


def test_nyuv2_errors_name_the_layout(tmp_path):
    with pytest.raises(BranchnasError, match=r"root=<dir>.*\{train,val\}"):
        create_dataset("nyuv2")
    with pytest.raises(BranchnasError, match=r"layout: <root>/\{train,val\}/\{image,label"):
        create_dataset("nyuv2", root=tmp_path / "nowhere")
    _write_nyuv2(tmp_path, "train", 3)
    (tmp_path / "train" / "depth" / "2.npy").unlink()
    with pytest.raises(BranchnasError, match=r"holds 2 files.*layout"):
        create_dataset("nyuv2", root=tmp_path)
    (tmp_path / "train" / "image" / "1.npy").rename(tmp_path / "train" / "image" / "7.npy")
    with pytest.raises(BranchnasError, match=r"lacks 1\.npy"):
        create_dataset("nyuv2", root=tmp_path)
    (tmp_path / "train" / "image" / "7.npy").rename(tmp_path / "train" / "image" / "1.npy")
    np.save(tmp_path / "train" / "depth" / "2.npy", np.ones((H, W, 1), np.float32))
    np.save(tmp_path / "train" / "label" / "0.npy", np.zeros((H + 1, W), np.float32))
    ds = create_dataset("nyuv2", root=tmp_path)
    with pytest.raises(BranchnasError, match=r"label/0\.npy.*expected shape"):
        ds[0]
    np.save(tmp_path / "train" / "label" / "0.npy", np.full((H, W), 40.0, np.float32))
    with pytest.raises(BranchnasError, match="num_classes=13"):
        ds[0]
    with pytest.raises(BranchnasError, match="split"):
        create_dataset("nyuv2", split="dev", root=tmp_path)


# --------------------------------------------------------------------------- Cityscapes


def _write_cityscapes(root, n=2, instance=True):
    d = root / "train"
    for sub in ("image", "label_7", "label_19", "depth") + (("instance",) if instance else ()):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(d / "image" / f"{i}.npy", RNG.random((H, W, 3)).astype(np.float32))
        for c in (7, 19):
            lab = RNG.integers(0, c, (H, W)).astype(np.float32)
            lab[-1, -1] = -1
            np.save(d / f"label_{c}" / f"{i}.npy", lab)
        np.save(d / "depth" / f"{i}.npy", RNG.uniform(0, 1, (H, W, 1)).astype(np.float32))
        if instance:
            ids = np.full((H, W), 7, np.int32)  # road: no instance
            ids[0:2, 0:3] = 26001  # car #1
            ids[3:6, 5:8] = 24000  # person #0
            np.save(d / "instance" / f"{i}.npy", ids)


def test_cityscapes_reads_mtan_layout(tmp_path):
    _write_cityscapes(tmp_path)
    ds = create_dataset("cityscapes", root=tmp_path)
    assert ds.tasks["semantic"] == {"type": "segmentation", "num_classes": 19}
    assert list(ds.tasks) == ["semantic", "depth", "instance"]
    it = ds[1]
    raw = np.load(tmp_path / "train" / "label_19" / "1.npy")
    seg = it["labels"]["semantic"]
    assert int(seg[-1, -1]) == 255 and torch.equal(seg[:-1], torch.from_numpy(raw[:-1]).long())
    off = it["labels"]["instance"]
    assert off.shape == (2, H, W)
    assert torch.isnan(off[:, 2, :]).all()  # road row
    # car pixels (rows 0-1, cols 0-2) point to (0.5, 1.0)
    yy, xx = torch.meshgrid(torch.arange(2.0), torch.arange(3.0), indexing="ij")
    assert torch.allclose(off[0, :2, :3] + yy, torch.full((2, 3), 0.5))
    assert torch.allclose(off[1, :2, :3] + xx, torch.full((2, 3), 1.0))
    assert torch.allclose(off[0, 3:, 5:] + torch.arange(3.0, 6.0)[:, None], torch.tensor(4.0))
    seven = create_dataset("cityscapes", root=tmp_path, classes=7, tasks=["semantic"])
    assert seven.tasks["semantic"]["num_classes"] == 7
    seg7 = seven[0]["labels"]["semantic"]
    assert int(seg7[-1, -1]) == 255 and int(seg7[seg7 != 255].max()) < 7
    # resizing scales the offsets with the image
    big = create_dataset("cityscapes", root=tmp_path, tasks=["instance"], resolution=(12, 16))
    assert torch.allclose(big[1]["labels"]["instance"][0, 0, 0], 2 * off[0, 0, 0])


def test_cityscapes_errors(tmp_path):
    _write_cityscapes(tmp_path, instance=False)
    assert "instance" not in create_dataset("cityscapes", root=tmp_path).tasks
    with pytest.raises(BranchnasError, match=r"instance.*layout"):
        create_dataset("cityscapes", root=tmp_path, tasks=["instance"])
    with pytest.raises(BranchnasError, match="7 or 19"):
        create_dataset("cityscapes", root=tmp_path, classes=20)
    with pytest.raises(BranchnasError, match=r"no val folder.*label_19 or label_7"):
        create_dataset("cityscapes", split="val", root=tmp_path)
    (tmp_path / "train" / "image" / "0.npy").write_bytes(b"garbage")
    ds = create_dataset("cityscapes", root=tmp_path)
    with pytest.raises(BranchnasError, match=r"cannot read .*image/0\.npy"):
        ds[0]


# -------------------------------------------------------------------------------- CelebA

CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()


def _write_celeba(root, official=True, n=5):
    img_dir = root / ("Img" if official else "") / "img_align_celeba"
    anno = root / ("Anno" if official else "")
    ev = root / ("Eval" if official else "")
    for d in (img_dir, anno, ev):
        d.mkdir(parents=True, exist_ok=True)
    values = RNG.choice([-1, 1], size=(n, 40))
    lines = [str(n), " ".join(CELEBA_ATTRS) + " "]
    parts = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(RNG.integers(0, 256, (22, 18, 3), dtype=np.uint8)).save(img_dir / name)
        # the official file pads values to width 2: "000001.jpg -1  1  1 -1 ..."
        lines.append(name + " " + " ".join(f"{v:2d}" for v in values[i]))
        parts.append(f"{name} {[0, 0, 0, 1, 2][i % 5]}")
    (anno / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (ev / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return values


@pytest.mark.parametrize("official", [True, False])
def test_celeba_reads_official_layout(tmp_path, official):
    values = _write_celeba(tmp_path, official=official)
    train = create_dataset("celeba", split="train", root=tmp_path)
    assert len(train) == 3 and len(create_dataset("celeba", split="test", root=tmp_path)) == 1
    names = [a.lower() for a in CELEBA_ATTRS]
    assert list(train.tasks) == names and names[0] == "5_o_clock_shadow"
    assert all(spec == {"type": "binary"} for spec in train.tasks.values())
    it = train[2]
    assert it["image"].shape == (3, 22, 18) and it["image"].dtype == torch.float32
    got = [float(it["labels"][a]) for a in names]
    assert got == [1.0 if v == 1 else 0.0 for v in values[2]]
    val = create_dataset("celeba", split="val", root=tmp_path, tasks=["smiling", "male"],
                         resolution=16)
    item = val[0]
    assert item["image"].shape == (3, 16, 16) and set(item["labels"]) == {"smiling", "male"}
    assert float(item["labels"]["smiling"]) == float(values[3][CELEBA_ATTRS.index("Smiling")] > 0)


def test_celeba_errors(tmp_path):
    with pytest.raises(BranchnasError, match=r"list_attr_celeba\.txt not found.*img_align"):
        create_dataset("celeba", root=tmp_path)
    _write_celeba(tmp_path)
    with pytest.raises(BranchnasError, match="no task"):
        create_dataset("celeba", root=tmp_path, tasks=["Wings"])
    attr = tmp_path / "Anno" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join(lines[:3] + [lines[3].replace("-1", "0", 1)] + lines[4:]))
    with pytest.raises(BranchnasError, match="line 4"):
        create_dataset("celeba", root=tmp_path)
    attr.write_text("\n".join(lines[:-1]))
    with pytest.raises(BranchnasError, match="says 5 images but 4"):
        create_dataset("celeba", root=tmp_path)
    attr.write_text("\n".join(lines))
    (tmp_path / "Img" / "img_align_celeba" / "000002.jpg").unlink()
    ds = create_dataset("celeba", root=tmp_path)
    with pytest.raises(BranchnasError, match=r"cannot read .*000002\.jpg"):
        ds[1]


# ----------------------------------------------------------------------------- Taskonomy


def _png16(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint16)).save(path)


def _write_taskonomy(root, buildings=("allensville", "beechwood"), views=2):
    for b in buildings:
        for p in range(views):
            stem = f"point_{p}_view_0_domain_"
            rgb = root / "rgb" / b / f"{stem}rgb.png"
            rgb.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(rgb)
            depth = RNG.integers(0, 4096, (H, W))
            depth[0, 0] = 65535
            _png16(root / "depth_zbuffer" / b / f"{stem}depth_zbuffer.png", depth)
            seg = RNG.integers(0, 18, (H, W)).astype(np.uint8)
            seg[0, 1] = 200
            seg[0, 2], seg[0, 3], seg[0, 4], seg[0, 5] = 0, 1, 2, 17
            path = root / "segment_semantic" / b / f"{stem}segmentsemantic.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(seg).save(path)
            scores = RNG.random(365).astype(np.float32)
            scores[40 + p] = 5.0
            path = root / "class_scene" / b / f"{stem}class_scene.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, scores)
            _png16(root / "edge_texture" / b / f"{stem}edge_texture.png",
                   RNG.integers(0, 65536, (H, W)))
            if not (b == buildings[-1] and p == views - 1):  # a hole in the release
                _png16(root / "keypoints2d" / b / f"{stem}keypoints2d.png",
                       RNG.integers(0, 65536, (H, W)))
    (root / "splits").mkdir(exist_ok=True)
    (root / "splits" / "train_val_test_tiny.csv").write_text(
        "id,train,val,test\n" + f"{buildings[0]},1,0,0\n" + f"{buildings[1]},0,1,0\n"
        + "cosmos,0,0,1\n"
    )


def test_taskonomy_reads_per_building_folders(tmp_path):
    _write_taskonomy(tmp_path)
    train = create_dataset("taskonomy", split="train", root=tmp_path)
    val = create_dataset("taskonomy", split="val", root=tmp_path)
    assert train.buildings == ["allensville"] and len(train) == 2 and len(val) == 2
    assert list(train.tasks) == ["depth", "semantic", "scene", "edges", "keypoints"]
    assert train.tasks["semantic"]["num_classes"] == 17
    assert train.tasks["scene"]["num_classes"] == 365
    it = train[1]
    stem = "point_1_view_0_domain_"
    raw = np.array(Image.open(tmp_path / "depth_zbuffer" / "allensville"
                              / f"{stem}depth_zbuffer.png"))
    depth = it["labels"]["depth"]
    assert math.isnan(float(depth[0, 0, 0]))
    assert torch.allclose(depth[0, 1:], torch.from_numpy(raw[1:] / 512.0).float())
    seg = it["labels"]["semantic"]
    # raw 0 and 1 are background, 2..17 the 16 classes (shifted down), others ignored
    assert seg[0, 1:6].tolist() == [255, 0, 0, 1, 16]
    raw = np.array(Image.open(tmp_path / "segment_semantic" / "allensville"
                              / f"{stem}segmentsemantic.png")).astype(np.int64)
    assert torch.equal(seg[1:], torch.from_numpy(np.maximum(raw[1:] - 1, 0)))
    assert int(it["labels"]["scene"]) == 41 and it["labels"]["scene"].dtype == torch.int64
    edges = it["labels"]["edges"]
    assert edges.shape == (1, H, W) and 0 <= float(edges.min()) and float(edges.max()) <= 1
    assert all(it["present"].values())
    # the hole: the last view of the val building has no keypoints file
    hole = val[1]
    assert hole["present"]["keypoints"] is False and torch.isnan(hole["labels"]["keypoints"]).all()
    assert val[0]["present"]["keypoints"] is True
    batch = collate([val[0], val[1]])
    assert batch["present"]["keypoints"].tolist() == [True, False]
    binary = create_dataset("taskonomy", split="train", root=tmp_path, tasks=["edges"],
                            edge_threshold=0.5, resolution=12)
    e = binary[0]["labels"]["edges"]
    assert e.shape == (1, 12, 12) and set(torch.unique(e).tolist()) <= {0.0, 1.0}
    explicit = create_dataset("taskonomy", root=tmp_path, buildings=["allensville", "beechwood"])
    assert len(explicit) == 4
    # a subset of the 365 scene classes, given inline or as a file of indices
    (tmp_path / "indoor.txt").write_text("7\n41\n40\n")
    for subset in ([7, 41, 40], tmp_path / "indoor.txt"):
        sub = create_dataset("taskonomy", root=tmp_path, tasks=["scene"], scene_subset=subset)
        assert sub.tasks["scene"]["num_classes"] == 3
        assert [int(sub[i]["labels"]["scene"]) for i in range(2)] == [2, 1]
    with pytest.raises(BranchnasError, match="scene_subset"):
        create_dataset("taskonomy", root=tmp_path, scene_subset=[1, 1])


def test_taskonomy_errors(tmp_path):
    with pytest.raises(BranchnasError, match=r"rgb not found.*point_<p>_view_<v>"):
        create_dataset("taskonomy", root=tmp_path)
    _write_taskonomy(tmp_path)
    with pytest.raises(BranchnasError, match="none of the test buildings"):
        create_dataset("taskonomy", split="test", root=tmp_path)
    (tmp_path / "splits" / "train_val_test_tiny.csv").unlink()
    with pytest.raises(BranchnasError, match=r"no train_val_test_\*\.csv"):
        create_dataset("taskonomy", root=tmp_path)
    with pytest.raises(BranchnasError, match="no rgb views"):
        (tmp_path / "rgb" / "cosmos").mkdir()
        create_dataset("taskonomy", root=tmp_path, buildings=["cosmos"])
    with pytest.raises(BranchnasError, match="edge_threshold"):
        create_dataset("taskonomy", root=tmp_path, buildings=["allensville"], edge_threshold=2)


# ------------------------------------------------------------------- registry contract
def _rooted(write):
    """A fixture writer for a dataset read from ``root`` (the writer's return value is unused)."""
    def fixture(root):
        write(root)
        return {"root": root}
    return fixture


# every registered dataset: how to put a tiny copy in its exact on-disk format under a root
FIXTURES = {
    "nyuv2": _rooted(_write_nyuv2),
    "cityscapes": _rooted(_write_cityscapes),
    "celeba": _rooted(_write_celeba),
    "taskonomy": _rooted(_write_taskonomy),
    "scenes": lambda root: {"size": 3, "resolution": (32, 32)},  # rendered, cached under BRANCHNAS_CACHE
}


@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_dataset_yields_items_in_the_documented_form(name, tmp_path, monkeypatch):
    """Contract over the dataset registry; a new dataset fails here until it has a fixture."""
    assert name in FIXTURES, f"dataset {name!r} has no on-disk fixture in tests/test_loaders.py"
    monkeypatch.setenv("BRANCHNAS_CACHE", str(tmp_path / "cache"))
    ds = create_dataset(name, split="train", **FIXTURES[name](tmp_path))
    assert len(ds) > 0
    items = [ds[i] for i in range(min(2, len(ds)))]
    for item in items:
        image = item["image"]
        assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
        assert torch.isfinite(image).all()
        assert set(item["present"]) == set(item["labels"]) and set(item["labels"]) <= set(ds.tasks)
    batch = collate(items)
    assert batch["image"].shape[0] == len(items)
