"""Vectorised ray casting of small 3-D rooms (the engine behind the ``scenes`` benchmark).

World frame: y up, the floor is the plane y = 0, the back wall z = ``room_depth``, the side
walls x = ±``room_half_width``; the camera sits near z = 0 looking down into the room. The
camera frame follows OpenCV: x right, y down, z forward. Primary ray directions have a
camera-z component of exactly 1, so the ray parameter of a hit *is* its depth (distance along
the camera z axis).

Everything is numpy over whole batches of scenes: rays are (B, P, 3) with P = H·W pixels, and
the objects of one shape type across the batch are intersected together. No per-pixel Python.

Surfaces are indexed per scene: 0 floor, 1 left wall, 2 back wall, 3 right wall, then
4 + k for object slot k. Each surface has faces (a box has 6, a capped cylinder 2); the pair
(surface, face) is a *patch*, inside which depth and normals vary smoothly. Edge labels are
the patch boundaries where depth jumps (occlusion) or the normal turns (crease).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = [
    "BOX",
    "CONE",
    "CYLINDER",
    "MAX_OBJECTS",
    "NUM_PLANES",
    "SHAPE_NAMES",
    "SPHERE",
    "SceneObject",
    "SceneSpec",
    "camera_rotation",
    "chunked",
    "focal_fraction",
    "intrinsics",
    "project",
    "render_batch",
]

SPHERE, BOX, CYLINDER, CONE = 0, 1, 2, 3
SHAPE_NAMES: Tuple[str, ...] = ("sphere", "box", "cylinder", "cone")
NUM_PLANES = 4  # floor, left wall, back wall, right wall
MAX_OBJECTS = 4
HFOV_DEG = 60.0  # horizontal field of view of the pinhole camera

_EPS = 1e-4
_F32 = np.float32


@dataclass(frozen=True)
class SceneObject:
    """One object resting on the floor.

    Attributes:
        shape: SPHERE, BOX, CYLINDER or CONE.
        colour: index into the object palette (``scenes.COLOURS``).
        shiny: specular (shiny) or matte material.
        x, z: floor position of the object's vertical axis (world units).
        radius: horizontal half-size: sphere/cylinder/cone radius, box half-extent along its x.
        depth: box half-extent along its z (equal to ``radius`` for the round shapes).
        height: full height (2·radius for a sphere).
        yaw: rotation about the vertical axis in radians (boxes only; 0 otherwise).
        albedo: RGB reflectance in [0, 1].
    """

    shape: int
    colour: int
    shiny: bool
    x: float
    z: float
    radius: float
    depth: float
    height: float
    yaw: float
    albedo: Tuple[float, float, float]

    @property
    def volume(self) -> float:
        """Exact volume of the solid."""
        r, h = self.radius, self.height
        if self.shape == SPHERE:
            return 4.0 / 3.0 * np.pi * r**3
        if self.shape == BOX:
            return 2 * r * 2 * self.depth * h
        if self.shape == CYLINDER:
            return np.pi * r * r * h
        return np.pi * r * r * h / 3.0

    @property
    def footprint(self) -> float:
        """Radius of a floor circle containing the object's footprint."""
        if self.shape == BOX:
            return float(np.hypot(self.radius, self.depth))
        return self.radius


