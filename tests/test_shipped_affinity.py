"""The affinity shipped for the embedded benchmark is valid and shows the designed relatedness."""

import numpy as np

from branchnas.affinity import load_affinity
from branchnas.pipeline.recommend import find_affinity, shipped_affinity_dir
from branchnas.spaces import load_space


def test_shipped_affinity_fits_the_scenes_space():
    f = load_affinity(shipped_affinity_dir() / "scenes.npz")
    space = load_space("scenes")
    assert list(f.tasks) == space.task_names
    assert f.affinity.shape == (space.depth, len(space.task_names), len(space.task_names))
    assert f.meta["measure"] == "rsa" and f.meta["K"] == 500
    assert find_affinity("scenes", runs="/nonexistent") == shipped_affinity_dir() / "scenes.npz"


def test_shipped_affinity_reflects_the_designed_factors():
    f = load_affinity(shipped_affinity_dir() / "scenes.npz")
    idx = {t: i for i, t in enumerate(f.tasks)}
    deepest = f.affinity[-1]
    # depth and normals read the same geometry; the scene class reads only the room style
    geometric = deepest[idx["depth"], idx["normals"]]
    with_scene = [deepest[idx["scene"], idx[t]] for t in f.tasks if t != "scene"]
    assert geometric > 0.5 and max(with_scene) < 0.3
    assert geometric == max(deepest[i, j] for i in range(len(f.tasks)) for j in range(i))
    # features grow task-specific with depth (the paper's Fig. 2a)
    off = ~np.eye(len(f.tasks), dtype=bool)
    means = [a[off].mean() for a in f.affinity]
    assert means[0] > means[-1]
