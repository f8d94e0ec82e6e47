"""The affinity file (npz + JSON sidecar): round trip, validation, atomic writes; and the plots."""

from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pytest

from branchnas.affinity import (
    AffinityFile,
    affinity_heatmap_data,
    affinity_vs_depth_data,
    load_affinity,
    plot_affinity_heatmaps,
    plot_affinity_vs_depth,
    save_affinity,
    write_affinity_plots,
)
from branchnas.errors import BranchnasError

TASKS = ["seg", "depth", "normals"]
LOCS = ["block1", "block2"]


def good_affinity():
    a = np.array([[[1.0, 0.8, 0.5], [0.8, 1.0, 0.4], [0.5, 0.4, 1.0]],
                  [[1.0, 0.3, -0.1], [0.3, 1.0, 0.2], [-0.1, 0.2, 1.0]]])
    return a


META = {"backbone": "resnet-tiny", "K": 50, "seed": 0, "dataset": "scenes", "measure": "rsa"}


def test_round_trip_and_sidecar(tmp_path):
    npz = save_affinity(tmp_path / "sub" / "scenes_rsa", good_affinity(), TASKS, LOCS,
                        {**META, "feature_shapes": {"block1": (4, 8, 8)}, "n": np.int64(3)})
    assert npz == tmp_path / "sub" / "scenes_rsa.npz"
    side = json.loads((tmp_path / "sub" / "scenes_rsa.json").read_text())
    assert {k: side[k] for k in META} == META
    assert dt.datetime.fromisoformat(side["when"]).tzinfo is not None
    assert side["feature_shapes"] == {"block1": [4, 8, 8]} and side["n"] == 3
    for path in (npz, tmp_path / "sub" / "scenes_rsa"):
        f = load_affinity(path)
        assert isinstance(f, AffinityFile)
        np.testing.assert_array_equal(f.affinity, good_affinity())
        assert f.tasks == tuple(TASKS) and f.locations == tuple(LOCS)
        assert f.meta["K"] == 50 and f.measure == "rsa" and f.path == npz
    with np.load(npz, allow_pickle=False) as data:  # plain arrays, no pickle needed
        assert sorted(data.files) == ["affinity", "locations", "tasks"]


def test_sidecar_always_has_the_contract_keys(tmp_path):
    save_affinity(tmp_path / "a.npz", good_affinity(), TASKS, LOCS, {"measure": "cka", "when": "2020-01-01T00:00:00"})
    side = json.loads((tmp_path / "a.json").read_text())
    assert side == {"backbone": None, "K": None, "seed": None, "dataset": None, "measure": "cka",
                    "when": "2020-01-01T00:00:00"}


def _bad(index, value):
    a = good_affinity()
    a[index] = value
    return a


@pytest.mark.parametrize(
    "affinity,tasks,locs,pattern",
    [
        (good_affinity()[0], TASKS, LOCS, r"shape \(3, 3\); it must be D x N x N"),
        (good_affinity(), TASKS[:2], LOCS, r"2x3x3 but 2 task names"),
        (good_affinity(), TASKS, LOCS[:1], r"2x3x3 but 1 location names"),
        (good_affinity(), ["a", "a", "b"], LOCS, r"tasks repeat 'a'"),
        (_bad((1, 0, 2), 0.4), TASKS, LOCS, r"not symmetric at location 'block2' \(seg vs normals"),
        (_bad((0, 1, 1), 0.9), TASKS, LOCS, r"diagonal is 0.9 for task 'depth' at location 'block1'"),
        (_bad((1, 2, 2), np.nan), TASKS, LOCS, r"non-finite value at location 'block2'"),
        (1.5 * good_affinity() - 0.5 * np.eye(3), TASKS, LOCS, r"outside \[-1, 1\]"),
    ],
)
def test_invalid_tensors_are_refused_on_save_and_load(tmp_path, affinity, tasks, locs, pattern):
    with pytest.raises(BranchnasError, match=pattern):
        save_affinity(tmp_path / "x", affinity, tasks, locs, META)
    assert list(tmp_path.iterdir()) == []
    # The same content written behind the library's back is refused on load, naming the file.
    np.savez(tmp_path / "y.npz", affinity=np.asarray(affinity), tasks=np.array(tasks), locations=np.array(locs))
    with pytest.raises(BranchnasError, match=r"y\.npz: .*" + pattern):
        load_affinity(tmp_path / "y.npz")


