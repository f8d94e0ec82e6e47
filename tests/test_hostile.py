"""Hostile input, every command: each case must end with a non-zero exit, exactly one ``error:``
line, no traceback, no new files and nothing executed (tests/_hostile.py: ``assert_refused``).

Classes (``CASES``' first field): ``exec`` code from a file, ``checkpoint`` damaged or foreign
checkpoints, ``early`` options that used to be checked after expensive stages, ``value``
values that used to be accepted silently, ``fs`` the file system, ``malformed`` malformed files,
``limits`` limits with stated maxima, ``data`` bad dataset files. Run in-process (fast); cases
that need trained runs share one tiny training (module fixture).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from _hostile import SHIPPED_AFFINITY, Workspace, assert_refused, run_cli, snapshot

# --------------------------------------------------------------------------- inputs

BINARY = bytes(range(256)) * 8  # not UTF-8
DEEP_JSON = "[" * 200_000 + "]" * 200_000


def _space_binary(ws):
    return ws.write("binary.toml", BINARY)


def _space_lr_fast(ws):
    return ws.space(lambda s: s + '\n[training]\nlr = "fast"\n', "lr.toml")


def _space_unknown_dataset(ws):
    return ws.space(lambda s: s.replace('name = "scenes"', 'name = "banana"'), "dataset.toml")


def _space_1x1(ws):
    return ws.space(lambda s: s.replace("size = [64, 64]", "size = [1, 1]"), "tiny-input.toml")


def _space_widths(value):
    def make(ws):
        return ws.space(lambda s: s.replace('name = "smallcnn"', f'name = "smallcnn"\nwidths = {value}'),
                        "widths.toml")
    return make


def _space_invalid_toml(ws):
    return ws.write("broken.toml", "[backbone\nname = 'smallcnn'\n")


def _space_deep_toml(ws):
    return ws.write("deep.toml", "x = " + "[" * 100_000 + "]" * 100_000 + "\n")


BAD_SPACES = {
    "banana": lambda ws: "banana",
    "missing-file": lambda ws: str(ws.inp / "nope.toml"),
    "binary": _space_binary,
    "lr-fast": _space_lr_fast,
    "unknown-dataset": _space_unknown_dataset,
    "input-1x1": _space_1x1,
    "widths-wide": _space_widths('"wide"'),
    "widths-16": _space_widths("16"),
    "invalid-toml": _space_invalid_toml,
    "deep-toml": _space_deep_toml,
    "directory": lambda ws: str(ws.inp),
}

# Each training command, with the least work should a check be missing (tiny profile).
TRAIN_COMMANDS = {
    "train-single": lambda ws: ["train-single", "--profile", "tiny", "--out", ws.out],
    "train": lambda ws: ["train", "--tree", ws.tree(), "--profile", "tiny", "--out", ws.out],
    "baseline": lambda ws: ["baseline", "shared", "--profile", "tiny", "--out", ws.out],
    "affinity": lambda ws: ["affinity", "--profile", "tiny", "--k", "8", "--out", ws.out],
    "run": lambda ws: ["run", "--profile", "tiny", "--out", ws.out],
    "demo": lambda ws: ["demo", "--profile", "tiny", "--out", ws.out],
    "tune": lambda ws: ["tune", "--model", "shared", "--trials", "1", "--out", ws.out],
    "validate": lambda ws: ["validate", "--profile", "tiny", "--out", ws.out,
                            "--results-dir", ws.out + "/results"],
}

# Options every training command takes, each bad in its own way.
BAD_TRAIN_OPTIONS = {
    "device-banana": lambda ws: ["--device", "banana"],
    "device-cuda7": lambda ws: ["--device", "cuda:7"],
    "lr-inf": lambda ws: ["--lr", "inf"],
    "lr-negative": lambda ws: ["--lr", "-1"],
    "epochs-0": lambda ws: ["--epochs", "0"],
    "epochs-huge": lambda ws: ["--epochs", "10000000"],
    "weighting-bogus": lambda ws: ["--weighting", "bogus"],
    "task-batch-banana": lambda ws: ["--task-batch-size-for", "banana=3"],
    "task-batch-zero": lambda ws: ["--task-batch-size-for", "depth=0"],
    "out-under-file": lambda ws: ["--out", ws.a_file() + "/sub"],
    "out-is-file": lambda ws: ["--out", ws.a_file()],
    "out-proc": lambda ws: ["--out", "/proc/branchnas-hostile/out"],
}

CASES = []  # (class, id, build(ws) -> argv, match or None)


def case(klass, name, build, match=None):
    CASES.append((klass, name, build, match))


for cmd, base in TRAIN_COMMANDS.items():
    for opt, extra in BAD_TRAIN_OPTIONS.items():
        klass = "fs" if opt.startswith("out-") else "value" if opt != "weighting-bogus" else "early"
        case(klass, f"{cmd}:{opt}", lambda ws, b=base, e=extra: b(ws) + e(ws))
    for sp in ("banana", "binary", "lr-fast", "unknown-dataset", "input-1x1", "widths-wide"):
        case("malformed", f"{cmd}:space-{sp}",
             lambda ws, b=base, s=BAD_SPACES[sp]: b(ws) + ["--space", s(ws)])

for sp, make in BAD_SPACES.items():
    case("malformed", f"describe:space-{sp}", lambda ws, m=make: ["describe", "--space", m(ws)])
    case("malformed", f"search:space-{sp}", lambda ws, m=make: ["search", "--space", m(ws), "--budget", "1M"])

# the pipeline's own options: all used to be checked after training (or quietly defaulted)
for cmd in ("run", "demo"):
    base = TRAIN_COMMANDS[cmd]
    for name, extra, klass in (
        ("baselines-bogus", ["--baselines", "bogus"], "early"),
        ("strategy-bogus", ["--strategy", "bogus"], "early"),
        ("measure-bogus", ["--measure", "bogus"], "early"),
        ("budgets-1e400", ["--budgets=1e400"], "early"),
        ("budgets-comma", ["--budgets=,"], "value"),
        ("budgets-trailing-comma", ["--budgets=1M,"], "value"),
        ("budgets-text", ["--budgets=abc"], "value"),
        ("budgets-zero", ["--budgets=0"], "value"),
        ("budgets-below-cheapest", ["--budgets=10"], "value"),
        ("k-0", ["--k", "0"], "value"),
        ("k-2", ["--k", "2"], "value"),
        ("k-huge", ["--k", "10000000"], "limits"),
        ("tasks-banana", ["--tasks", "banana"], "value"),
        ("tasks-twice", ["--tasks", "depth", "depth"], "value"),
        ("jobs-0", ["--jobs", "0"], "value"),
        ("profile-bogus", ["--profile", "bogus"], "value"),
    ):
        case(klass, f"{cmd}:{name}", lambda ws, b=base, e=extra: b(ws) + e)

case("value", "train-single:tasks-banana", lambda ws: TRAIN_COMMANDS["train-single"](ws) + ["--tasks", "banana"])
for name, extra, klass in (
    ("num-workers-huge", ["--num-workers", "100000"], "limits"),
    ("threads-0", ["--threads", "0"], "value"),
    ("momentum-nan", ["--momentum", "nan"], "value"),
    ("gamma-5", ["--gamma", "5"], "value"),
    ("batch-size-negative", ["--batch-size", "-3"], "value"),
    ("max-train-batches-0", ["--max-train-batches", "0"], "value"),
    ("eval-every-0", ["--eval-every", "0"], "value"),
    ("amp-bogus", ["--amp", "bogus"], "value"),
):
    case(klass, f"train-single:{name}", lambda ws, e=extra: TRAIN_COMMANDS["train-single"](ws) + e)
# a shipped space whose dataset needs a root (and takes no `size` from the tiny profile)
for cmd in ("train-single", "run", "demo", "baseline"):
    case("data", f"{cmd}:dataset-without-root", lambda ws, c=cmd: TRAIN_COMMANDS[c](ws) + ["--space", "nyuv2-segnet"])
case("early", "run:baselines-twice", lambda ws: TRAIN_COMMANDS["run"](ws) + ["--baselines", "shared", "shared"])
case("fs", "search:runs-missing", lambda ws: ["search", "--runs", str(ws.inp / "nope")])

# train --tree / --name
_train = lambda ws, tree, *extra: ["train", "--tree", tree, "--profile", "tiny", "--out", ws.out, *extra]  # noqa: E731
for name, make in (
    ("tree-missing", lambda ws: str(ws.inp / "nope.json")),
    ("tree-binary", lambda ws: ws.write("bin.json", BINARY)),
    ("tree-deep", lambda ws: ws.write("deep.json", DEEP_JSON)),
    ("tree-not-json", lambda ws: ws.write("t.json", "{tasks: nope")),
    ("tree-three-objects", lambda ws: ws.write("t3.json", (Path(ws.tree()).read_text() + "\n") * 3)),
    ("tree-wrong-tasks", lambda ws: ws.tree(tasks=("semseg", "banana", "normals", "edges", "scene"))),
    ("tree-wrong-depth", lambda ws: ws.tree(groupings=[[["semseg", "depth", "normals", "edges", "scene"]]] * 2)),
    ("tree-not-a-partition", lambda ws: ws.tree(groupings=[[["semseg", "depth"]]] * 4)),
    ("tree-directory", lambda ws: str(ws.inp)),
    ("tree-empty", lambda ws: ws.write("empty.json", "")),
    ("tree-list", lambda ws: ws.write("list.json", "[1, 2, 3]")),
):
    case("malformed", f"train:{name}", lambda ws, m=make: _train(ws, m(ws)))
case("exec", "train:tree-pickle", lambda ws: _train(ws, ws.exploit_pickle("tree.json")))
for name in ("../../x", "a/b", "", "..", "/abs"):
    case("value", f"train:name-{name or 'empty'}", lambda ws, n=name: _train(ws, ws.tree(), "--name", n),
         match="name")

# baseline
case("early", "baseline:bogus", lambda ws: ["baseline", "bogus", "--profile", "tiny", "--out", ws.out])
case("early", "baseline:empty-name", lambda ws: ["baseline", "", "--profile", "tiny", "--out", ws.out])

# affinity
_aff = lambda ws, *extra: ["affinity", "--profile", "tiny", "--out", ws.out, *extra]  # noqa: E731
for name, extra, klass in (
    ("k-0", ["--k", "0"], "value"), ("k-2", ["--k", "2"], "value"), ("k-huge", ["--k", "100000000"], "limits"),
    ("measure-bogus", ["--measure", "bogus"], "early"),
    ("image-seed-negative", ["--image-seed", "-1"], "value"),
    ("image-seed-huge", ["--image-seed", str(2**40)], "limits"),
):
    case(klass, f"affinity:{name}", lambda ws, e=extra: _aff(ws, *e))
case("fs", "affinity:output-directory", lambda ws: _aff(ws, "--output", str(ws.inp)))
case("fs", "affinity:output-under-file", lambda ws: _aff(ws, "--output", ws.a_file() + "/a.npz"))


# search
def _npz_without_arrays(ws):
    path = ws.inp / "empty.npz"
    np.savez(path, other=np.zeros(3))
    return str(path)


def _npz_object_array(ws):
    path = ws.inp / "object.npz"
    np.savez(path, affinity=np.array([{"a": 1}], dtype=object), tasks=np.array(["a"]), locations=np.array(["b"]))
    return str(path)


_search = lambda ws, *extra: ["search", "--space", "scenes", *extra]  # noqa: E731
for name, extra, klass in (
    ("strategy-bogus", ["--strategy", "bogus"], "early"),
    ("budget-1e400", ["--budget=1e400"], "limits"),
    ("budget-text", ["--budget", "abc"], "value"),
    ("budget-negative", ["--budget=-5M"], "value"),
    ("budget-flops-1e400", ["--budget-flops=1e400"], "limits"),
    ("top-0", ["--top", "0"], "value"),
    ("top-huge", ["--top", "100000000"], "limits"),
    ("seed-negative", ["--seed", "-1"], "value"),
    ("shared-prefix-negative", ["--shared-prefix", "-1"], "value"),
    ("shared-prefix-huge", ["--shared-prefix", "99"], "value"),
    ("max-branches-1", ["--max-branches", "1"], "value"),
):
    case(klass, f"search:{name}", lambda ws, e=extra: _search(ws, *e))
case("value", "search:block-params-bogus", lambda ws: ["search", "--block-params", "a,b", "--affinity", str(SHIPPED_AFFINITY)])
for name, make in (
    ("affinity-missing", lambda ws: str(ws.inp / "nope.npz")),
    ("affinity-text", lambda ws: ws.write("text.npz", "affinity = 1\n")),
    ("affinity-binary", lambda ws: ws.write("bin.npz", BINARY)),
    ("affinity-no-arrays", _npz_without_arrays),
    ("affinity-object-array", _npz_object_array),
    ("affinity-directory", lambda ws: str(ws.inp)),
):
    case("malformed", f"search:{name}", lambda ws, m=make: _search(ws, "--affinity", m(ws)),
         match="(?!.*allow_pickle)")
case("exec", "search:affinity-pickle", lambda ws: _search(ws, "--affinity", ws.exploit_pickle("evil.npz")))

# describe --tree
for name, make in (
    ("tree-deep", lambda ws: ws.write("deep.json", DEEP_JSON)),
    ("tree-binary", lambda ws: ws.write("bin.json", BINARY)),
    ("tree-missing", lambda ws: str(ws.inp / "nope.json")),
):
    case("malformed", f"describe:{name}", lambda ws, m=make: ["describe", "--tree", m(ws)])
case("exec", "describe:tree-pickle", lambda ws: ["describe", "--tree", ws.exploit_pickle("t.json")])

# pareto / plot
case("fs", "pareto:runs-missing", lambda ws: ["pareto", "--runs", str(ws.inp / "nope")])
case("fs", "pareto:out-under-file", lambda ws: ["pareto", "--runs", str(ws.inp), "--out", ws.a_file() + "/p"])
case("malformed", "pareto:space-banana", lambda ws: ["pareto", "--space", "banana", "--runs", str(ws.inp)])
case("value", "pareto:no-runs", lambda ws: ["pareto", "--runs", str(ws.inp)])
case("value", "plot:affinity-no-file", lambda ws: ["plot", "affinity"])
case("malformed", "plot:affinity-missing", lambda ws: ["plot", "affinity", str(ws.inp / "nope.npz")])
case("malformed", "plot:affinity-text", lambda ws: ["plot", "affinity", ws.write("t.npz", "hello\n")],
     match="(?!.*allow_pickle)")
case("exec", "plot:affinity-pickle", lambda ws: ["plot", "affinity", ws.exploit_pickle("e.npz")])
case("fs", "plot:affinity-out-under-file",
     lambda ws: ["plot", "affinity", str(SHIPPED_AFFINITY), "--out", ws.a_file() + "/plots"])
case("fs", "plot:pareto-runs-missing", lambda ws: ["plot", "pareto", "--runs", str(ws.inp / "nope")])
case("value", "plot:pareto-with-file", lambda ws: ["plot", "pareto", "x.npz", "--runs", str(ws.inp)])


# report
def _run_dir(ws, summary="{}", pipeline="{}"):
    root = ws.inp / "rundir"
    root.mkdir()
    if summary is not None:
        (root / "summary.json").write_bytes(summary if isinstance(summary, bytes) else summary.encode())
    if pipeline is not None:
        (root / "pipeline.json").write_text(pipeline)
    return str(root)


for name, make in (
    ("missing", lambda ws: str(ws.inp / "nope")),
    ("a-file", lambda ws: ws.a_file()),
    ("empty-dir", lambda ws: _run_dir(ws, None, None)),
    ("summary-truncated", lambda ws: _run_dir(ws, '{"space": "scenes", "recomm')),
    ("summary-binary", lambda ws: _run_dir(ws, BINARY)),
    ("summary-list", lambda ws: _run_dir(ws, "[]")),
    ("summary-deep", lambda ws: _run_dir(ws, DEEP_JSON)),
    ("pipeline-missing", lambda ws: _run_dir(ws, "{}", None)),
    ("pipeline-truncated", lambda ws: _run_dir(ws, "{}", '{"space": ')),
):
    case("malformed", f"report:{name}", lambda ws, m=make: ["report", m(ws)])

# tune
_tune = lambda ws, *extra: ["tune", "--out", ws.out, *extra]  # noqa: E731
for name, extra in (
    ("model-bogus", ["--model", "bogus"]),
    ("model-single-banana", ["--model", "single:banana"]),
    ("model-tree-missing", ["--model", "tree:nope.json"]),
    ("trials-0", ["--model", "shared", "--trials", "0"]),
    ("trials-negative", ["--model", "shared", "--trials", "-3"]),
):
    case("value", f"tune:{name}", lambda ws, e=extra: _tune(ws, *e))

# validate
_val = lambda ws, *extra: TRAIN_COMMANDS["validate"](ws) + list(extra)  # noqa: E731
for name, extra in (
    ("jobs-0", ["--jobs", "0"]), ("seeds-negative", ["--seeds", "-1"]), ("seeds-twice", ["--seeds", "0", "0"]),
    ("random-draws-negative", ["--random-draws", "-1"]), ("random-draws-0", ["--random-draws", "0"]),
    ("shared-prefix-99", ["--shared-prefix", "99"]), ("tasks-banana", ["--tasks", "banana"]),
    ("k-0", ["--k", "0"]),
):
    case("value", f"validate:{name}", lambda ws, e=extra: _val(ws, *e))
case("fs", "validate:results-dir-under-file", lambda ws: TRAIN_COMMANDS["validate"](ws)[:-2]
     + ["--results-dir", ws.a_file() + "/r"])
case("value", "validate:default-out-banana-space", lambda ws: ["validate", "--space", "banana"])


# --------------------------------------------------------------------------- the contract


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """The dataset cache, outside every workspace (a cache is not an output)."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def ws(tmp_path, monkeypatch, cache_dir):
    w = Workspace(tmp_path)
    monkeypatch.chdir(w.cwd)
    monkeypatch.setenv("BRANCHNAS_CACHE", cache_dir)
    return w


