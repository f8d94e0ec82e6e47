"""Tree value type and params/FLOPs accounting."""

import json

import pytest

from branchnas.accounting import counts_total, tree_flops, tree_params
from branchnas.errors import BranchnasError
from branchnas.tree import Tree, TreeError

TASKS = ("seg", "depth", "normals", "edges")


def make_tree():
    return Tree(
        TASKS,
        [
            [["normals", "seg", "depth", "edges"]],
            [["edges", "normals"], ["depth", "seg"]],
            [["normals"], ["edges"], ["seg", "depth"]],
        ],
    )


def test_canonical_order():
    t = make_tree()
    assert t.groupings == (
        (("seg", "depth", "normals", "edges"),),
        (("seg", "depth"), ("normals", "edges")),
        (("seg", "depth"), ("normals",), ("edges",)),
    )
    assert t.index_groupings[2] == ((0, 1), (2,), (3,))
    assert t.depth == 3 and t.num_tasks == 4
    assert t.group_counts == (1, 2, 3)
    assert [t.num_groups(d) for d in range(3)] == [1, 2, 3]


def test_equality_and_hash_on_canonical_form():
    a = make_tree()
    b = Tree(TASKS, [[list(TASKS)], [["seg", "depth"], ["normals", "edges"]],
                     [["seg", "depth"], ["normals"], ["edges"]]])
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    c = Tree(TASKS, [[list(TASKS)], [["seg", "depth"], ["normals", "edges"]],
                     [["seg"], ["depth"], ["normals", "edges"]]])
    assert a != c
    # same groups but a different task order is a different tree (indices differ)
    d = Tree(tuple(reversed(TASKS)), [[list(TASKS)]] * 3)
    assert d != Tree(TASKS, [[list(TASKS)]] * 3)
    assert a.dumps() == b.dumps()


def test_json_round_trip(tmp_path):
    t = make_tree()
    obj = t.to_json()
    assert obj == json.loads(json.dumps(obj))
    assert Tree.from_json(obj) == t
    assert Tree.from_json(t.dumps()) == t
    assert json.loads(t.dumps()) == obj
    p = tmp_path / "tree.json"
    t.save(p)
    assert Tree.load(p) == t
    assert Tree.load(p, depth=3, tasks=TASKS) == t


def test_from_json_reorders_to_expected_tasks():
    t = make_tree()
    order = ("edges", "normals", "depth", "seg")
    u = Tree.from_json(t.to_json(), tasks=order)
    assert u.tasks == order
    assert u.groupings[2] == (("edges",), ("normals",), ("depth", "seg"))


def test_from_index_partitions_and_factories():
    t = Tree.from_index_partitions(TASKS, [[[0, 1, 2, 3]], [[3, 2], [1, 0]], [[2], [3], [0, 1]]])
    assert t == make_tree()
    s = Tree.single_task(TASKS, 2)
    assert s.group_counts == (4, 4)
    f = Tree.fully_shared(TASKS, 2)
    assert f.group_counts == (1, 1)
    # depth 1 need not be shared
    assert Tree(("a", "b"), [[["b"], ["a"]]]).groupings == ((("a",), ("b",)),)


def test_parent():
    t = make_tree()
    assert t.parent(1, 0) == 0 and t.parent(1, 1) == 0
    assert t.parent(2, 0) == 0  # {seg, depth} under {seg, depth}
    assert t.parent(2, 1) == 1 and t.parent(2, 2) == 1
    with pytest.raises(IndexError):
        t.parent(0, 0)
    assert t.group_of(2, "edges") == 2 and t.group_of(1, 0) == 0


def test_ascii():
    t = Tree(("a", "b", "c"), [[["a", "b", "c"]], [["a"], ["b", "c"]]])
    assert t.ascii() == "\n".join([
        "input",
        "└── block 1: a, b, c",
        "    ├── block 2: a",
        "    │   └── head a",
        "    └── block 2: b, c",
        "        ├── head b",
        "        └── head c",
    ])
    # every (depth, group) node and every head appears exactly once
    art = make_tree().ascii()
    assert art.count("block ") == 6 and art.count("head ") == 4


