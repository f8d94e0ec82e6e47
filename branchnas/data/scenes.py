"""The embedded benchmark: procedurally rendered rooms with exact labels for many tasks.

Each image is a pinhole view into a room (floor, left/back/right walls) holding one to four
simple solids (sphere, box, cylinder, cone) of a colour and a material (matte or shiny), lit
by a point light with Lambertian + Blinn-Phong shading and cast shadows. Everything is ray
cast exactly (``branchnas.data._render``), so every label is exact: nothing is downloaded.

Tasks (``SCENES_TASKS``; the dataset's ``.tasks`` is the selected subset):

====================  ==============================  ==========================================
name                  type (params)                   label
====================  ==============================  ==========================================
``semseg``            segmentation (num_classes=6)    floor, wall, sphere, box, cylinder, cone
``depth``             depth                           camera-z distance (world units)
``normals``           normals                         unit normals, camera frame (x right,
                                                      y down, z forward; facing the camera
                                                      means negative z)
``edges``             edges                           occlusion ∪ crease edges, 1-px, on the
                                                      nearer pixel of each discontinuity
``instance``          instance                        (dy, dx) pixels to the object's visible
                                                      pixel centroid; NaN on floor and walls
``scene``             classification (num_classes=8)  room style (``SCENE_CLASSES``)
``attr_<name>``       binary                          52 scene facts (``ATTRIBUTES``)
====================  ==============================  ==========================================

Relatedness by design. The generative factors are drawn independently in groups, and each
task reads only some groups, so tasks that read the same groups are related and the others
are not (up to the mixed attributes, which deliberately couple two groups):

====================  =====================================  ==================================
factor group          factors                                tasks that depend on it
====================  =====================================  ==================================
room style            wall/floor colours & patterns, light   scene, attr_warm_light,
                      colour (the 8 classes = warm/cool      attr_tiled_floor,
                      light × tiled/plain floor ×            attr_striped_walls
                      striped/plain walls)
camera & room         camera height/pitch/yaw, room size     depth, normals, edges (room
                                                             creases), attr_camera_*,
                                                             attr_room_*, position attrs
object identity       count and shape of each object         semseg, instance, edges (object
                                                             outlines, box/cylinder creases),
                                                             attr_has_<shape>,
                                                             attr_largest_is_<shape>,
                                                             attr_all_same_shape,
                                                             attr_has_flat_top,
                                                             attr_single_object,
                                                             attr_many_objects
object size           dimensions of each object              depth, normals, semseg/instance
                                                             extents, attr_has_small,
                                                             attr_has_large,
                                                             attr_size_contrast, attr_has_tall,
                                                             attr_coverage_high
layout                floor position of each object          depth, instance offsets,
                                                             attr_object_left/right/centre,
                                                             attr_object_near/far,
                                                             attr_objects_spread,
                                                             attr_objects_overlap,
                                                             attr_object_at_border,
                                                             attr_nearest_left,
                                                             attr_near_side_wall
material              colour and matte/shiny of each object  image only: attr_has_<colour>,
                                                             attr_has_shiny, attr_all_shiny,
                                                             attr_has_warm_colour,
                                                             attr_has_cool_colour,
                                                             attr_repeated_colour,
                                                             attr_shiny_warm
lighting              light position                         image only (shading, shadows):
                                                             attr_light_left, attr_light_high
mixed                 two groups at once                     attr_nearest_is_warm (layout ×
                                                             material), attr_largest_is_shiny
                                                             (size × material),
                                                             attr_leftmost_is_sphere (layout ×
                                                             identity)
====================  =====================================  ==================================

So the colour attributes share nothing with the dense geometric tasks, the scene class shares
only the room style with three attributes, and depth/normals/edges share geometry.

Attributes are functions of the scene factors (positions use the exact projection of each
object's centre and a projected disc of its size), so they do not change with resolution.
Every attribute is positive in 10-90 % of scenes (tested).

Determinism: sample ``i`` of split ``s`` is drawn from its own seed sequence
``(seed, s, i)``, so it does not depend on ``size`` or batching. Images are stored as
8-bit, depth as float32 and normals as float16 (renormalised when read); the arrays are
cached on disk under ``$BRANCHNAS_CACHE`` (default ``~/.cache/branchnas``) keyed by a hash
of (renderer version, split, size, resolution, seed).

Images are float32 (3, H, W) in [0, 1]; no mean/std normalisation is applied.

Example:
    >>> ds = ScenesDataset("train", size=8, resolution=32, cache_dir=False)
    >>> item = ds[0]
    >>> item["image"].shape, item["labels"]["depth"].shape
    (torch.Size([3, 32, 32]), torch.Size([1, 32, 32]))
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import BranchnasError
from . import _render
from ._cache import cached_arrays
from ._render import BOX, CONE, CYLINDER, MAX_OBJECTS, SPHERE, SceneObject, SceneSpec
from .base import Item, TaskDataset, register_dataset

__all__ = [
    "ATTRIBUTES",
    "COLOURS",
    "RENDER_VERSION",
    "SCENES_TASKS",
    "SCENE_CLASSES",
    "SEMSEG_CLASSES",
    "Attribute",
    "ScenesDataset",
    "render_scenes",
    "sample_scene",
    "scene_attributes",
]

logger = logging.getLogger(__name__)

RENDER_VERSION = 2
"""Bump when the renderer's output changes; it is part of the cache key."""

