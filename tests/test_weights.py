"""Pretrained weights: found in the torch hub / Hugging Face caches, loaded without running
code, a one-line error naming the file and where to put it when missing, never needed for
accounting."""

from __future__ import annotations

import os

import pytest
import torch

from branchnas.cli import main
from branchnas.errors import BranchnasError
from branchnas.spaces import load_space
from branchnas.spaces.timm_backbone import ResNetBackbone, TimmBackbone

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

TV_FILE = os.path.basename(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)
HUB_ID = "timm/test_convnext.r160_in1k"  # timm's weights for test_convnext


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, and no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _one_line(info) -> str:
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_torchvision_weights_name_the_file_and_the_hub_cache(caches):
    bb = ResNetBackbone("resnet18", weights="IMAGENET1K_V1")
    assert sum(bb.block_params) == 11_176_512  # accounting needs no weights
    with torch.device("meta"):
        bb.make_block(3)
    with pytest.raises(BranchnasError) as info:
        bb.make_block(0)
    msg = _one_line(info)
    where = caches / "torch" / "hub" / "checkpoints" / TV_FILE
    assert TV_FILE in msg and str(where) in msg and "not on this machine" in msg


def test_torchvision_weights_in_the_hub_cache_load_into_every_copy(caches):
    torch.manual_seed(0)
    saved = torchvision.models.resnet18().state_dict()
    path = caches / "torch" / "hub" / "checkpoints" / TV_FILE
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    bb = ResNetBackbone("resnet18", weights="DEFAULT")  # DEFAULT is IMAGENET1K_V1 here
    first, last = bb.make_block(0), bb.make_block(3)
    torch.testing.assert_close(first.conv1.weight, saved["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(first.bn1.running_var, saved["bn1.running_var"], rtol=0, atol=0)
    torch.testing.assert_close(last.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"],
                               rtol=0, atol=0)
    again = bb.make_block(0)  # a second copy starts from the same weights, in its own tensors
    assert torch.equal(again.conv1.weight, first.conv1.weight)
    assert again.conv1.weight.data_ptr() != first.conv1.weight.data_ptr()


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling this would create the marker file


def test_a_weights_file_that_would_run_code_is_refused(caches):
    path = caches / "torch" / "hub" / "checkpoints" / TV_FILE
    path.parent.mkdir(parents=True)
    marker = caches / "ran"
    torch.save({"conv1.weight": _RunsCode(str(marker))}, path)
    bb = ResNetBackbone("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(BranchnasError) as info:
        bb.make_block(0)
    msg = _one_line(info)
    assert str(path) in msg and "tensors only" in msg
    assert not marker.exists()


def _hf_snapshot(caches, repo: str) -> "os.PathLike":
    revision = "0" * 40
    repo_dir = caches / "hf" / "hub" / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snap = repo_dir / "snapshots" / revision
    snap.mkdir(parents=True)
    return snap


def test_timm_weights_in_the_hugging_face_cache_load(caches):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    saved = timm.create_model("test_convnext").state_dict()
    save_file(saved, str(_hf_snapshot(caches, HUB_ID) / "model.safetensors"))
    bb = TimmBackbone("test_convnext", pretrained=True)
    blocks = [bb.make_block(d) for d in range(bb.depth)]
    got = {}
    for block in blocks:
        for k, v in block.state_dict().items():
            top, rest = k.split(".", 1)
            got[top.replace("_", ".", 1) + "." + rest] = v  # stages_0.x -> stages.0.x
    assert got and set(got) <= set(saved)
    for k, v in got.items():
        assert torch.equal(v, saved[k]), k


def test_missing_timm_weights_name_the_file_and_the_hugging_face_cache(caches):
    bb = TimmBackbone("test_convnext", pretrained=True)
    assert bb.block_params  # accounting needs no weights
    with pytest.raises(BranchnasError) as info:
        bb.make_block(0)
    msg = _one_line(info)
    repo_dir = caches / "hf" / "hub" / "models--timm--test_convnext.r160_in1k"
    assert "model.safetensors" in msg and str(repo_dir) in msg and HUB_ID in msg


def test_timm_weights_served_from_a_url_are_looked_for_in_the_torch_hub_cache(caches):
    bb = TimmBackbone("resnet18.tv_in1k", out_indices=[1, 2, 3, 4], pretrained=True)
    with pytest.raises(BranchnasError) as info:
        bb.make_block(0)
    msg = _one_line(info)
    assert str(caches / "torch" / "hub" / "checkpoints" / TV_FILE) in msg
    assert "models--timm--resnet18.tv_in1k" in msg


def test_cityscapes_declares_imagenet_weights_and_describes_the_same_counts(caches, capsys):
    space = load_space("cityscapes-resnet50")
    assert space.backbone.spec["weights"] == "IMAGENET1K_V1"
    assert space.tree_params(space.single_task_tree()) == 139_750_614
    assert space.tree_params(space.fully_shared_tree()) == 92_734_550
    assert main(["describe", "--space", "cityscapes-resnet50"]) == 0
    out = capsys.readouterr().out
    assert "139.75M (139,750,614)" in out and "92.73M (92,734,550)" in out
    assert not (caches / "torch").exists()  # describing downloaded and read nothing


def test_weights_file_is_none_without_weights_and_checks_them_through_cuts(caches):
    from branchnas.spaces import create_backbone

    assert create_backbone("smallcnn").weights_file() is None
    assert create_backbone("resnet18").with_cuts([1]).weights_file() is None
    cut = ResNetBackbone("resnet18", weights="IMAGENET1K_V1").with_cuts([1])
    with pytest.raises(BranchnasError, match=TV_FILE):
        cut.weights_file()


def test_a_training_command_refuses_missing_weights_before_any_work(caches, tmp_path, capsys):
    # the scenes-timm space with pretrained weights that are not on this machine
    from branchnas.spaces import space_dirs

    text = (space_dirs()[0] / "scenes-timm.toml").read_text()
    space_file = tmp_path / "pretrained.toml"
    space_file.write_text(text.replace("pretrained = false", "pretrained = true", 1))
    out = tmp_path / "out"
    rc = main(["train-single", "--space", str(space_file), "--profile", "tiny", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "test_convnext" in lines[0] and "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*"))