@dataclass(frozen=True)
class SceneSpec:
    """Every generative factor of one scene (see ``scenes`` for how they are drawn).

    Attributes:
        style: room style index (the scene class).
        room_half_width, room_depth: the side walls are at x = ±room_half_width, the back
            wall at z = room_depth.
        cam_pos: camera centre (x, y, z) in world units.
        cam_pitch: downward tilt in radians.
        cam_yaw: rotation about the vertical, radians, positive turns the view to the left.
        light_pos: point light (x, y, z).
        light_colour: RGB intensity of the light.
        floor_colours, wall_colours: two RGB albedos each (equal when the surface is plain).
        floor_tile: tile size of the checkered floor (0 = plain floor).
        wall_stripe: stripe width on the walls (0 = plain walls).
        objects: the objects, at most ``MAX_OBJECTS``.
        noise_seed: seed of the sensor noise added to the image.
    """

    style: int
    room_half_width: float
    room_depth: float
    cam_pos: Tuple[float, float, float]
    cam_pitch: float
    cam_yaw: float
    light_pos: Tuple[float, float, float]
    light_colour: Tuple[float, float, float]
    floor_colours: Tuple[Tuple[float, float, float], Tuple[float, float, float]]
    wall_colours: Tuple[Tuple[float, float, float], Tuple[float, float, float]]
    floor_tile: float
    wall_stripe: float
    objects: Tuple[SceneObject, ...]
    noise_seed: int


def camera_rotation(pitch: float, yaw: float) -> np.ndarray:
    """World-from-camera rotation: columns are the camera's right, down, forward axes."""
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    # yaw > 0 turns towards -x (the viewer's left)
    forward = np.array([-sy * cp, -sp, cy * cp])
    right = np.array([cy, 0.0, sy])
    down = np.cross(right, forward)
    return np.stack([right, down, forward], axis=1)


def intrinsics(height: int, width: int) -> Tuple[float, float, float]:
    """Focal length (pixels) and principal point (cx, cy) for the given image size."""
    f = (width / 2.0) / np.tan(np.radians(HFOV_DEG) / 2.0)
    return float(f), width / 2.0, height / 2.0


# --------------------------------------------------------------------------- primitives
# Vectors are tuples of three arrays (x, y, z) (structure of arrays: much faster than
# (…, 3) arrays with einsum). Each primitive takes ray origins ``o`` (arrays (n, P) or (n, 1))
# and directions ``d`` ((n, P)) relative to the object (its floor centre at the origin) and
# per-object parameters of shape (n, 1); it returns the ray parameter t (n, P) (inf on a
# miss), the local normal (three (n, P) arrays, or None when ``normals`` is False) and the
# face index (n, P).

Vec = Tuple[np.ndarray, np.ndarray, np.ndarray]
_INF = np.float32(np.inf)


def _dot(a: Vec, b: Vec) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _normalise(v: Vec) -> Vec:
    inv = 1.0 / np.maximum(np.sqrt(_dot(v, v)), 1e-12)
    return v[0] * inv, v[1] * inv, v[2] * inv


def _smallest_root(roots, valid) -> np.ndarray:
    t = np.full(np.broadcast(*roots).shape, _INF, _F32)
    for root, ok in zip(roots, valid):
        t = np.where(ok & (root > _EPS) & (root < t), root, t)
    return t


def _sphere(o: Vec, d: Vec, r: np.ndarray, normals: bool):
    ox, oy, oz = o[0], o[1] - r, o[2]
    a = _dot(d, d)
    b = ox * d[0] + oy * d[1] + oz * d[2]
    c = ox * ox + oy * oy + oz * oz - r * r
    disc = b * b - a * c
    hit = disc >= 0
    sq = np.sqrt(np.where(hit, disc, 0))
    t = _smallest_root(((-b - sq) / a, (-b + sq) / a), (hit, hit))
    face = np.zeros(t.shape, np.int8)
    if not normals:
        return t, None, face
    tf = np.where(np.isfinite(t), t, 0)
    inv = 1.0 / r
    return t, ((ox + tf * d[0]) * inv, (oy + tf * d[1]) * inv, (oz + tf * d[2]) * inv), face


