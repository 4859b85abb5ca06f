"""Colliders: analytic shapes applied to grid velocities after the grid update (a post-process step).

Each collider has a signed distance ``phi`` and an outward normal ``n`` at every grid node.  Where
``phi < 0`` and the velocity relative to the collider points inward (``v_rel . n < 0``), Coulomb
friction is applied: the normal part is removed and the tangential part shrinks by
``friction * |v_n|``, or stops if it is smaller (sticking).  This is the standard MPM collider
treatment (Stomakhin et al. 2013, "A material point method for snow simulation", section 8).

Geometry and velocities are plain numbers packed into one array per simulation, so changing them
never recompiles a kernel; the list of collider *kinds* is compile-time structure.  Friction
coefficients are differentiable parameters passed separately.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Union

import numpy as np

from .geometry import euler_xyz, load_mesh

#: floats per collider row: 15 geometry slots + 3 for the collider's linear velocity
ROW = 18


def _v3(v, name):
    t = tuple(float(a) for a in v)
    if len(t) != 3 or not all(math.isfinite(a) for a in t):
        raise ValueError(f"collider {name} must be 3 finite numbers, got {v!r}")
    return t


def _check_friction(friction: float) -> float:
    f = float(friction)
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"collider friction must be a finite number >= 0, got {friction!r}")
    return f


@dataclasses.dataclass(frozen=True)
class Plane:
    """Half-space below the plane through ``point`` with unit ``normal`` (pointing into the free side)."""

    point: tuple[float, float, float] = (0.0, 0.0, 0.0)
    normal: tuple[float, float, float] = (0.0, 1.0, 0.0)
    friction: float = 0.5
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    kind = "plane"

    def __post_init__(self):
        n = np.asarray(_v3(self.normal, "normal"))
        norm = float(np.linalg.norm(n))
        if norm < 1e-12:
            raise ValueError("plane normal must be non-zero")
        object.__setattr__(self, "normal", tuple(float(a) for a in n / norm))
        object.__setattr__(self, "point", _v3(self.point, "point"))
        object.__setattr__(self, "velocity", _v3(self.velocity, "velocity"))
        object.__setattr__(self, "friction", _check_friction(self.friction))

    def row(self) -> np.ndarray:
        r = np.zeros(ROW)
        r[0:3], r[3:6], r[15:18] = self.point, self.normal, self.velocity
        return r


@dataclasses.dataclass(frozen=True)
class Sphere:
    """Solid ball of ``radius`` around ``center`` (moving at ``velocity``)."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius: float = 0.1
    friction: float = 0.5
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    kind = "sphere"

    def __post_init__(self):
        object.__setattr__(self, "center", _v3(self.center, "center"))
        object.__setattr__(self, "velocity", _v3(self.velocity, "velocity"))
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"sphere radius must be positive, got {self.radius!r}")
        object.__setattr__(self, "friction", _check_friction(self.friction))

    def row(self) -> np.ndarray:
        r = np.zeros(ROW)
        r[0:3], r[3], r[15:18] = self.center, self.radius, self.velocity
        return r


@dataclasses.dataclass(frozen=True)
class Box:
    """Solid box with ``half_size`` around ``center``, rotated by ``rotation_deg`` (XYZ Euler, degrees)."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    half_size: tuple[float, float, float] = (0.1, 0.1, 0.1)
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    friction: float = 0.5
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    kind = "box"

    def __post_init__(self):
        object.__setattr__(self, "center", _v3(self.center, "center"))
        object.__setattr__(self, "half_size", _v3(self.half_size, "half_size"))
        object.__setattr__(self, "rotation_deg", _v3(self.rotation_deg, "rotation_deg"))
        object.__setattr__(self, "velocity", _v3(self.velocity, "velocity"))
        if min(self.half_size) <= 0:
            raise ValueError(f"box half_size must be positive, got {self.half_size}")
        object.__setattr__(self, "friction", _check_friction(self.friction))

    def rotation(self) -> np.ndarray:
        return euler_xyz(self.rotation_deg)

    def row(self) -> np.ndarray:
        r = np.zeros(ROW)
        r[0:3], r[3:6], r[6:15], r[15:18] = self.center, self.half_size, self.rotation().reshape(-1), self.velocity
        return r


Collider = Union[Plane, Sphere, Box, "MeshCollider"]


def pack(colliders: Sequence[Collider]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Kinds (compile-time), geometry rows ``[C, ROW]`` and default frictions ``[C]``."""
    if sum(c.kind == "mesh" for c in colliders) > 1:
        raise ValueError("at most one mesh collider is supported")
    kinds = tuple(c.kind for c in colliders)
    rows = np.stack([c.row() for c in colliders]) if colliders else np.zeros((0, ROW))
    frictions = np.array([c.friction for c in colliders], dtype=np.float64)
    return kinds, rows, frictions


