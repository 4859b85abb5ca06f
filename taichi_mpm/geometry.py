"""Geometry helpers shared by the colliders, the particle sampling and the cloth: rotations and mesh files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np


def euler_xyz(deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx for angles in degrees about x, then y, then z."""
    ax, ay, az = (math.radians(a) for a in deg)
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def load_mesh(path: str | Path):
    """Load a triangle mesh with trimesh (OBJ, PLY, STL, ...); clear errors for bad files."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh {path} does not exist")

    def read(process: bool):
        try:
            return trimesh.load(path, force="mesh", process=process)
        except Exception as exc:  # trimesh raises many types for unreadable files
            raise ValueError(f"cannot read mesh {path}: {exc}") from None

    # unprocessed first: processing drops NaN vertices silently (a closed mesh then reads as open)
    raw = read(False)
    if isinstance(raw, trimesh.Trimesh):
        bad = ~np.isfinite(np.asarray(raw.vertices)).all(axis=1)
        if bad.any():
            raise ValueError(f"{path}: {int(bad.sum())} vertices have NaN or infinite coordinates (the first is vertex {int(bad.argmax())})")
    mesh = read(True)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"{path} contains no triangles")
    return mesh