def _box(o: Vec, d: Vec, ext: Vec, normals: bool):
    tmin = tmax = None
    axis = None
    for k in range(3):
        dk = np.where(np.abs(d[k]) < 1e-12, np.float32(1e-12), d[k])
        inv = 1.0 / dk
        t1 = (-ext[k] - o[k]) * inv
        t2 = (ext[k] - o[k]) * inv
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        if tmin is None:
            tmin, tmax, axis = near, far, np.zeros(near.shape, np.int8)
        else:
            better = near > tmin
            axis = np.where(better, np.int8(k), axis)
            tmin = np.maximum(tmin, near)
            tmax = np.minimum(tmax, far)
    hit = (tmax >= tmin) & (tmin > _EPS)
    t = np.where(hit, tmin, _INF)
    # the face points against the ray along the entry axis
    dax = np.where(axis == 0, d[0], np.where(axis == 1, d[1], d[2]))
    positive = dax < 0  # entering through the +axis face
    face = (axis * 2 + positive).astype(np.int8)
    if not normals:
        return t, None, face
    sign = np.where(positive, np.float32(1), np.float32(-1))
    zero = np.zeros(t.shape, _F32)
    n = tuple(np.where(axis == k, sign, zero) for k in range(3))
    return t, n, face


def _cylinder(o: Vec, d: Vec, r: np.ndarray, h: np.ndarray, normals: bool):
    ox, oy, oz = o
    dx, dy, dz = d
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - r * r
    disc = b * b - a * c
    ok = (disc >= 0) & (a > 1e-12)
    sq = np.sqrt(np.where(ok, disc, 0))
    asafe = np.where(a > 1e-12, a, np.float32(1))
    roots = ((-b - sq) / asafe, (-b + sq) / asafe)
    valid = tuple(ok & (oy + rt * dy >= 0) & (oy + rt * dy <= h) for rt in roots)
    t_side = _smallest_root(roots, valid)
    dys = np.where(np.abs(dy) < 1e-12, np.float32(1e-12), dy)
    t_cap = (h - oy) / dys
    px, pz = ox + t_cap * dx, oz + t_cap * dz
    t_cap = np.where((t_cap > _EPS) & (px * px + pz * pz <= r * r), t_cap, _INF)
    use_cap = t_cap < t_side
    t = np.where(use_cap, t_cap, t_side)
    face = use_cap.astype(np.int8)
    if not normals:
        return t, None, face
    tf = np.where(np.isfinite(t), t, 0)
    inv = 1.0 / r
    zero = np.zeros(t.shape, _F32)
    n = (np.where(use_cap, zero, (ox + tf * dx) * inv),
         np.where(use_cap, np.float32(1), zero),
         np.where(use_cap, zero, (oz + tf * dz) * inv))
    return t, n, face


def _cone(o: Vec, d: Vec, r: np.ndarray, h: np.ndarray, normals: bool):
    # x² + z² = k² (h - y)² for 0 <= y <= h, with k = r / h
    ox, oy, oz = o
    dx, dy, dz = d
    k2 = (r / h) ** 2
    w = h - oy
    a = dx * dx + dz * dz - k2 * dy * dy
    b = ox * dx + oz * dz + k2 * w * dy
    c = ox * ox + oz * oz - k2 * w * w
    disc = b * b - a * c
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0))
    small = np.abs(a) < 1e-12
    asafe = np.where(small, np.float32(1), a)
    r1, r2 = (-b - sq) / asafe, (-b + sq) / asafe
    if small.any():  # ray parallel to the slant: a single root
        bsafe = np.where(np.abs(b) < 1e-12, np.float32(1e-12), b)
        lin = -c / (2 * bsafe)
        r1, r2 = np.where(small, lin, r1), np.where(small, lin, r2)
    valid = tuple(ok & (oy + rt * dy >= 0) & (oy + rt * dy <= h) for rt in (r1, r2))
    t = _smallest_root((r1, r2), valid)
    face = np.zeros(t.shape, np.int8)
    if not normals:
        return t, None, face
    tf = np.where(np.isfinite(t), t, 0)
    n = _normalise((ox + tf * dx, k2 * (h - oy - tf * dy), oz + tf * dz))
    return t, n, face