SEMSEG_CLASSES: Tuple[str, ...] = ("floor", "wall") + _render.SHAPE_NAMES
COLOURS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.85, 0.13, 0.12),
    "green": (0.18, 0.68, 0.2),
    "blue": (0.14, 0.28, 0.88),
    "yellow": (0.92, 0.8, 0.12),
    "purple": (0.58, 0.2, 0.75),
    "cyan": (0.12, 0.74, 0.8),
}
_COLOUR_NAMES = tuple(COLOURS)
_WARM = {_COLOUR_NAMES.index("red"), _COLOUR_NAMES.index("yellow")}
_COOL = {_COLOUR_NAMES.index("blue"), _COLOUR_NAMES.index("cyan")}

# room style = 4·warm_light + 2·tiled_floor + striped_walls
SCENE_CLASSES: Tuple[str, ...] = tuple(
    f"{'warm' if w else 'cool'}-{'tiled' if f else 'plain'}-floor-"
    f"{'striped' if s else 'plain'}-walls"
    for w in (0, 1)
    for f in (0, 1)
    for s in (0, 1)
)
_ROOM_COLOURS = {  # (floor a, floor b, wall a, wall b, light)
    0: ((0.42, 0.44, 0.48), (0.68, 0.7, 0.74), (0.66, 0.72, 0.8), (0.46, 0.53, 0.64),
        (0.86, 0.93, 1.0)),
    1: ((0.52, 0.38, 0.26), (0.74, 0.6, 0.42), (0.86, 0.78, 0.64), (0.68, 0.56, 0.42),
        (1.0, 0.88, 0.7)),
}

_SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 2000, "val": 500, "test": 500}

# sampling ranges (world units; the camera is ~1.7 above the floor)
_SIZE_RANGE = (0.25, 0.6)
_SHINY_P = 0.4
_CENTRE_MARGIN = 0.1  # projected object centres stay inside [m, 1 - m] of the image
_MAX_OCCLUDED = 0.4  # at most this fraction of an object's projected disc is covered


def _seed_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed,
                                                        spawn_key=(_SPLITS[split], index)))


def _object_disc(spec: SceneSpec, obj: SceneObject) -> Tuple[float, float, float, float]:
    """(u, v, z, r): projected centre (image fractions), depth and disc radius of an object."""
    u, v, z = _render.project(spec, (obj.x, obj.height / 2, obj.z))
    half_w = obj.radius if obj.shape != BOX else 0.5 * (obj.radius + obj.depth) * 1.15
    if obj.shape == CONE:
        half_w *= 0.7
    r = _render.focal_fraction() * math.sqrt(half_w * obj.height / 2) / z
    return u, v, z, r


