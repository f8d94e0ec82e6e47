"""The paper's training protocol in the pipeline (appendix A/B): the baselines' own settings
through the config resolver, cross-stitch / NDDR-CNN started from the converged single-task
weights with SGD, trees on the MTL baseline's tuned settings, the run directory's record."""

import json

import pytest
import torch

from branchnas.errors import BranchnasError
from branchnas.models.baselines import baseline_meta, list_baselines
from branchnas.pipeline import stages
from branchnas.pipeline.resolve import model_protocol, resolve_run
from branchnas.training import RunDir, load_single_task_model

TASKS = ["semseg", "depth"]


@pytest.fixture(autouse=True)
def _scene_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRANCHNAS_CACHE", str(tmp_path_factory.getbasetemp() / "scenes-cache"))


def _spec(out, **overrides):
    return resolve_run("scenes", profile="tiny", tasks=TASKS, out=out,
                       overrides={"progress": False, **overrides})


@pytest.mark.parametrize("name", list_baselines())
def test_each_baselines_config_carries_its_protocol(tmp_path, name):
    spec = _spec(tmp_path)
    config, plain = spec.train_config(name), spec.train_config()
    protocol = baseline_meta(name).get("training", {})
    assert model_protocol(name) == protocol
    for key, value in protocol.items():
        assert getattr(config, key) == value
    rest = {k: v for k, v in plain.to_dict().items() if k not in protocol}
    assert {k: config.to_dict()[k] for k in rest} == rest  # nothing else changes


def test_protocol_sits_below_tuned_settings_and_the_command_line(tmp_path):
    assert _spec(tmp_path, lr=0.05).train_config("cross_stitch").lr == 0.05
    spec = _spec(tmp_path)
    path = spec.layout.tuned(spec.space.name, "cross_stitch")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"settings": {"optimizer": "adam", "lr": 0.002}}))
    config = spec.train_config("cross_stitch")
    assert (config.optimizer, config.lr, config.momentum) == ("adam", 0.002, 0.9)


def test_trees_reuse_the_mtl_baselines_tuned_settings(tmp_path):
    """Appendix A: 'We reuse the hyperparameter setting with the best result for the baseline
    multi-task network' for the branched networks (a tree tuned itself keeps its own)."""
    spec = _spec(tmp_path)
    tree = spec.space.fully_shared_tree()
    tree_file = tmp_path / "t.json"
    tree.save(tree_file)
    assert spec.train_config(f"tree:{tree_file}").lr == spec.train_config().lr
    shared = spec.layout.tuned(spec.space.name, "shared")
    shared.parent.mkdir(parents=True)
    shared.write_text(json.dumps({"settings": {"lr": 0.0123, "batch_size": 4}}))
    assert spec.train_config(f"tree:{tree_file}").lr == 0.0123
    assert spec.train_config(tree).batch_size == 4
    own = spec.layout.tuned(spec.space.name, f"tree:{tree_file}")
    own.write_text(json.dumps({"settings": {"lr": 0.0456}}))
    assert spec.train_config(f"tree:{tree_file}").lr == 0.0456
    assert spec.train_config("single:semseg").lr == spec.train_config().lr  # not the shared's