@dataclass
class _Objects:
    """The objects of a batch, one row per present object (parameters as (n, 1) columns)."""

    scene: np.ndarray  # (n,) scene index in the batch
    slot: np.ndarray  # (n,) slot k
    shape: np.ndarray  # (n,)
    x: np.ndarray
    z: np.ndarray
    radius: np.ndarray
    depth: np.ndarray
    height: np.ndarray
    cos_yaw: np.ndarray
    sin_yaw: np.ndarray


def _pack_objects(specs: Sequence[SceneSpec]) -> _Objects:
    rows = [(b, k, o) for b, s in enumerate(specs) for k, o in enumerate(s.objects)]

    def col(fn) -> np.ndarray:
        return np.array([fn(o) for _, _, o in rows], _F32).reshape(-1, 1)

    return _Objects(
        scene=np.array([r[0] for r in rows], np.int64),
        slot=np.array([r[1] for r in rows], np.int64),
        shape=np.array([r[2].shape for r in rows], np.int64),
        x=col(lambda o: o.x),
        z=col(lambda o: o.z),
        radius=col(lambda o: o.radius),
        depth=col(lambda o: o.depth),
        height=col(lambda o: o.height),
        cos_yaw=col(lambda o: np.cos(o.yaw)),
        sin_yaw=col(lambda o: np.sin(o.yaw)),
    )


def _intersect_objects(objs: _Objects, o: Vec, d: Vec, normals: bool):
    """Intersect rays with every object of their scene.

    Args:
        objs: packed objects.
        o: origins, three arrays (B, P) or (B, 1); d: directions, three (B, P) arrays.
        normals: also compute world normals.

    Returns:
        t (n, P), world normals (three (n, P) arrays or None) and faces (n, P), one row per
        object in ``objs`` order.
    """
    n_obj, P = len(objs.scene), d[0].shape[1]
    t = np.full((n_obj, P), _INF, _F32)
    face = np.zeros((n_obj, P), np.int8)
    nrm = tuple(np.zeros((n_obj, P), _F32) for _ in range(3)) if normals else None
    for shape in (SPHERE, BOX, CYLINDER, CONE):
        idx = np.nonzero(objs.shape == shape)[0]
        if idx.size == 0:
            continue
        sc = objs.scene[idx]
        oi = (o[0][sc] - objs.x[idx], o[1][sc], o[2][sc] - objs.z[idx])
        di = (d[0][sc], d[1][sc], d[2][sc])
        if shape == BOX:
            c, s = objs.cos_yaw[idx], objs.sin_yaw[idx]
            # local = R^T world, with R (world-from-local) a rotation about y by yaw
            ol = (c * oi[0] - s * oi[2], oi[1], s * oi[0] + c * oi[2])
            dl = (c * di[0] - s * di[2], di[1], s * di[0] + c * di[2])
            ext = (objs.radius[idx], objs.height[idx] / 2, objs.depth[idx])
            ol = (ol[0], ol[1] - ext[1], ol[2])
            ti, ni, fi = _box(ol, dl, ext, normals)
            if ni is not None:
                ni = (c * ni[0] + s * ni[2], ni[1], -s * ni[0] + c * ni[2])
        elif shape == SPHERE:
            ti, ni, fi = _sphere(oi, di, objs.radius[idx], normals)
        elif shape == CYLINDER:
            ti, ni, fi = _cylinder(oi, di, objs.radius[idx], objs.height[idx], normals)
        else:
            ti, ni, fi = _cone(oi, di, objs.radius[idx], objs.height[idx], normals)
        t[idx], face[idx] = ti, fi
        if normals:
            for k in range(3):
                nrm[k][idx] = ni[k]
    return t, nrm, face


def _plane_hits(o: Vec, d: Vec, half_width: np.ndarray, depth: np.ndarray) -> List[np.ndarray]:
    """Ray parameters (B, P) for the floor, left, back and right walls (inf where missed)."""
    dx, dy, dz = d
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = [
            np.where(dy < -1e-9, -o[1] / dy, _INF),
            np.where(dx < -1e-9, (-half_width - o[0]) / dx, _INF),
            np.where(dz > 1e-9, (depth - o[2]) / dz, _INF),
            np.where(dx > 1e-9, (half_width - o[0]) / dx, _INF),
        ]
    return [np.where(t > _EPS, t, _INF).astype(_F32) for t in ts]