def _disc_overlap(a: Tuple[float, ...], b: Tuple[float, ...]) -> float:
    """Area of intersection of two discs (u, v, _, r)."""
    d = math.hypot(a[0] - b[0], a[1] - b[1])
    r1, r2 = a[3], b[3]
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    c1 = (d * d + r1 * r1 - r2 * r2) / (2 * d * r1)
    c2 = (d * d + r2 * r2 - r1 * r1) / (2 * d * r2)
    k = 0.5 * math.sqrt(max(0.0, (-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)))
    return r1 * r1 * math.acos(min(1, max(-1, c1))) + r2 * r2 * math.acos(min(1, max(-1, c2))) - k


def _make_object(rng: np.random.Generator) -> Dict[str, Any]:
    shape = int(rng.integers(4))
    colour = int(rng.integers(len(COLOURS)))
    shiny = bool(rng.random() < _SHINY_P)
    s = float(rng.uniform(*_SIZE_RANGE))
    if shape == SPHERE:
        radius, depth, height, yaw = s, s, 2 * s, 0.0
    elif shape == BOX:
        radius, depth = s * rng.uniform(0.75, 1.05), s * rng.uniform(0.75, 1.05)
        height, yaw = 2 * s * rng.uniform(0.7, 1.3), rng.uniform(0, math.pi / 2)
    elif shape == CYLINDER:
        radius = 0.85 * s
        depth, height, yaw = radius, 2 * s * rng.uniform(0.9, 1.6), 0.0
    else:
        radius, depth, height, yaw = s, s, 2 * s * rng.uniform(1.0, 1.6), 0.0
    albedo = np.clip(np.array(COLOURS[_COLOUR_NAMES[colour]]) * rng.uniform(0.9, 1.06), 0, 1)
    return {"shape": shape, "colour": colour, "shiny": shiny, "radius": float(radius),
            "depth": float(depth), "height": float(height), "yaw": float(yaw),
            "albedo": tuple(float(a) for a in albedo)}


