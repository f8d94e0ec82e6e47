"""Search-space files: the shipped spaces, validation of every key, describe, accounting."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from branchnas.errors import BranchnasError
from branchnas.spaces import (
    SearchSpace,
    describe_space,
    format_description,
    list_spaces,
    load_space,
    space_dirs,
)
from branchnas.tree import Tree

REQUIRED = {
    "scenes",
    "scenes-attributes",
    "nyuv2-segnet",
    "cityscapes-resnet50",
    "taskonomy-resnet50",
    "celeba-thin32",
    "celeba-thin64",
}


def test_the_required_spaces_ship_in_the_repository():
    assert REQUIRED <= set(list_spaces())
    repo_dir = Path(__file__).resolve().parent.parent / "branchnas" / "resources" / "search_spaces"
    assert repo_dir in space_dirs()


# every shipped space, so a new file is tested without editing this one
SHIPPED = list_spaces()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_space_loads_and_round_trips(name):
    space = load_space(name)
    assert space.name == name
    assert space.depth == len(space.blocks) == len(space.backbone.blocks) == len(space.locations)
    assert len(space.block_params) == len(space.block_flops) == space.depth
    assert (
        set(space.heads) == set(space.head_params) == set(space.head_flops) == set(space.task_names)
    )
    assert space.dataset_name
    again = SearchSpace.from_dict(space.to_dict(), name=name)
    assert describe_space(again) == describe_space(space)
    assert again.training == space.training


def test_scenes_space_is_the_embedded_benchmark_and_matches_the_dataset_catalogue():
    from branchnas.data.scenes import SCENES_TASKS

    space = load_space("scenes")
    assert space.backbone.name == "smallcnn" and space.depth == 4
    assert space.input_size == (64, 64)
    assert space.dataset_name == "scenes"
    assert tuple(space.dataset_kwargs["resolution"]) == space.input_size
    dense = [t.name for t in space.tasks if t.dense]
    assert dense == ["semseg", "depth", "normals", "edges"]
    for t in space.tasks:
        spec = dict(SCENES_TASKS[t.name])
        assert spec.pop("type") == t.type
        assert {k: t.params[k] for k in spec} == spec

    attrs = load_space("scenes-attributes")
    assert len(attrs.tasks) == 40 and all(t.type == "binary" for t in attrs.tasks)
    assert all(t.name in SCENES_TASKS for t in attrs.tasks)
    assert set(attrs.heads.values()) == {"linear"}


def _catalogue(space):
    """What the space's dataset can label (name -> spec), from the data package."""
    if space.dataset_name == "scenes":
        from branchnas.data.scenes import SCENES_TASKS

        return SCENES_TASKS
    if space.dataset_name == "cityscapes":
        from branchnas.data.cityscapes import cityscapes_tasks

        return cityscapes_tasks()
    if space.dataset_name == "nyuv2":
        from branchnas.data.nyuv2 import NYUV2_TASKS

        return NYUV2_TASKS
    if space.dataset_name == "taskonomy":
        from branchnas.data.taskonomy import taskonomy_tasks

        return taskonomy_tasks()
    return None  # celeba: names come from the dataset's attribute file


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_agree_with_their_dataset(name):
    space = load_space(name)
    assert tuple(space.dataset_kwargs["resolution"]) == space.input_size
    catalogue = _catalogue(space)
    if catalogue is None:
        return
    for t in space.tasks:
        assert t.name in catalogue, t.name
        spec = dict(catalogue[t.name])
        assert spec.pop("type") == t.type, t.name
        assert {k: t.params[k] for k in spec} == spec, t.name


def test_cityscapes_space_reproduces_table_1_parameter_counts():
    # Paper, Table 1: three single-task networks 138M parameters, the MTL baseline 92M.
    space = load_space("cityscapes-resnet50")
    # exactly what the hand-sliced torchvision ResNet-50 gave before the timm cut replaced it
    assert space.tree_params(space.single_task_tree()) == 139_750_614
    assert space.tree_params(space.fully_shared_tree()) == 92_734_550
    assert space.tree_flops(space.fully_shared_tree()) == 331_958_190_080
    assert space.task_names == ["semantic", "instance", "depth"]
    assert space.input_size == (256, 512)
    assert [b.stride for b in space.blocks] == [4, 8, 8, 8]
    assert set(space.heads.values()) == {"psp"}
    single = space.tree_params(space.single_task_tree())
    shared = space.tree_params(space.fully_shared_tree())
    assert abs(single / 138e6 - 1) < 0.05, single
    assert abs(shared / 92e6 - 1) < 0.05, shared
    # and each single-task network is one encoder plus one head
    for t in space.task_names:
        one = space.tree_params(Tree.single_task([t], space.depth))
        assert one == sum(space.block_params) + space.head_params[t]


