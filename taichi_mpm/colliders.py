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


Collider = Union[Plane, Sphere, Box]


def euler_xyz(deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx for angles in degrees about x, then y, then z."""
    ax, ay, az = (math.radians(a) for a in deg)
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def pack(colliders: Sequence[Collider]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Kinds (compile-time), geometry rows ``[C, ROW]`` and default frictions ``[C]``."""
    kinds = tuple(c.kind for c in colliders)
    rows = np.stack([c.row() for c in colliders]) if colliders else np.zeros((0, ROW))
    frictions = np.array([c.friction for c in colliders], dtype=np.float64)
    return kinds, rows, frictions