@pytest.mark.parametrize(
    "groupings, fragments",
    [
        ([[["seg", "depth", "normals"]]], ["depth 1", "missing", "edges"]),
        ([[["seg", "depth", "normals", "edges", "seg"]]], ["depth 1", "'seg'", "more than once"]),
        ([[["seg", "depth"], ["normals", "edges", "depth"]]], ["depth 1", "'depth'", "more than once"]),
        ([[list(TASKS) + ["sky"]]], ["depth 1", "unknown task 'sky'"]),
        ([[list(TASKS)], [["seg", "depth"], [], ["normals", "edges"]]], ["depth 2", "empty"]),
        ([[list(TASKS)], [["seg"], ["depth", "normals", "edges"]], [["seg", "depth"], ["normals", "edges"]]],
         ["depth 3", "[seg, depth]", "depth 2", "refine"]),
        ([[list(TASKS)], [["seg", "depth", "normals"]]], ["depth 2", "missing", "edges"]),
        ([], ["at least one depth"]),
    ],
)
def test_invalid_trees(groupings, fragments):
    with pytest.raises(TreeError) as e:
        Tree(TASKS, groupings)
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)
    assert isinstance(e.value, BranchnasError)


def test_invalid_tasks():
    with pytest.raises(TreeError, match="listed twice"):
        Tree(("a", "a"), [[["a"]]])
    with pytest.raises(TreeError, match="at least one task"):
        Tree((), [[]])
    with pytest.raises(TreeError, match="out of range"):
        Tree.from_index_partitions(("a", "b"), [[[0, 2]]])
    with pytest.raises(TreeError, match="positive integer"):
        Tree.single_task(("a",), 0)


def test_from_json_errors():
    obj = make_tree().to_json()
    with pytest.raises(TreeError, match="3 depths but 4 were expected"):
        Tree.from_json(obj, depth=4)
    with pytest.raises(TreeError, match=r"missing tasks \[sky\]"):
        Tree.from_json(obj, tasks=list(TASKS) + ["sky"])
    with pytest.raises(TreeError, match=r"unexpected tasks \[edges\]"):
        Tree.from_json(obj, tasks=TASKS[:3])
    with pytest.raises(TreeError, match="not valid JSON"):
        Tree.from_json("{nope")
    with pytest.raises(TreeError, match='"tasks" and "groupings"'):
        Tree.from_json({"tasks": list(TASKS)})
    with pytest.raises(TreeError, match='"groupings" must be'):
        Tree.from_json({"tasks": list(TASKS), "groupings": [["seg"]]})
    with pytest.raises(TreeError, match="cannot read"):
        Tree.load("/nonexistent/tree.json")


def test_accounting():
    t = make_tree()  # group counts 1, 2, 3
    heads = {"seg": 5, "depth": 6, "normals": 7, "edges": 8}
    assert tree_params(t, [100, 10, 1]) == 100 + 20 + 3
    assert tree_params(t, [100, 10, 1], stem_params=1000, head_params=heads) == 1123 + 26
    assert tree_flops(t, [7, 3, 2], head_flops=heads) == 7 + 6 + 6 + 26
    assert counts_total((1, 2, 3), (100, 10, 1), 4) == 127
    s = Tree.single_task(TASKS, 3)
    assert tree_params(s, [100, 10, 1]) == 4 * 111
    with pytest.raises(BranchnasError, match="3 depths but 2"):
        tree_params(t, [1, 2])
    with pytest.raises(BranchnasError, match="no head params for tasks edges"):
        tree_params(t, [1, 2, 3], head_params={"seg": 1, "depth": 1, "normals": 1})
    with pytest.raises(BranchnasError, match="non-negative"):
        tree_params(t, [1, -2, 3])