def test_celeba_spaces_use_thin_vgg_with_fc_blocks_and_40_attributes():
    for w in (32, 64):
        space = load_space(f"celeba-thin{w}")
        assert space.backbone.name == "vgg16_thin" and space.backbone.spec["width"] == w
        assert space.locations == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
        assert len(space.tasks) == 40 and {t.type for t in space.tasks} == {"binary"}
        assert space.feature_channels == 2 * w


def test_taskonomy_and_nyuv2_spaces():
    tk = load_space("taskonomy-resnet50")
    assert len(tk.tasks) == 5 and [b.stride for b in tk.blocks][-1] == 16
    assert tk.heads["scene"] == "mlp" and tk.heads["depth"] == "psp"
    ny = load_space("nyuv2-segnet")
    assert ny.backbone.name == "segnet" and ny.depth == 5
    assert [t.type for t in ny.tasks] == ["segmentation", "depth", "normals"]


def test_accounting_of_any_tree_from_metadata():
    space = load_space("scenes")
    names = space.task_names
    tree = Tree(
        names, [[names], [names], [names[:4], names[4:]], [names[:2], names[2:4], names[4:]]]
    )
    bp, hp = space.block_params, space.head_params
    assert space.tree_params(tree) == bp[0] + bp[1] + 2 * bp[2] + 3 * bp[3] + sum(hp.values())
    bf, hf = space.block_flops, space.head_flops
    assert space.tree_flops(tree) == bf[0] + bf[1] + 2 * bf[2] + 3 * bf[3] + sum(hf.values())
    sub = Tree.single_task(["depth", "scene"], 4)
    assert space.tree_params(sub) == 2 * sum(bp) + hp["depth"] + hp["scene"]
    with pytest.raises(BranchnasError, match="4 cut points"):
        space.tree_params(Tree.fully_shared(names, 3))
    with pytest.raises(BranchnasError, match="lacks"):
        space.tree_params(Tree.fully_shared(["depth", "sky"], 4))


def test_describe_space_and_its_table():
    space = load_space("scenes")
    names = space.task_names
    tree = Tree(names, [[names]] * 3 + [[[n] for n in names]])
    desc = describe_space(space, tree)
    assert [b["name"] for b in desc["blocks"]] == space.locations
    for b, info, f in zip(desc["blocks"], space.blocks, space.block_flops):
        assert (b["out_channels"], b["stride"], b["params"], b["flops"]) == (
            info.out_channels,
            info.stride,
            info.params,
            f,
        )
    totals = desc["totals"]
    assert set(totals) == {"single_task", "fully_shared", "tree"}
    assert totals["tree"] == {"params": space.tree_params(tree), "flops": space.tree_flops(tree)}
    st = space.single_task_tree()
    assert totals["single_task"]["params"] == space.tree_params(st)
    assert (
        totals["fully_shared"]["params"]
        < totals["tree"]["params"]
        < totals["single_task"]["params"]
    )
    assert describe_space(space)["totals"].keys() == {"single_task", "fully_shared"}
    text = format_description(desc)
    for token in [
        "block1",
        "block4",
        "semseg",
        "fcn",
        "all single-task",
        "fully shared",
        "this tree",
    ]:
        assert token in text
    assert f"{totals['tree']['params']:,}" in text


def test_cuts_merge_blocks_into_fewer_branch_points(tmp_path):
    path = tmp_path / "cut.toml"
    path.write_text(
        BASE.replace('name = "smallcnn"', 'name = "smallcnn"\ncuts = ["block2", "block3"]')
    )
    space = load_space(str(path))
    full = load_space("scenes")
    assert space.depth == 3 and space.locations == ["block2", "block3", "block4"]
    assert space.block_params[0] == full.block_params[0] + full.block_params[1]
    assert sum(space.block_flops) == sum(full.backbone.block_flops((32, 32)))
    assert SearchSpace.from_dict(space.to_dict()).locations == space.locations


def test_subset_keeps_heads_and_backbone():
    space = load_space("scenes")
    sub = space.subset(["scene", "depth"])
    assert sub.task_names == ["scene", "depth"]
    assert sub.head_params == {t: space.head_params[t] for t in ["scene", "depth"]}
    assert sub.backbone is space.backbone
    with pytest.raises(BranchnasError, match="no task"):
        space.subset(["sky"])


def test_programmatic_spaces_check_their_head_mappings():
    space = load_space("scenes")
    with pytest.raises(BranchnasError, match="heads name task.*sky"):
        SearchSpace("x", space.backbone, space.tasks, (32, 32), heads={"sky": "fcn"})
    with pytest.raises(BranchnasError, match="task 'depth': .*image-level|task 'depth': .*dense"):
        SearchSpace("x", space.backbone, space.tasks, (32, 32), heads={"depth": "mlp"})
    with pytest.raises(BranchnasError, match="twice"):
        SearchSpace("x", space.backbone, space.tasks * 2, (32, 32))


def test_load_space_errors_for_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(
        BranchnasError, match="unknown search space 'nope'; choose one of: .*scenes"
    ):
        load_space("nope")
    with pytest.raises(BranchnasError, match="does not exist"):
        load_space(str(tmp_path / "missing.toml"))