def sample_scene(seed: int, split: str, index: int) -> SceneSpec:
    """Draw the factors of scene ``index`` of ``split`` (deterministic).

    Args:
        seed: dataset seed.
        split: "train", "val" or "test".
        index: sample index (any non-negative integer).

    Returns:
        The scene's :class:`~branchnas.data._render.SceneSpec`.
    """
    rng = _seed_rng(seed, split, index)
    # room style
    style = int(rng.integers(len(SCENE_CLASSES)))
    warm, tiled, striped = (style >> 2) & 1, (style >> 1) & 1, style & 1
    fa, fb, wa, wb, light = _ROOM_COLOURS[warm]
    shade = rng.uniform(0.88, 1.08, size=2)
    floor_cols = (tuple(np.clip(np.array(fa) * shade[0], 0, 1)),
                  tuple(np.clip(np.array(fb if tiled else fa) * shade[0], 0, 1)))
    wall_cols = (tuple(np.clip(np.array(wa) * shade[1], 0, 1)),
                 tuple(np.clip(np.array(wb if striped else wa) * shade[1], 0, 1)))
    floor_tile = float(rng.uniform(0.5, 0.8)) if tiled else 0.0
    wall_stripe = float(rng.uniform(0.3, 0.5)) if striped else 0.0
    # camera and room geometry
    half_w = float(rng.uniform(2.8, 4.0))
    room_d = float(rng.uniform(6.0, 8.0))
    cam = (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(1.2, 2.2)), 0.0)
    pitch = float(np.radians(rng.uniform(14, 30)))
    yaw = float(np.radians(rng.uniform(-15, 15)))
    # lighting
    light_pos = (float(rng.uniform(-half_w + 0.5, half_w - 0.5)), float(rng.uniform(2.4, 3.6)),
                 float(rng.uniform(0.0, 3.5)))
    light_col = tuple(float(c) for c in np.array(light) * rng.uniform(0.9, 1.15))
    base = SceneSpec(style, half_w, room_d, cam, pitch, yaw, light_pos, light_col,
                     floor_cols, wall_cols, floor_tile, wall_stripe, (), 0)
    # objects
    n_target = int(rng.integers(1, MAX_OBJECTS + 1))
    objects: List[SceneObject] = []
    discs: List[Tuple[float, float, float, float]] = []
    fwd = np.array([-math.sin(yaw), math.cos(yaw)])
    side = np.array([math.cos(yaw), math.sin(yaw)])
    for _ in range(n_target):
        props = _make_object(rng)
        for _try in range(40):
            dist = rng.uniform(2.0, 5.5)
            lateral = rng.uniform(-0.6, 0.6) * dist
            x, z = np.array(cam[0::2]) + dist * fwd + lateral * side
            obj = SceneObject(x=float(x), z=float(z), **props)
            fp = obj.footprint
            if abs(obj.x) > half_w - fp - 0.1 or obj.z > room_d - fp - 0.1 or obj.z < 0.8 + fp:
                continue
            if any(math.hypot(obj.x - o.x, obj.z - o.z) < fp + o.footprint + 0.08
                   for o in objects):
                continue
            disc = _object_disc(base, obj)
            m = _CENTRE_MARGIN
            if not (m <= disc[0] <= 1 - m and m <= disc[1] <= 1 - m):
                continue
            if any(_disc_overlap(disc, d) > _MAX_OCCLUDED * math.pi * (
                    d[3] if d[2] > disc[2] else disc[3]) ** 2 for d in discs):
                continue
            objects.append(obj)
            discs.append(disc)
            break
    noise_seed = int(rng.integers(2**62))
    return SceneSpec(style, half_w, room_d, cam, pitch, yaw, light_pos, light_col,
                     floor_cols, wall_cols, floor_tile, wall_stripe, tuple(objects), noise_seed)


# ------------------------------------------------------------------------- attributes


@dataclass(frozen=True)
class Attribute:
    """A binary scene fact.

    Attributes:
        name: the task is ``attr_<name>``.
        group: the factor group it reads (see the module docstring's table).
        description: what is true when the label is 1.
        fn: (spec, facts) -> bool, where facts holds per-object numpy arrays.
    """

    name: str
    group: str
    description: str
    fn: Callable[[SceneSpec, Dict[str, np.ndarray]], bool]


def _facts(spec: SceneSpec) -> Dict[str, np.ndarray]:
    objs = spec.objects
    discs = np.array([_object_disc(spec, o) for o in objs]).reshape(-1, 4)
    return {
        "shape": np.array([o.shape for o in objs], int),
        "colour": np.array([o.colour for o in objs], int),
        "shiny": np.array([o.shiny for o in objs], bool),
        "size": np.array([o.volume ** (1 / 3) for o in objs]),
        "top": np.array([o.height for o in objs]),
        "wall_gap": np.array([spec.room_half_width - abs(o.x) - o.footprint for o in objs]),
        "u": discs[:, 0],
        "v": discs[:, 1],
        "z": discs[:, 2],
        "r": discs[:, 3],
    }


def _overlap_any(f: Dict[str, np.ndarray]) -> bool:
    n = len(f["u"])
    for i in range(n):
        for j in range(i + 1, n):
            if math.hypot(f["u"][i] - f["u"][j], f["v"][i] - f["v"][j]) < f["r"][i] + f["r"][j]:
                return True
    return False