@pytest.mark.parametrize("klass,build,match", [pytest.param(k, b, m, id=f"{k}:{n}") for k, n, b, m in CASES])
def test_hostile_input_is_refused(ws, capsys, klass, build, match):
    argv = build(ws)
    before = snapshot(ws.root)
    assert_refused(ws, argv, capsys, before, match)


# Output locations that fail inside the operating system: the one file-system error path.
FS_ERRORS = {"permission": errno.EACCES, "read-only": errno.EROFS, "no-space": errno.ENOSPC}


@pytest.mark.parametrize("command", sorted(TRAIN_COMMANDS))
@pytest.mark.parametrize("kind", sorted(FS_ERRORS))
def test_unwritable_output_is_one_line(ws, capsys, monkeypatch, command, kind):
    def refuse(*a, **k):
        raise OSError(FS_ERRORS[kind], os.strerror(FS_ERRORS[kind]), k.get("dir"))

    argv = TRAIN_COMMANDS[command](ws)
    before = snapshot(ws.root)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    line = assert_refused(ws, argv, capsys, before)
    assert {"permission": "cannot be written", "read-only": "cannot be written",
            "no-space": "no space left"}[kind] in line


# --------------------------------------------------------------------------- trained runs


TINY_SPACE = """
[backbone]
name = "smallcnn"
widths = [4, 8]
strides = [2, 2]

[input]
size = [16, 16]

[dataset]
name = "scenes"
size = 8
resolution = [16, 16]

[[tasks]]
name = "depth"
type = "depth"

[[tasks]]
name = "scene"
type = "classification"
params = { num_classes = 8 }

[training]
epochs = 2
batch_size = 4
eval_batch_size = 8
threads = 1
progress = false
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """Two tiny single-task runs (2 epochs each), done."""
    root = tmp_path_factory.mktemp("trained")
    space = root / "tiny.toml"
    space.write_text(TINY_SPACE)
    from branchnas.cli import main

    old = os.environ.get("BRANCHNAS_CACHE")
    os.environ["BRANCHNAS_CACHE"] = cache_dir
    try:
        assert main(["train-single", "--space", str(space), "--out", str(root / "out")]) == 0
    finally:
        if old is None:
            os.environ.pop("BRANCHNAS_CACHE")
        else:
            os.environ["BRANCHNAS_CACHE"] = old
    return space, root / "out"


def _copy_trained(trained, ws):
    space, out = trained
    shutil.copytree(out, ws.out)
    return str(space)


def _torch_file(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


CHECKPOINTS = {
    "exploit-torch": lambda ws: _torch_file({"model": __import__("_hostile").Exploit(str(ws.marker)), "epoch": 1}),
    "exploit-pickle": lambda ws: pickle.dumps({"model": __import__("_hostile").Exploit(str(ws.marker))}),
    "truncated": lambda ws: None,  # first half of the real one
    "empty": lambda ws: b"",
    "text": lambda ws: b"this is not a checkpoint\n",
    "random-bytes": lambda ws: bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "foreign-model": lambda ws: _torch_file({"model": {"w": torch.ones(3)}, "epoch": 1, "format": 1}),
    "a-list": lambda ws: _torch_file([1, 2, 3]),
}


@pytest.mark.parametrize("command", ["train-single", "affinity"])
@pytest.mark.parametrize("variant", sorted(CHECKPOINTS))
def test_damaged_checkpoint_is_refused(trained, ws, capsys, command, variant):
    space = _copy_trained(trained, ws)
    run = Path(ws.out) / "single" / "depth"
    # a resume reads last.pt; the affinity the finished weights, best.pt where the run keeps one
    ckpt = run / "checkpoints" / "last.pt"
    if command == "affinity" and (run / "checkpoints" / "best.pt").is_file():
        ckpt = run / "checkpoints" / "best.pt"
    content = CHECKPOINTS[variant](ws)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2] if content is None else content)
    if command == "train-single":  # a resume reads it
        (run / "done").unlink()
        argv = ["train-single", "--space", space, "--out", ws.out, "--tasks", "depth"]
    else:  # the affinity loads the finished network
        argv = ["affinity", "--space", space, "--out", ws.out, "--k", "4"]
    before = snapshot(ws.root)
    klass = "exec" if variant.startswith("exploit") else "checkpoint"
    line = assert_refused(ws, argv, capsys, before)
    assert str(ckpt) in line and "delete it" in line, (klass, line)


def test_a_locked_run_directory_is_refused(trained, ws, capsys):
    import fcntl

    space = _copy_trained(trained, ws)
    run = Path(ws.out) / "single" / "depth"
    (run / "done").unlink()
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process's lock (another open file)
        before = snapshot(ws.root)
        line = assert_refused(ws, ["train-single", "--space", space, "--out", ws.out, "--tasks", "depth"],
                              capsys, before)
        assert "in use by another process" in line
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- bad dataset files


def _dataset_space(ws, file, dataset, tasks):
    """A one-epoch 8x8 smallcnn space over ``dataset`` (its TOML table body) and ``tasks``."""
    return ws.write(file, f"""
