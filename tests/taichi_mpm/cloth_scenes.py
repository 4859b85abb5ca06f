"""Small cloth scenes shared by the cloth tests."""

from __future__ import annotations

import torch

from dreamcloth.taichi_mpm import Bounds, GridSpec, ModelBuilder, Params, Plane, Sphere, grid_mesh, stable_config

F64 = torch.float64


def drape_scene(n: int = 6, res: int = 16, dtype=F64, friction=0.3, size=0.5, height=0.62):
    """An n x n cloth falling onto a sphere above the ground."""
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), res)
    b = ModelBuilder(dtype)
    verts, faces = grid_mesh(n, n, (size, size), (0.5, height, 0.5))
    b.add_cloth("sheet", verts, faces)
    sphere = Sphere((0.5, 0.42, 0.5), 0.14, friction=friction)
    model, state = b.build([sphere, Plane((0, 0.1, 0), (0, 1, 0), friction=friction)])
    return grid, model, state, faces


def cloth_params(E=100.0, nu=0.3, rho=1.0, damping=0.6, friction=0.3, shear=200.0, normal=200.0, dtype=F64, **overrides):
    values = dict(young_modulus=E, poisson_ratio=nu, density=rho, damping=damping, friction=friction,
                  shear_stiffness=shear, normal_stiffness=normal)
    values.update(overrides)
    return Params.create(**values, dtype=dtype)


def cloth_bounds(E=(10.0, 500.0), rho=(0.1, 5.0), shear=(100.0, 1000.0), normal=(100.0, 1000.0), speed=3.0, min_length=0.05):
    return Bounds(E, (0.1, 0.49), rho, max_speed=speed, shear_stiffness=shear, normal_stiffness=normal, min_length=min_length)


def config_for(grid, fps, bounds, **kw):
    return stable_config(grid, fps, bounds, **kw)