def _build_attributes() -> Tuple[Attribute, ...]:
    A: List[Attribute] = []

    def add(name: str, group: str, desc: str, fn) -> None:
        A.append(Attribute(name, group, desc, fn))

    for ci, cname in enumerate(_COLOUR_NAMES):
        add(f"has_{cname}", "material", f"some object is {cname}",
            lambda s, f, ci=ci: bool(np.any(f["colour"] == ci)))
    add("has_shiny", "material", "some object is shiny", lambda s, f: bool(f["shiny"].any()))
    add("all_shiny", "material", "every object is shiny", lambda s, f: bool(f["shiny"].all()))
    add("has_warm_colour", "material", "some object is red or yellow",
        lambda s, f: not _WARM.isdisjoint(f["colour"].tolist()))
    add("has_cool_colour", "material", "some object is blue or cyan",
        lambda s, f: not _COOL.isdisjoint(f["colour"].tolist()))
    add("repeated_colour", "material", "two objects share a colour",
        lambda s, f: len(set(f["colour"].tolist())) < len(f["colour"]))
    add("shiny_warm", "material", "some red or yellow object is shiny",
        lambda s, f: any(c in _WARM and sh for c, sh in zip(f["colour"].tolist(),
                                                             f["shiny"].tolist())))

    for si, sname in enumerate(_render.SHAPE_NAMES):
        add(f"has_{sname}", "identity", f"some object is a {sname}",
            lambda s, f, si=si: bool(np.any(f["shape"] == si)))
    for si, sname in enumerate(_render.SHAPE_NAMES):
        add(f"largest_is_{sname}", "identity", f"the object of largest volume is a {sname}",
            lambda s, f, si=si: bool(f["shape"][np.argmax(f["size"])] == si))
    add("all_same_shape", "identity", "all objects have the same shape",
        lambda s, f: len(set(f["shape"].tolist())) == 1)
    add("has_flat_top", "identity", "some object is a box or a cylinder",
        lambda s, f: not {BOX, CYLINDER}.isdisjoint(f["shape"].tolist()))
    add("single_object", "identity", "exactly one object", lambda s, f: len(f["shape"]) == 1)
    add("many_objects", "identity", "three or more objects", lambda s, f: len(f["shape"]) >= 3)

    add("has_small", "size", "some object's cube-root volume is below 0.5",
        lambda s, f: bool((f["size"] < 0.5).any()))
    add("has_large", "size", "some object's cube-root volume exceeds 0.8",
        lambda s, f: bool((f["size"] > 0.8).any()))
    add("size_contrast", "size", "largest / smallest cube-root volume exceeds 1.4",
        lambda s, f: bool(f["size"].max() / f["size"].min() > 1.4))
    add("has_tall", "size", "some object is taller than 1",
        lambda s, f: bool((f["top"] > 1.0).any()))
    add("coverage_high", "size", "the objects' projected discs cover over 6 % of the image",
        lambda s, f: bool(np.sum(np.pi * f["r"] ** 2) > 0.06))

    add("object_left", "layout", "some object's centre is in the left third",
        lambda s, f: bool((f["u"] < 1 / 3).any()))
    add("object_right", "layout", "some object's centre is in the right third",
        lambda s, f: bool((f["u"] > 2 / 3).any()))
    add("object_centre", "layout", "some object's centre is in the middle third (horizontally)",
        lambda s, f: bool(((f["u"] >= 1 / 3) & (f["u"] <= 2 / 3)).any()))
    add("object_near", "layout", "some object is nearer than 3.2 (camera depth)",
        lambda s, f: bool((f["z"] < 3.2).any()))
    add("object_far", "layout", "some object is farther than 4.4 (camera depth)",
        lambda s, f: bool((f["z"] > 4.4).any()))
    add("objects_spread", "layout", "object centres span over 40 % of the image width",
        lambda s, f: bool(f["u"].max() - f["u"].min() > 0.4))
    add("objects_overlap", "layout", "two objects' projected discs overlap",
        lambda s, f: _overlap_any(f))
    add("object_at_border", "layout",
        "some object's projected disc comes within 5 % of the image border",
        lambda s, f: bool((np.minimum(np.minimum(f["u"], 1 - f["u"]),
                                      np.minimum(f["v"], 1 - f["v"])) - f["r"] < 0.05).any()))
    add("nearest_left", "layout", "the nearest object's centre is in the left half",
        lambda s, f: bool(f["u"][np.argmin(f["z"])] < 0.5))
    add("near_side_wall", "layout", "some object is within 1 of a side wall",
        lambda s, f: bool((f["wall_gap"] < 1.0).any()))

    add("camera_high", "camera", "the camera is higher than 1.7",
        lambda s, f: s.cam_pos[1] > 1.7)
    add("camera_steep", "camera", "the camera looks down by more than 22 degrees",
        lambda s, f: s.cam_pitch > math.radians(22))
    add("camera_yaw_left", "camera", "the camera is turned to the left",
        lambda s, f: s.cam_yaw > 0)
    add("room_wide", "camera", "the room is wider than 6.8", lambda s, f: s.room_half_width > 3.4)
    add("room_deep", "camera", "the room is deeper than 7", lambda s, f: s.room_depth > 7.0)

    add("light_left", "lighting", "the light is left of the camera",
        lambda s, f: s.light_pos[0] < s.cam_pos[0])
    add("light_high", "lighting", "the light is higher than 3", lambda s, f: s.light_pos[1] > 3.0)

    add("warm_light", "style", "warm light and wood tones (room style)",
        lambda s, f: bool((s.style >> 2) & 1))
    add("tiled_floor", "style", "the floor is checkered (room style)",
        lambda s, f: bool((s.style >> 1) & 1))
    add("striped_walls", "style", "the walls are striped (room style)",
        lambda s, f: bool(s.style & 1))

    add("nearest_is_warm", "mixed", "the nearest object is red or yellow",
        lambda s, f: bool(f["colour"][np.argmin(f["z"])] in _WARM))
    add("largest_is_shiny", "mixed", "the largest object is shiny",
        lambda s, f: bool(f["shiny"][np.argmax(f["size"])]))
    add("leftmost_is_sphere", "mixed", "the leftmost object is a sphere",
        lambda s, f: bool(f["shape"][np.argmin(f["u"])] == SPHERE))
    return tuple(A)