[backbone]
name = "smallcnn"
widths = [4, 8]
strides = [2, 2]
[input]
size = [8, 8]
[dataset]
{dataset}
{tasks}
[training]
epochs = 1
batch_size = 2
threads = 1
progress = false
""")


def _nyuv2_space(ws, root):
    return _dataset_space(ws, "nyu.toml", f'name = "nyuv2"\nroot = "{root}"',
                          '[[tasks]]\nname = "depth"\ntype = "depth"')


def _nyuv2(ws, spoil):  # spoils the val split: every val sample is read (train may be subsampled)
    root = ws.inp / "nyuv2"
    for split in ("train", "val"):
        for i in range(4):
            for folder, arr in (("image", np.full((8, 8, 3), 0.5, np.float32)),
                                ("depth", np.ones((8, 8, 1), np.float32))):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                np.save(root / split / folder / f"{i}.npy", arr)
    spoil(root)
    return _nyuv2_space(ws, root)


def _nan_image(root):
    img = np.full((8, 8, 3), 0.5, np.float32)
    img[2, 3, 1] = np.nan
    np.save(root / "val" / "image" / "1.npy", img)


DATA = {
    "nan-image": _nan_image,
    "zero-byte-image": lambda root: (root / "val" / "image" / "2.npy").write_bytes(b""),
    "zero-byte-label": lambda root: (root / "val" / "depth" / "0.npy").write_bytes(b""),
    "text-as-npy": lambda root: (root / "val" / "image" / "0.npy").write_text("hello\n"),
    "pickle-as-npy": None,  # filled in the test (needs the marker path)
}


@pytest.mark.parametrize("variant", sorted(DATA))
def test_bad_dataset_file_is_bad_data(ws, capsys, variant):
    def spoil(root):
        if variant == "pickle-as-npy":
            (root / "val" / "image" / "0.npy").write_bytes(pickle.dumps(__import__("_hostile").Exploit(str(ws.marker))))
        else:
            DATA[variant](root)

    space = _nyuv2(ws, spoil)
    before = snapshot(ws.root)
    line = assert_refused(ws, ["train-single", "--space", space, "--out", ws.out], capsys, before)
    assert ".npy" in line and "allow_pickle" not in line and "diverged" not in line, line
    if variant == "nan-image":
        assert "1.npy" in line and "bad data" in line


def test_empty_celeba_split_is_an_error(ws, capsys):
    from PIL import Image

    root = ws.inp / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 5)]
    for n in names:
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(root / "img_align_celeba" / n)
    (root / "list_attr_celeba.txt").write_text("4\nSmiling Young\n" + "".join(f"{n} 1 -1\n" for n in names))
    (root / "list_eval_partition.txt").write_text("".join(f"{n} 0\n" for n in names))  # no val images
    space = _dataset_space(ws, "celeba.toml",
                           f'name = "celeba"\nroot = "{root}"\nresolution = [8, 8]',
                           '[[tasks]]\nname = "smiling"\ntype = "binary"')
    before = snapshot(ws.root)
    line = assert_refused(ws, ["train-single", "--space", space, "--out", ws.out], capsys, before)
    assert "val split is empty" in line


# --------------------------------------------------------------------------- cache integrity


def test_overwritten_cache_entry_is_rebuilt_and_logged(tmp_path, caplog):
    from branchnas.data.scenes import ScenesDataset

    fresh = ScenesDataset("val", size=4, resolution=16, cache_dir=False)
    ScenesDataset("val", size=4, resolution=16, cache_dir=tmp_path)
    image = next(tmp_path.rglob("image*.npy"))
    raw = bytearray(image.read_bytes())
    raw[-64:] = bytes(64)  # same size, shape and dtype: only the checksum can tell
    image.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        again = ScenesDataset("val", size=4, resolution=16, cache_dir=tmp_path)
    assert any("checksum" in r.getMessage() for r in caplog.records)
    for i in range(4):
        assert torch.equal(again[i]["image"], fresh[i]["image"])


# --------------------------------------------------------------------------- signals and temp files

SCRIPT = r"""
import os, signal, sys
sys.path[:0] = {paths!r}
import branchnas.training.rundir as rundir
from branchnas.cli import main