def test_failed_save_leaves_old_files_untouched(tmp_path):
    save_affinity(tmp_path / "a", good_affinity(), TASKS, LOCS, META)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(BranchnasError, match=r"a\.json: metadata cannot be written as JSON"):
        save_affinity(tmp_path / "a", good_affinity() * 0 + np.eye(3), TASKS, LOCS, {**META, "bad": object()})
    with pytest.raises(BranchnasError, match=r"metadata cannot be written as JSON"):
        save_affinity(tmp_path / "a", good_affinity(), TASKS, LOCS, {**META, "K": float("nan")})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(BranchnasError, match=r"missing\.npz: no such affinity file"):
        load_affinity(tmp_path / "missing")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BranchnasError, match=r"junk\.npz: cannot be read"):
        load_affinity(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", good_affinity())
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(BranchnasError, match=r"single\.npz: holds a single array"):
        load_affinity(tmp_path / "single.npz")
    np.savez(tmp_path / "partial.npz", affinity=good_affinity())
    with pytest.raises(BranchnasError, match=r"partial\.npz: missing array\(s\) tasks, locations"):
        load_affinity(tmp_path / "partial.npz")
    save_affinity(tmp_path / "ok", good_affinity(), TASKS, LOCS, META)
    (tmp_path / "ok.json").write_text("{not json")
    with pytest.raises(BranchnasError, match=r"ok\.json: sidecar is not valid JSON"):
        load_affinity(tmp_path / "ok")


def test_missing_sidecar_loads_with_a_warning(tmp_path, caplog):
    save_affinity(tmp_path / "a", good_affinity(), TASKS, LOCS, META)
    (tmp_path / "a.json").unlink()
    with caplog.at_level(logging.WARNING, logger="branchnas.affinity.io"):
        f = load_affinity(tmp_path / "a.npz")
    assert f.meta == {} and f.measure == "affinity"
    assert "has no sidecar" in caplog.text


# ----------------------------------------------------------------------------- plots


def _file():
    return AffinityFile(good_affinity(), tuple(TASKS), tuple(LOCS), dict(META))


def test_heatmap_and_depth_data_are_plain():
    heat = affinity_heatmap_data(_file())
    assert heat["tasks"] == TASKS and heat["locations"] == LOCS and heat["measure"] == "rsa"
    assert heat["matrices"] == good_affinity().tolist()
    assert (heat["vmin"], heat["vmax"]) == (-1.0, 1.0)  # a negative entry widens the range
    depth = affinity_vs_depth_data(_file())
    assert depth["locations"] == LOCS
    np.testing.assert_allclose(depth["mean"], [(0.8 + 0.5 + 0.4) / 3, (0.3 - 0.1 + 0.2) / 3])
    np.testing.assert_allclose(depth["min"], [0.4, -0.1])
    np.testing.assert_allclose(depth["max"], [0.8, 0.3])
    json.dumps(heat), json.dumps(depth)
    one = AffinityFile(np.ones((2, 1, 1)), ("seg",), tuple(LOCS), {})
    assert affinity_heatmap_data(one)["vmin"] == 0.0
    with pytest.raises(BranchnasError, match=r"needs at least two tasks"):
        affinity_vs_depth_data(one)


def test_plot_functions_draw_into_given_axes():
    from matplotlib.figure import Figure

    fig = Figure()
    axes = fig.subplots(1, 2)
    got = plot_affinity_heatmaps(affinity_heatmap_data(_file()), axes)
    assert list(got) == list(axes)
    assert [a.get_title() for a in got] == LOCS
    assert len(got[0].images) == 1 and len(got[0].texts) == 9
    np.testing.assert_allclose(got[1].images[0].get_array(), good_affinity()[1])
    with pytest.raises(BranchnasError, match=r"3 Axes given for 2 locations"):
        plot_affinity_heatmaps(affinity_heatmap_data(_file()), Figure().subplots(1, 3))
    ax = plot_affinity_vs_depth(affinity_vs_depth_data(_file()), Figure().add_subplot())
    np.testing.assert_allclose(ax.lines[0].get_ydata(), affinity_vs_depth_data(_file())["mean"])


def test_write_affinity_plots_writes_pngs(tmp_path):
    npz = save_affinity(tmp_path / "scenes_rsa", good_affinity(), TASKS, LOCS, META)
    paths = write_affinity_plots(npz, tmp_path / "plots")
    assert [p.name for p in paths] == ["scenes_rsa_heatmaps.png", "scenes_rsa_depth.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    one = AffinityFile(np.ones((2, 1, 1)), ("seg",), tuple(LOCS), {})
    assert [p.name for p in write_affinity_plots(one, tmp_path / "one")] == ["affinity_heatmaps.png"]


def test_plot_functions_make_their_own_figure_without_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = plot_affinity_heatmaps(affinity_heatmap_data(_file()))
    ax = plot_affinity_vs_depth(affinity_vs_depth_data(_file()))
    try:
        assert len(axes) == 2 and axes[0].figure is not ax.figure
    finally:
        plt.close(axes[0].figure)
        plt.close(ax.figure)