ATTRIBUTES: Tuple[Attribute, ...] = _build_attributes()
"""The binary scene facts, in task order (task name ``attr_<name>``)."""


def scene_attributes(spec: SceneSpec) -> np.ndarray:
    """The ``ATTRIBUTES`` of a scene as a uint8 vector (1 = true).

    Raises:
        BranchnasError: for a scene without objects (attributes are about objects).
    """
    if not spec.objects:
        raise BranchnasError("scene_attributes needs a scene with at least one object")
    f = _facts(spec)
    return np.array([bool(a.fn(spec, f)) for a in ATTRIBUTES], np.uint8)


SCENES_TASKS: Dict[str, Dict[str, Any]] = {
    "semseg": {"type": "segmentation", "num_classes": len(SEMSEG_CLASSES)},
    "depth": {"type": "depth"},
    "normals": {"type": "normals"},
    "edges": {"type": "edges"},
    "instance": {"type": "instance"},
    "scene": {"type": "classification", "num_classes": len(SCENE_CLASSES)},
    **{f"attr_{a.name}": {"type": "binary"} for a in ATTRIBUTES},
}
"""Every task the scenes benchmark labels: name -> {"type": ..., **params}."""


# --------------------------------------------------------------------------- rendering


def render_scenes(specs: Sequence[SceneSpec], resolution: Tuple[int, int]) -> Dict[str, np.ndarray]:
    """Render scenes into the compact arrays the dataset stores.

    Args:
        specs: scenes from :func:`sample_scene`.
        resolution: (H, W).

    Returns:
        ``image`` uint8 (N, 3, H, W); ``depth`` float32 (N, H, W); ``normals`` float16
        (N, 3, H, W); ``surface`` int8 (N, H, W) (0 floor, 1-3 walls, 4 + k object k);
        ``edges`` uint8 (N, H, W) (bit 1 occlusion, bit 2 crease); ``slot_shape`` int8
        (N, MAX_OBJECTS) (-1 = empty slot); ``scene`` int64 (N,); ``attributes`` uint8
        (N, len(ATTRIBUTES)).
    """
    h, w = resolution
    parts = _render.chunked(list(specs), h, w)
    out = {
        "image": np.concatenate([p["image"] for p in parts]),
        "depth": np.concatenate([p["depth"] for p in parts]).astype(np.float32),
        "normals": np.concatenate([p["normals"] for p in parts]).astype(np.float16),
        "surface": np.concatenate([p["surface"] for p in parts]).astype(np.int8),
        "edges": np.concatenate([p["edges"] for p in parts]),
    }
    slot = np.full((len(specs), MAX_OBJECTS), -1, np.int8)
    for i, s in enumerate(specs):
        for k, o in enumerate(s.objects):
            slot[i, k] = o.shape
    out["slot_shape"] = slot
    out["scene"] = np.array([s.style for s in specs], np.int64)
    out["attributes"] = np.stack([scene_attributes(s) for s in specs]).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    yy, xx = np.divmod(np.arange(h * w, dtype=np.float64), w)
    return yy, xx


