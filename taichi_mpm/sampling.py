"""Particles from primitives and closed meshes (volume sampling through trimesh).

A body is filled with particles on a regular lattice of the given spacing (dx/2, i.e. 8 per
cell, is the usual MPM choice); every particle carries an equal share of the body's volume so
that total mass is exact whatever the lattice misses or adds at the surface.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from .geometry import euler_xyz, load_mesh


@dataclasses.dataclass(frozen=True)
class ParticleSet:
    """Sampled particles: ``positions [N, 3]`` and ``volumes [N]`` (numpy float64, SI units)."""

    positions: np.ndarray
    volumes: np.ndarray

    @property
    def count(self) -> int:
        return int(self.positions.shape[0])


def _place(points: np.ndarray, center: Sequence[float], rotation_deg: Sequence[float]) -> np.ndarray:
    return points @ euler_xyz(rotation_deg).T + np.asarray(center, dtype=np.float64)


def _check_spacing(spacing: float) -> float:
    spacing = float(spacing)
    if not np.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"particle spacing must be positive, got {spacing}")
    return spacing


def sample_box(size: Sequence[float], center: Sequence[float], spacing: float, rotation_deg=(0.0, 0.0, 0.0)) -> ParticleSet:
    """A box of ``size`` (full edge lengths) filled on a lattice of ``spacing``, cell-centred."""
    spacing = _check_spacing(spacing)
    size = np.asarray(size, dtype=np.float64)
    if size.shape != (3,) or np.any(size <= 0):
        raise ValueError(f"box size must be 3 positive lengths, got {size.tolist()}")
    counts = np.maximum(1, np.round(size / spacing).astype(int))
    axes = [(np.arange(c) + 0.5) * (s / c) - s / 2 for c, s in zip(counts, size)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    vol = np.full(len(pts), float(np.prod(size)) / len(pts))
    return ParticleSet(_place(pts, center, rotation_deg), vol)


def sample_sphere(radius: float, center: Sequence[float], spacing: float) -> ParticleSet:
    """A ball of ``radius`` filled on a lattice of ``spacing``."""
    spacing = _check_spacing(spacing)
    if not radius > 0:
        raise ValueError(f"sphere radius must be positive, got {radius}")
    n = int(np.ceil(2 * radius / spacing))
    ax = (np.arange(n) + 0.5) * (2 * radius / n) - radius
    pts = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    pts = pts[np.linalg.norm(pts, axis=1) <= radius]
    vol = np.full(len(pts), 4.0 / 3.0 * np.pi * radius**3 / len(pts))
    return ParticleSet(pts + np.asarray(center, dtype=np.float64), vol)


def sample_mesh(mesh, spacing: float, center=None, scale: float = 1.0, rotation_deg=(0.0, 0.0, 0.0), name: str | None = None) -> ParticleSet:
    """Fill a closed (watertight) triangle mesh with particles.

    ``mesh`` is a ``trimesh.Trimesh`` or a path.  The mesh is scaled, rotated and (when ``center``
    is given) moved so that its bounding-box centre lands there.  Voxelisation with interior fill
    (trimesh) at pitch ``spacing`` gives the lattice.
    """
    spacing = _check_spacing(spacing)
    if isinstance(mesh, (str, Path)):
        name = name or str(mesh)
        mesh = load_mesh(mesh)
    name = name or "mesh"
    if not mesh.is_watertight:
        raise ValueError(f"{name} is not watertight: volume sampling needs a closed surface (repair it or use a solid primitive)")
    mesh = mesh.copy()
    mesh.apply_scale(scale)
    if center is not None:
        mesh.apply_translation(-mesh.bounds.mean(axis=0))
        rot = np.eye(4)
        rot[:3, :3] = euler_xyz(rotation_deg)
        mesh.apply_transform(rot)
        mesh.apply_translation(np.asarray(center, dtype=np.float64))
    volume = float(abs(mesh.volume))
    pts = mesh.voxelized(pitch=spacing).fill().points
    if len(pts) == 0:
        raise ValueError(f"{name} is smaller than one particle spacing ({spacing})")
    return ParticleSet(np.asarray(pts, dtype=np.float64), np.full(len(pts), volume / len(pts)))
