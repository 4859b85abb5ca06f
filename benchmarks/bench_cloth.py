"""Cloth speed: substeps per second for a 64x64-vertex cloth in a 64^3 grid, forward and forward+backward."""

from __future__ import annotations

import time

import torch

from .common import Measurement

SECTION = "cloth"


def cloth_scene(n: int = 64, res: int = 64, dtype=torch.float32):
    """An n x n cloth (0.6 m square) falling onto a sphere, in a res^3 grid over [0, 1]^3."""
    from dreamcloth.taichi_mpm import Bounds, GridSpec, ModelBuilder, Params, Plane, Sphere, grid_mesh, min_rest_edge, stable_config

    grid = GridSpec(origin=(0.0, 0.0, 0.0), dx=1.0 / res, res=(res, res, res))
    b = ModelBuilder(dtype)
    verts, faces = grid_mesh(n, n, (0.6, 0.6), (0.5, 0.7, 0.5))
    b.add_cloth("sheet", verts, faces)
    model, state = b.build([Sphere((0.5, 0.45, 0.5), 0.15, 0.3), Plane((0, 0.1, 0), (0, 1, 0), 0.3)])
    bounds = Bounds((100.0, 100.0), (0.3, 0.3), (1.0, 1.0), max_speed=3.0, shear_stiffness=(200.0, 200.0),
                    normal_stiffness=(200.0, 200.0), min_length=min_rest_edge(model))
    config = stable_config(grid, 24.0, bounds)
    params = Params.create(100.0, 0.3, 1.0, 0.6, 0.3, shear_stiffness=200.0, normal_stiffness=200.0, dtype=dtype)
    return model, state, params, config, bounds


def run(quick: bool = False) -> list[Measurement]:
    from dreamcloth.taichi_mpm import Params, runtime, simulate

    runtime.ensure("cpu", torch.float32)
    n, res = (16, 32) if quick else (64, 64)
    model, state, params, config, bounds = cloth_scene(n, res)
    substeps = config.substeps_per_frame * (2 if quick else 4)
    frames = substeps // config.substeps_per_frame + 1
    E = params.young_modulus.clone().requires_grad_(True)
    p_grad = Params(E, params.poisson_ratio, params.density, params.damping, params.friction,
                    params.shear_stiffness, params.normal_stiffness)
    torch.set_num_threads(1)

    def fwd():
        t = time.perf_counter()
        with torch.no_grad():
            simulate(model, state, params, config, frames, bounds=bounds)
        return time.perf_counter() - t

    def fwd_bwd():
        t = time.perf_counter()
        traj = simulate(model, state, p_grad, config, frames, bounds=bounds)
        traj.x[-1].sum().backward()
        return time.perf_counter() - t

    t0 = time.perf_counter()
    fwd_bwd()  # compile
    first = time.perf_counter() - t0
    tf = min(fwd() for _ in range(2))
    tb = min(fwd_bwd() for _ in range(2))
    note = f"{n}x{n} vertices + {model.num_particles - n * n} elements, {res}^3 grid, {config.substeps_per_frame} substeps/frame"
    return [
        Measurement(SECTION, "cloth forward", substeps / tf, "substeps/s", note),
        Measurement(SECTION, "cloth forward+backward", substeps / tb, "substeps/s", note, "cloth forward", tf / tb),
        Measurement(SECTION, "cloth first call (compile + run)", first, "s", "warm offline cache unless the first run"),
    ]