@pytest.mark.parametrize("name", ["cross_stitch", "nddr"])
def test_soft_sharing_starts_from_the_converged_singles_and_trains_with_sgd(tmp_path, monkeypatch,
                                                                          name):
    spec = _spec(tmp_path)
    with pytest.raises(BranchnasError, match="train-single"):
        stages.run_baseline(spec.space, name, spec.out, spec.train_config(name), device="cpu")
    for t in TASKS:
        stages.run_singles(spec.space, spec.out, spec.train_config(f"single:{t}"), tasks=[t],
                           device="cpu")
    started = {}
    real_train = stages.train

    def spy(model, *args, **kwargs):
        started.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        started["groups"] = model.param_groups(1.0)
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(stages, "train", spy)
    result = stages.run_baseline(spec.space, name, spec.out, spec.train_config(name), device="cpu")
    # the starting weights are each single-task network's (its best epoch, as restored)
    for i, t in enumerate(TASKS):
        single = load_single_task_model(spec.space, t, spec.out).state_dict()
        assert torch.equal(RunDir(spec.layout.single(t)).model_state()[next(iter(single))],
                           single[next(iter(single))])
        for key, value in single.items():
            if key.startswith("nodes."):  # nodes.<d>.0.<rest> -> columns.<i>.<d>.<rest>
                _, d, _, rest = key.split(".", 3)
                assert torch.equal(started[f"columns.{i}.{d}.{rest}"], value), key
            else:  # heads.<t>.<rest>
                assert torch.equal(started[key], value), key
    assert {g["name"]: g["lr"] for g in started["groups"]} == {"network": 1.0, "units": 100.0}
    # the run directory records the protocol it ran
    stored = json.loads((spec.layout.baseline(name) / "config.json").read_text())
    assert (stored["optimizer"], stored["lr"], stored["momentum"]) == ("sgd", 1e-3, 0.9)
    assert stored["init_from_single"] is True and stored["unit_lr_mult"] == 100.0
    ckpt = RunDir(spec.layout.baseline(name)).load_checkpoint()
    lrs = sorted(g["base_lr"] for g in ckpt["optimizer"]["param_groups"] if g["params"])
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(0.1)
    # every result records its epochs and cost
    for key in ("epochs", "best_epoch", "stop_reason", "images_seen", "seconds", "device"):
        assert result.extra[key] is not None, key


# ------------------------------------------------------------------ shared prefix of a space

def test_cityscapes_shares_block_one_and_the_search_honours_a_spaces_prefix():
    from branchnas._resources import shipped_resource_dir
    from branchnas.pipeline.recommend import recommend
    from branchnas.spaces import SearchSpace, load_space

    city = load_space("cityscapes-resnet50")
    assert city.shared_prefix == 1 and city.subset(["depth", "semantic"]).shared_prefix == 1
    assert SearchSpace.from_dict(city.to_dict()).shared_prefix == 1
    scenes = load_space("scenes")
    assert scenes.shared_prefix == 0
    raw = scenes.to_dict()
    raw["search"] = {"shared_prefix": 2}
    two = SearchSpace.from_dict(raw, name="scenes")
    aff = shipped_resource_dir("affinity") / "scenes.npz"
    budget = two.tree_params(two.single_task_tree())
    free = recommend(space=scenes, affinity=aff, budget=budget, top_k=3)
    assert any(len(s.tree.groupings[1]) > 1 for s in free.result.trees)  # it would branch there
    # (no affinity ships for Cityscapes: a copy of scenes with the first 2 blocks shared)
    for s in recommend(space=two, affinity=aff, budget=budget, top_k=3).result.trees:
        assert len(s.tree.groupings[0]) == 1 and len(s.tree.groupings[1]) == 1
    forced = recommend(space=two, affinity=aff, budget=budget, top_k=3, shared_prefix=0)
    assert [s.tree for s in forced.result.trees] == [s.tree for s in free.result.trees]


@pytest.mark.parametrize("value", [4, -1, "1", True])
def test_a_bad_shared_prefix_is_one_line_naming_the_key(value):
    from branchnas.spaces import SearchSpace, load_space

    raw = load_space("scenes").to_dict()
    raw["search"] = {"shared_prefix": value}
    with pytest.raises(BranchnasError, match=r"search\.shared_prefix") as err:
        SearchSpace.from_dict(raw, name="scenes")
    assert "\n" not in str(err.value)


def test_taskonomy_weights_keypoints_and_edges_ten():
    from branchnas.spaces import load_space
    from branchnas.training import TrainConfig

    space = load_space("taskonomy-resnet50")
    assert TrainConfig.from_sources(space.training).task_weights == {"keypoints": 10.0,
                                                                    "edges": 10.0}


def test_a_task_weight_for_a_task_the_space_lacks_is_refused():
    from branchnas.spaces import SearchSpace, load_space

    raw = load_space("taskonomy-resnet50").to_dict()
    raw["training"]["task_weights"] = {"keypoint": 10}
    with pytest.raises(BranchnasError, match=r"training\.task_weights.*keypoint"):
        SearchSpace.from_dict(raw, name="taskonomy")
