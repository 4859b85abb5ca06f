"""Tiny scenes shared by the simulator tests (float64 unless stated)."""

from __future__ import annotations

import torch

from dreamcloth.taichi_mpm import Box, GridSpec, MaterialGroup, Model, Plane, SimConfig, Sphere, State

F64 = torch.float64


def lattice(n_side: int, spacing: float, corner, dtype=F64) -> torch.Tensor:
    """Particles on a cubic lattice: [n_side^3, 3]."""
    ax = (torch.arange(n_side, dtype=dtype) + 0.5) * spacing
    pts = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    return pts + torch.tensor(corner, dtype=dtype)


def random_state(n: int, grid: GridSpec, seed: int = 0, dtype=F64, spread: float = 0.3) -> State:
    """Particles spread over the middle of the domain with random v, C and F near identity."""
    gen = torch.Generator().manual_seed(seed)
    lo = torch.tensor(grid.inner_min, dtype=dtype)
    hi = torch.tensor(grid.inner_max, dtype=dtype)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    x = mid + (torch.rand(n, 3, generator=gen, dtype=dtype) * 2 - 1) * half * spread * 2
    v = torch.randn(n, 3, generator=gen, dtype=dtype) * 0.5
    C = torch.randn(n, 3, 3, generator=gen, dtype=dtype) * 2.0
    F = torch.eye(3, dtype=dtype) + 0.1 * torch.randn(n, 3, 3, generator=gen, dtype=dtype)
    return State(x, v, C, F)


def tiny_config(res: int = 10, substeps: int = 4, fps: float = 60.0, **kw) -> SimConfig:
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), res)
    return SimConfig(grid=grid, fps=fps, substeps_per_frame=substeps, **kw)


def mixed_model(n: int, grid: GridSpec, dtype=F64, colliders=None) -> Model:
    """Half neo-Hookean, half fixed-corotated; a plane, a sphere and a tilted box that the particles touch."""
    if colliders is None:
        c = [(a + b) / 2 for a, b in zip(grid.inner_min, grid.inner_max)]
        colliders = [
            Plane(point=(0, c[1] - 0.05, 0), normal=(0.1, 1, 0.05), friction=0.4),
            Sphere(center=(c[0] + 0.15, c[1], c[2]), radius=0.12, friction=0.8, velocity=(0.1, 0, 0)),
            Box(center=(c[0] - 0.15, c[1] + 0.1, c[2]), half_size=(0.08, 0.1, 0.12), rotation_deg=(10, 20, 30), friction=0.2),
        ]
    vol = torch.full((n,), (grid.dx * 0.5) ** 3, dtype=dtype)
    groups = [MaterialGroup("neo_hookean", 0, n // 2), MaterialGroup("fixed_corotated", n // 2, n)]
    return Model.create(vol, groups, colliders=colliders)