class MeshCollider:
    """A static or animated triangle mesh (e.g. a body as an OBJ sequence, one file per frame).

    Its signed distance, outward normal and velocity are sampled on the simulation grid, per
    animation frame: distances come from a k-d tree over points spread densely on the surface
    (spacing below a third of a cell), the sign from the nearest point's face normal, the
    velocity from the same surface point in consecutive frames.  The grid update then treats it
    like the analytic colliders (nodes with phi < 0 get Coulomb friction against its velocity).
    """

    kind = "mesh"

    def __init__(self, frames: Sequence[np.ndarray], faces: np.ndarray, fps: float = 24.0, friction: float = 0.5):
        self.frames = [np.asarray(f, dtype=np.float64) for f in frames]
        self.faces = np.asarray(faces, dtype=np.int64)
        if not self.frames:
            raise ValueError("a mesh collider needs at least one frame")
        nv = self.frames[0].shape[0]
        for i, f in enumerate(self.frames):
            if f.shape != (nv, 3):
                raise ValueError(f"mesh collider frame {i} has {f.shape[0]} vertices, frame 0 has {nv}: the topology must not change")
            if not np.isfinite(f).all():
                raise ValueError(f"mesh collider frame {i} has non-finite vertices")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or self.faces.min() < 0 or self.faces.max() >= nv:
            raise ValueError("mesh collider faces must be [F, 3] indices of its vertices")
        if not fps > 0:
            raise ValueError(f"mesh collider fps must be positive, got {fps}")
        self.fps = float(fps)
        self.friction = _check_friction(friction)
        speeds = [np.abs(b - a).max() * self.fps for a, b in zip(self.frames[:-1], self.frames[1:])]
        # for CFL bounds: the fastest vertex
        self.velocity = (max(speeds, default=0.0), 0.0, 0.0)
        self._cache: dict = {}

    @staticmethod
    def from_files(files: Sequence[str], scale: float = 1.0, offset=(0.0, 0.0, 0.0), friction: float = 0.5, fps: float = 24.0) -> "MeshCollider":
        """One mesh file per animation frame (a single file: static)."""
        meshes = [load_mesh(f) for f in files]
        # trimesh's processing may merge vertices; a sequence must keep one topology
        frames = [np.asarray(m.vertices) * scale + np.asarray(offset) for m in meshes]
        return MeshCollider(frames, np.asarray(meshes[0].faces), fps=fps, friction=friction)

    def row(self) -> np.ndarray:
        return np.zeros(ROW)  # geometry lives in the sampled field

    def _surface_samples(self, spacing: float):
        """Barycentric sample points on every face, shared by all frames."""
        key = ("samples", spacing)
        if key not in self._cache:
            v = self.frames[0]
            tri = v[self.faces]
            edge = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(axis=1)
            faces, bary = [], []
            for n in np.unique(np.maximum(1, np.ceil(edge / spacing).astype(int))):
                idx = np.where(np.maximum(1, np.ceil(edge / spacing).astype(int)) == n)[0]
                ij = np.array([(i, j) for i in range(n + 1) for j in range(n + 1 - i)], dtype=np.float64) / n
                b = np.stack([1 - ij.sum(1), ij[:, 0], ij[:, 1]], 1)
                faces.append(np.repeat(idx, len(b)))
                bary.append(np.tile(b, (len(idx), 1)))
            self._cache[key] = (np.concatenate(faces), np.concatenate(bary))
        return self._cache[key]

    def field(self, grid, frame: int) -> np.ndarray:
        """``[X, Y, Z, 7]`` (phi, normal, velocity) on the grid nodes at animation frame ``frame``."""
        frame = int(min(max(frame, 0), len(self.frames) - 1))
        key = ("field", grid, frame)
        if key in self._cache:
            return self._cache[key]
        from scipy.spatial import cKDTree

        face_idx, bary = self._surface_samples(grid.dx / 3.0)

        def points(f):
            tri = self.frames[f][self.faces[face_idx]]  # [S, 3, 3]
            return (bary[:, :, None] * tri).sum(1)

        p = points(frame)
        nxt = min(frame + 1, len(self.frames) - 1)
        prv = max(frame - 1, 0)
        vel = (points(nxt) - points(prv)) * self.fps / max(nxt - prv, 1) if len(self.frames) > 1 else np.zeros_like(p)
        tri = self.frames[frame][self.faces]
        fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-30)
        normals = fn[face_idx]
        axes = [grid.origin[d] + np.arange(grid.res[d]) * grid.dx for d in range(3)]
        nodes = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        dist, nearest = cKDTree(p).query(nodes)
        side = np.einsum("ij,ij->i", nodes - p[nearest], normals[nearest])
        phi = np.where(side < 0, -dist, dist)
        out = np.concatenate([phi[:, None], normals[nearest], vel[nearest]], 1).reshape(*grid.res, 7)
        self._cache[key] = out
        return out

    def frame_at(self, time: float) -> int:
        return int(math.floor(time * self.fps + 1e-9))