_PLANE_NORMALS = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1], [-1, 0, 0]], _F32)


def render_batch(specs: Sequence[SceneSpec], height: int, width: int) -> Dict[str, np.ndarray]:
    """Render scenes and their exact per-pixel geometry.

    Args:
        specs: the scenes (any number; memory grows with len(specs)·height·width).
        height, width: image size in pixels.

    Returns:
        A dict of arrays over the batch B:
        ``image`` uint8 (B, 3, H, W); ``depth`` float32 (B, H, W) camera-z distance;
        ``normals`` float32 (B, 3, H, W) unit camera-frame normals; ``surface`` int16
        (B, H, W) (0 floor, 1 left, 2 back, 3 right wall, 4 + k object slot k);
        ``edges`` uint8 (B, H, W) with bit 1 = occlusion edge, bit 2 = crease edge.

    Raises:
        RuntimeError: if a camera ray leaves the room (scene factors out of range).
    """
    B, P = len(specs), height * width
    K = NUM_PLANES + MAX_OBJECTS
    f, cx, cy = intrinsics(height, width)
    jj, ii = np.meshgrid(np.arange(width, dtype=_F32), np.arange(height, dtype=_F32))
    u = ((jj.ravel() + 0.5 - cx) / f).astype(_F32)
    v = ((ii.ravel() + 0.5 - cy) / f).astype(_F32)
    R = np.stack([camera_rotation(s.cam_pitch, s.cam_yaw) for s in specs]).astype(_F32)
    # world direction = R · (u, v, 1): camera-z component exactly 1
    d = tuple(R[:, k, 0:1] * u + R[:, k, 1:2] * v + R[:, k, 2:3] for k in range(3))
    cam = np.array([s.cam_pos for s in specs], _F32)
    o = tuple(cam[:, k:k + 1] for k in range(3))
    half_w = np.array([[s.room_half_width] for s in specs], _F32)
    room_d = np.array([[s.room_depth] for s in specs], _F32)

    objs = _pack_objects(specs)
    T = np.full((B, K, P), _INF, _F32)
    T[:, :NUM_PLANES] = np.stack(_plane_hits(o, d, half_w, room_d), axis=1)
    t_o, n_o, f_o = _intersect_objects(objs, o, d, normals=True)
    slots = NUM_PLANES + objs.slot
    T[objs.scene, slots] = t_o
    surface = np.argmin(T, axis=1)  # (B, P)
    # flat index of (b, surface[b, p], p) into any (B, K, P) table
    gather = ((np.arange(B)[:, None] * K + surface) * P + np.arange(P)).ravel()
    t = T.reshape(-1)[gather].reshape(B, P)
    if not np.all(np.isfinite(t)):
        raise RuntimeError("a camera ray escaped the room; scene parameters out of range")
    del T

    # world normal and face of the visible surface, gathered from per-surface tables
    table = np.empty((B, K, P), _F32)
    N = []
    for k in range(3):
        table[:, :NUM_PLANES] = _PLANE_NORMALS[:, k][None, :, None]
        table[objs.scene, slots] = n_o[k]
        N.append(table.reshape(-1)[gather].reshape(B, P))
    N = _normalise(tuple(N))
    ftab = np.zeros((B, K, P), np.int8)
    ftab[objs.scene, slots] = f_o
    face = ftab.reshape(-1)[gather].reshape(B, P)
    del ftab, table

    pts = tuple(o[k] + t * d[k] for k in range(3))
    albedo, spec_k, shininess = _materials(specs, objs, surface, pts)

    # shading: ambient + Lambert + Blinn-Phong, with cast shadows from the objects
    light = np.array([s.light_pos for s in specs], _F32)
    to_light = tuple(light[:, k:k + 1] - pts[k] for k in range(3))
    dist = np.sqrt(_dot(to_light, to_light))
    L = tuple(c / dist for c in to_light)
    ndl = _dot(N, L)
    shadow = np.zeros((B, P), bool)
    if len(objs.scene):
        origin = tuple(pts[k] + 1e-3 * N[k] for k in range(3))
        ts, _, _ = _intersect_objects(
            objs, origin, tuple(light[:, k:k + 1] - origin[k] for k in range(3)), normals=False
        )
        blocked = np.zeros((B, MAX_OBJECTS, P), bool)
        blocked[objs.scene, objs.slot] = ts < 1.0
        shadow = blocked.any(axis=1)
    lit = np.where(shadow | (ndl <= 0), np.float32(0), ndl)
    V = _normalise(tuple(-c for c in d))
    Hh = _normalise(tuple(L[k] + V[k] for k in range(3)))
    ndh = np.clip(_dot(N, Hh), 0, 1)
    spec = spec_k * ndh**shininess * (lit > 0)
    lc = np.array([s.light_colour for s in specs], _F32)  # (B, 3)
    diffuse = 0.3 + 0.9 * lit / (1.0 + 0.02 * dist * dist)
    # sensor noise: uniform, zero mean, std 0.012 (cheaper to draw than Gaussian)
    noise = np.stack([
        np.random.default_rng(s.noise_seed).random((3, P), dtype=_F32) for s in specs
    ])
    rgb = (albedo * diffuse[:, None] + spec[:, None]) * lc[:, :, None] + _NOISE * (noise - 0.5)
    image = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)

    # camera-frame normals: n_cam = R^T n_world
    Nc = np.stack([R[:, 0, k:k + 1] * N[0] + R[:, 1, k:k + 1] * N[1] + R[:, 2, k:k + 1] * N[2]
                   for k in range(3)], axis=1)  # (B, 3, P)
    patch = surface.astype(np.int16) * 8 + face
    edges = _edges(
        t.reshape(B, height, width),
        Nc.reshape(B, 3, height, width),
        patch.reshape(B, height, width),
    )
    return {
        "image": image.reshape(B, 3, height, width),
        "depth": t.reshape(B, height, width),
        "normals": Nc.reshape(B, 3, height, width),
        "surface": surface.reshape(B, height, width).astype(np.int16),
        "edges": edges,
    }