calls = []
real = rundir.RunDir.save_checkpoint

def save(self, state):  # die half-way through writing the second checkpoint's temp file
    calls.append(1)
    if len(calls) == 2:
        def torn(f):
            f.write(b"x" * 100000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        rundir.atomic_write_with(self.checkpoint_path, torn)
    return real(self, state)

rundir.RunDir.save_checkpoint = save
sys.exit(main({argv!r}))
"""


def _tiny_argv(tmp_path):
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    return ["train-single", "--space", str(space), "--out", str(tmp_path / "out"), "--tasks", "depth",
            "--epochs", "3"]


def _epochs(out):
    lines = (out / "single" / "depth" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_print_the_resume_hint_and_resume(tmp_path, capsys, monkeypatch, cache_dir,
                                                             signum, status):
    import branchnas.training.rundir as rundir

    monkeypatch.setenv("BRANCHNAS_CACHE", cache_dir)
    argv, calls, real = _tiny_argv(tmp_path), [], rundir.RunDir.save_checkpoint

    def save(self, state):
        real(self, state)
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signum)  # the handler raises here, after the first checkpoint

    monkeypatch.setattr(rundir.RunDir, "save_checkpoint", save)
    rc, out, err = run_cli(argv, capsys)
    assert rc == status and "run the same command again to resume" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is not None  # main put the previous handler back
    assert not list((tmp_path / "out").rglob("*.tmp"))
    monkeypatch.setattr(rundir.RunDir, "save_checkpoint", real)
    assert run_cli(argv, capsys)[0] == 0
    assert _epochs(tmp_path / "out") == [1, 2, 3]
    # bit-identical to a run that was never interrupted
    straight = argv[:4] + [str(tmp_path / "straight")] + argv[5:]
    assert run_cli(straight, capsys)[0] == 0
    a = rundir.RunDir(tmp_path / "out" / "single" / "depth").load_checkpoint()["model"]
    b = rundir.RunDir(tmp_path / "straight" / "single" / "depth").load_checkpoint()["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_run_leaves_no_temp_file_once_rerun(tmp_path, capsys, monkeypatch, cache_dir):
    monkeypatch.setenv("BRANCHNAS_CACHE", cache_dir)
    argv = _tiny_argv(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(paths=sys.path, argv=argv)],
                          env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert list(out.rglob(".*.tmp")), "the kill should have left a temp file"
    assert run_cli(argv, capsys)[0] == 0
    assert not list(out.rglob("*.tmp")), "a temp file outlived its run"
    assert _epochs(out) == [1, 2, 3]


def test_full_disk_while_checkpointing_is_one_line_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    import branchnas.training.rundir as rundir

    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    monkeypatch.setenv("BRANCHNAS_CACHE", str(tmp_path / "cache"))

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(rundir.torch if hasattr(rundir, "torch") else torch, "save", full)
    rc, out, err = run_cli(["train-single", "--space", str(space), "--out", str(tmp_path / "out"),
                            "--tasks", "depth"], capsys)
    lines = [ln for ln in (out + err).splitlines() if "error:" in ln]
    assert rc == 2 and len(lines) == 1 and "no space left" in lines[0] and "last.pt" in lines[0], out + err
    assert "Traceback" not in out + err
    assert not list((tmp_path / "out").rglob("*.tmp"))


# --------------------------------------------------------------------------- the suite itself


def test_the_suite_covers_every_class_and_command(tmp_path):
    counts = Counter(k for k, *_ in CASES)
    counts["exec"] += 2 * 2 + 1  # checkpoint exploits x commands, the pickle as .npy
    counts["checkpoint"] += 6 * 2 + 1  # damaged checkpoints x commands, the lock
    counts["fs"] += len(FS_ERRORS) * len(TRAIN_COMMANDS) + 1 + 11  # + full disk, + errno mapping
    counts["data"] += len(DATA) - 1 + 1 + 1  # + empty celeba split, + cache checksum
    total = sum(counts.values())
    print("hostile cases per class:", dict(sorted(counts.items())), "total", total)
    assert total >= 150
    assert set(counts) >= {"exec", "checkpoint", "early", "value", "fs", "malformed", "limits", "data"}
    roots = (tmp_path / str(i) for i in range(len(CASES)))
    commands = {b(Workspace(next(roots)))[0] for _, _, b, _ in CASES}
    assert commands >= {"describe", "train-single", "affinity", "search", "train", "baseline", "pareto",
                        "plot", "run", "demo", "report", "tune", "validate"}


@pytest.mark.parametrize("code,words", [
    (errno.EACCES, "permission denied"), (errno.EPERM, "permission denied"), (errno.EROFS, "read-only"),
    (errno.ENOSPC, "no space left"), (errno.EDQUOT, "no space left"), (errno.ENOTDIR, "not a directory"),
    (errno.ENOENT, "does not exist"), (errno.EEXIST, "in the way"), (errno.EISDIR, "is a directory"),
    (errno.ENAMETOOLONG, "too long"), (errno.EIO, "cannot access"),
])
def test_every_os_error_is_one_line_naming_the_path(code, words):
    from branchnas._fs import fs_error

    msg = str(fs_error(OSError(code, os.strerror(code), "/data/run/x.pt")))
    assert words in msg and "/data/run/x.pt" in msg and "\n" not in msg