def _instance_offsets(ids: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 (dy, dx) from each instance pixel to its instance's pixel centroid.

    Args:
        ids: (H, W) integer ids, 0 = no instance.
    """
    h, w = ids.shape
    flat = ids.reshape(-1)
    n = MAX_OBJECTS + 1
    yy, xx = _pixel_grid(h, w)
    count = np.maximum(np.bincount(flat, minlength=n), 1)
    cy = np.bincount(flat, weights=yy, minlength=n) / count
    cx = np.bincount(flat, weights=xx, minlength=n) / count
    inst = flat > 0
    dy = np.where(inst, cy[flat] - yy, np.nan).astype(np.float32)
    dx = np.where(inst, cx[flat] - xx, np.nan).astype(np.float32)
    return np.stack([dy, dx]).reshape(2, h, w)


def _resolution(resolution: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(resolution, (int, np.integer)) and not isinstance(resolution, bool):
        hw = (int(resolution), int(resolution))
    elif (isinstance(resolution, (tuple, list)) and len(resolution) == 2
          and all(isinstance(v, (int, np.integer)) for v in resolution)):
        hw = (int(resolution[0]), int(resolution[1]))
    else:
        raise BranchnasError(
            f"resolution must be an int or (height, width), got {resolution!r}; e.g. 64"
        )
    if min(hw) < 8 or max(hw) > 1024:
        raise BranchnasError(f"resolution {hw} is out of range; use 8 to 1024 pixels per side")
    return hw


# ----------------------------------------------------------------------------- dataset


@register_dataset("scenes")
class ScenesDataset(TaskDataset):
    """The embedded benchmark (see the module docstring for tasks and relatedness).

    Args:
        split: "train", "val" or "test" (disjoint seeds).
        size: number of images; default ``DEFAULT_SIZES[split]`` (2000/500/500).
        resolution: image side in pixels, or (H, W). Default 64.
        seed: dataset seed.
        tasks: names of the tasks to label (default: all of ``SCENES_TASKS``).
        cache_dir: cache root; None = ``$BRANCHNAS_CACHE`` or ``~/.cache/branchnas``;
            False = render in memory without caching.
        root: alias of ``cache_dir`` (what ``create_dataset(..., root=...)`` passes).

    Raises:
        BranchnasError: for an unknown split or task, or a bad size/resolution.
    """

    def __init__(
        self,
        split: str = "train",
        size: Optional[int] = None,
        resolution: Union[int, Sequence[int]] = 64,
        seed: int = 0,
        tasks: Optional[Sequence[str]] = None,
        cache_dir: Union[None, bool, str, Path] = None,
        root: Union[None, str, Path] = None,
    ) -> None:
        if split not in _SPLITS:
            raise BranchnasError(f"unknown split {split!r}; choose one of: train, val, test")
        if size is None:
            size = DEFAULT_SIZES[split]
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise BranchnasError(f"size must be a positive integer, got {size!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise BranchnasError(f"seed must be a non-negative integer, got {seed!r}")
        if cache_dir is None and root is not None:
            cache_dir = root
        super().__init__(SCENES_TASKS, tasks, dataset="scenes")
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.resolution = _resolution(resolution)
        self.config = {
            "version": RENDER_VERSION,
            "split": split,
            "size": self.size,
            "resolution": list(self.resolution),
            "seed": self.seed,
        }
        if cache_dir is False:
            self._arrays = self._build()
        else:
            cd = None if cache_dir is None or cache_dir is True else cache_dir
            self._arrays = cached_arrays("scenes", self.config, self._build, cd)
        # image-level labels as small in-memory tensors: one row per item
        attr_cols = [i for i, a in enumerate(ATTRIBUTES) if f"attr_{a.name}" in self.tasks]
        self._attr_names = [f"attr_{ATTRIBUTES[i].name}" for i in attr_cols]
        self._attr = torch.from_numpy(
            np.array(self._arrays["attributes"])[:, attr_cols].astype(np.float32))
        self._scene = torch.from_numpy(np.array(self._arrays["scene"], np.int64))

    def _build(self) -> Dict[str, np.ndarray]:
        logger.info("rendering %d %s scenes at %dx%d", self.size, self.split, *self.resolution)
        specs = [sample_scene(self.seed, self.split, i) for i in range(self.size)]
        return render_scenes(specs, self.resolution)

    def spec(self, index: int) -> SceneSpec:
        """The generative factors of item ``index``."""
        return sample_scene(self.seed, self.split, self._check_index(index))

    def __len__(self) -> int:
        return self.size

    def _check_index(self, index: int) -> int:
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of {self.size}")
        return int(index)

    def __getitem__(self, index: int) -> Item:
        i = self._check_index(index)
        a = self._arrays
        image = torch.from_numpy(np.asarray(a["image"][i], np.float32) / 255.0)
        labels: Dict[str, Tensor] = {}
        surface = None
        for name in self.tasks:
            if name == "semseg" or name == "instance":
                if surface is None:
                    surface = np.asarray(a["surface"][i], np.int64)
                if name == "semseg":
                    lut = np.concatenate([[0, 1, 1, 1], 2 + np.maximum(a["slot_shape"][i], 0)])
                    labels[name] = torch.from_numpy(lut[surface].astype(np.int64))
                else:
                    ids = np.where(surface >= _render.NUM_PLANES,
                                   surface - _render.NUM_PLANES + 1, 0)
                    labels[name] = torch.from_numpy(_instance_offsets(ids))
            elif name == "depth":
                labels[name] = torch.from_numpy(np.array(a["depth"][i], np.float32)[None])
            elif name == "normals":
                n = np.asarray(a["normals"][i], np.float32)
                n = n / np.linalg.norm(n, axis=0, keepdims=True)
                labels[name] = torch.from_numpy(n)
            elif name == "edges":
                labels[name] = torch.from_numpy((np.asarray(a["edges"][i]) > 0)[None]
                                                .astype(np.float32))
            elif name == "scene":
                labels[name] = self._scene[i].clone()
        if self._attr_names:
            labels.update(zip(self._attr_names, self._attr[i].clone().unbind()))
        return self.make_item(image, {t: labels[t] for t in self.tasks})

    def __repr__(self) -> str:
        return (f"ScenesDataset(split={self.split!r}, size={self.size}, "
                f"resolution={self.resolution}, seed={self.seed}, tasks={len(self.tasks)})")