_NOISE = np.float32(0.012 * np.sqrt(12.0))  # width of the uniform noise with std 0.012

# An occlusion edge: neighbouring pixels on different patches whose depths differ by more
# than this fraction of the nearer one. A crease: the normals turn by more than CREASE_DEG.
OCCLUSION_REL = 0.04
CREASE_DEG = 20.0


def _edges(depth: np.ndarray, normals: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """Edge bits (B, H, W): 1 occlusion, 2 crease, marked on the nearer pixel of each pair.

    Args:
        depth: (B, H, W); normals: (B, 3, H, W); patch: (B, H, W) surface/face ids.
    """
    out = np.zeros(depth.shape, np.uint8)
    cos_c = np.float32(np.cos(np.radians(CREASE_DEG)))
    for axis in (1, 2):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        na = normals[(slice(None), slice(None)) + a[1:]]
        nb = normals[(slice(None), slice(None)) + b[1:]]
        za, zb = depth[a], depth[b]
        boundary = patch[a] != patch[b]
        occl = boundary & (np.abs(za - zb) > OCCLUSION_REL * np.minimum(za, zb))
        crease = boundary & ((na * nb).sum(axis=1) < cos_c)
        bits = occl.astype(np.uint8) | (crease.astype(np.uint8) << 1)
        out[a] |= np.where(za <= zb, bits, np.uint8(0))
        out[b] |= np.where(zb <= za, bits, np.uint8(0))
    return out


def _materials(specs: Sequence[SceneSpec], objs: _Objects, surface: np.ndarray, pts: Vec):
    """Albedo (B, 3, P), specular strength (B, P) and exponent (B, P) of each visible point.

    Each scene has a palette of rows: 0/1 floor colours a/b, 2/3 wall colours a/b, then
    4 + k for object slot k; every pixel picks a row (plain surfaces have a = b).
    """
    B, P = surface.shape
    R = NUM_PLANES + MAX_OBJECTS
    tile = np.array([[max(s.floor_tile, 1e-3)] for s in specs], _F32)
    stripe = np.array([[max(s.wall_stripe, 1e-3)] for s in specs], _F32)
    floor_b = (np.floor(pts[0] / tile) + np.floor(pts[2] / tile)) % 2
    coord = np.where(surface == 2, pts[0], pts[2])  # back wall: x, side walls: z
    wall_b = np.floor(coord / stripe) % 2
    row = np.where(surface == 0, floor_b,
                   np.where(surface < NUM_PLANES, 2 + wall_b, surface)).astype(np.int64)
    palette = np.zeros((B, R, 3), _F32)
    palette[:, 0:2] = [s.floor_colours for s in specs]
    palette[:, 2:4] = [s.wall_colours for s in specs]
    spec_table = np.full((B, R), 0.04, _F32)
    shin_table = np.full((B, R), 8.0, _F32)
    if len(objs.scene):
        rows = NUM_PLANES + objs.slot
        palette[objs.scene, rows] = [specs[b].objects[k].albedo
                                     for b, k in zip(objs.scene, objs.slot)]
        shiny = np.array([specs[b].objects[k].shiny for b, k in zip(objs.scene, objs.slot)])
        spec_table[objs.scene, rows] = np.where(shiny, 0.75, 0.05)
        shin_table[objs.scene, rows] = np.where(shiny, 48.0, 6.0)
    flat = (np.arange(B)[:, None] * R + row).ravel()
    albedo = palette.reshape(-1, 3)[flat].reshape(B, P, 3).transpose(0, 2, 1)
    spec_k = spec_table.reshape(-1)[flat].reshape(B, P)
    shininess = shin_table.reshape(-1)[flat].reshape(B, P)
    return albedo, spec_k, shininess


def project(spec: SceneSpec, point: Sequence[float]) -> Tuple[float, float, float]:
    """Project a world point: returns (u, v, z) with u, v image fractions and z its depth.

    Resolution independent: u = column / width and v = row / height of the projection
    (for non-square images v uses the width-based focal length, i.e. v is scaled like u).
    """
    cp, sp = math.cos(spec.cam_pitch), math.sin(spec.cam_pitch)
    cy, sy = math.cos(spec.cam_yaw), math.sin(spec.cam_yaw)
    px = point[0] - spec.cam_pos[0]
    py = point[1] - spec.cam_pos[1]
    pz = point[2] - spec.cam_pos[2]
    # rows of R^T = camera axes (see camera_rotation): right, down = right x forward, forward
    fx, fy, fz = -sy * cp, -sp, cy * cp
    rx, rz = cy, sy
    dx, dy, dz = -rz * fy, rz * fx - rx * fz, rx * fy
    xc = rx * px + rz * pz
    yc = dx * px + dy * py + dz * pz
    zc = fx * px + fy * py + fz * pz
    fn = focal_fraction()
    return 0.5 + fn * xc / zc, 0.5 + fn * yc / zc, zc


def focal_fraction() -> float:
    """Focal length as a fraction of the image width."""
    return _FOCAL_FRACTION


_FOCAL_FRACTION = 0.5 / math.tan(math.radians(HFOV_DEG) / 2.0)


def chunked(specs: Sequence[SceneSpec], height: int, width: int,
            pixel_budget: int = 1 << 18) -> List[Dict[str, np.ndarray]]:
    """Render ``specs`` in chunks of at most ``pixel_budget`` pixels (bounded memory)."""
    per = max(1, pixel_budget // (height * width))
    return [render_batch(specs[i:i + per], height, width) for i in range(0, len(specs), per)]