BASE = textwrap.dedent(
    """\
    description = "test"

    [backbone]
    name = "smallcnn"

    [input]
    size = [32, 32]

    [dataset]
    name = "scenes"

    [[tasks]]
    name = "seg"
    type = "segmentation"
    params = { num_classes = 3 }

    [[tasks]]
    name = "cls"
    type = "classification"
    params = { num_classes = 4 }

    [training]
    lr = 0.01
    """
)

MALFORMED = [
    # (replace this, with this, the key the error must name)
    ("[input]\nsize = [32, 32]\n", "", "'input'"),
    ('description = "test"', 'descripton = "test"', "'descripton'"),
    ('name = "smallcnn"', 'name = "smallcnn2"', "'backbone.name'"),
    ('name = "smallcnn"', 'name = "smallcnn"\nwidth = 3', "'backbone.width'"),
    ('name = "smallcnn"', 'name = "smallcnn"\nwidths = [4, 8]', "'backbone'"),
    ('name = "smallcnn"', 'name = "smallcnn"\ncuts = ["layer9"]', "'backbone.cuts'"),
    ('name = "smallcnn"', 'name = "smallcnn"\ncuts = ["block3", "block1"]', "'backbone.cuts'"),
    ("size = [32, 32]", "size = [32]", "'input.size'"),
    ("size = [32, 32]", 'size = ["a", 32]', "'input.size'"),
    ("size = [32, 32]", "size = [32, 32]\nchannels = 3", "'input.channels'"),
    ('[dataset]\nname = "scenes"\n', "[dataset]\n", "'dataset.name'"),
    ('type = "segmentation"', 'type = "segmentaton"', "'tasks[0]'"),
    ("params = { num_classes = 3 }", "params = { classes = 3 }", "'tasks[0]'"),
    ('name = "cls"', 'name = "seg"', "'tasks[1].name'"),
    ('name = "cls"', 'name = "cls"\ncolour = "red"', "'tasks[1].colour'"),
    ('name = "cls"', 'name = "cls"\nhead = "psp"', "'tasks[1].head'"),
    ('name = "seg"', 'name = "seg"\nhead = "unet"', "'tasks[0].head'"),
    ('name = "seg"', 'name = "seg"\nhead_params = { width = 3 }', "'tasks[0].head_params.width'"),
    (
        'name = "seg"',
        'name = "seg"\nhead_params = { in_channels = 3 }',
        "'tasks[0].head_params.in_channels'",
    ),
    ('name = "seg"', 'name = "seg"\nhead_params = { channels = -1 }', "'tasks[0].head_params'"),
    (
        "[training]\nlr = 0.01",
        "[training]\nlr = 0.01\n[training.sub]\nx = { y = 1 }",
        "'training.sub'",
    ),
    ('description = "test"', '[heads]\ndense = "mlp"', "'heads.dense'"),
    ('description = "test"', '[heads]\nvector = "mlp"', "'heads.vector'"),
    ('name = "smallcnn"', 'name = "vgg16_thin"', "'tasks[0].type'"),
    ("size = [32, 32]", "size = [0, 32]", "'input.size'"),
    ("[input]", "[input", "invalid TOML"),
]


@pytest.mark.parametrize("old,new,key", MALFORMED)
def test_a_malformed_file_fails_with_one_line_naming_the_file_and_key(tmp_path, old, new, key):
    assert old in BASE
    path = tmp_path / "bad.toml"
    path.write_text(BASE.replace(old, new, 1))
    with pytest.raises(BranchnasError) as info:
        load_space(str(path))
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert key in msg, msg


@pytest.mark.parametrize(
    "edit,key",
    [
        (lambda raw: raw.pop("tasks"), "'tasks'"),
        (lambda raw: raw.update(tasks=3), "'tasks'"),
        (lambda raw: raw.update(tasks=[]), "'tasks'"),
        (lambda raw: raw["tasks"].append("depth"), "'tasks[2]'"),
        (lambda raw: raw["tasks"][0].pop("type"), "'tasks[0].type'"),
        (lambda raw: raw.update(backbone="smallcnn"), "'backbone'"),
        (lambda raw: raw.update(description=3), "'description'"),
    ],
)
def test_from_dict_names_the_key_of_structural_errors(edit, key):
    from branchnas.spaces.space import tomllib

    raw = tomllib.loads(BASE)
    edit(raw)
    with pytest.raises(BranchnasError, match="^search space 'x': key " + key.replace("[", r"\[")):
        SearchSpace.from_dict(raw, name="x")


def test_the_base_file_of_the_malformed_cases_is_valid(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(BASE)
    space = load_space(path)
    assert space.name == "good" and space.task_names == ["seg", "cls"]
    assert space.heads == {"seg": "fcn", "cls": "mlp"}  # the task types' default heads
    assert space.training == {"lr": 0.01}
    assert space.source == str(path)
