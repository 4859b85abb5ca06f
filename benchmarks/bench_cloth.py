"""Cloth: speed (substeps per second for a 64x64-vertex cloth in a 64^3 grid, forward and
forward+backward, with and without the bending and drag forces) and the fabric-standard figures
(cantilever, stretch under self-weight, terminal speed; ``fabric``) at two grid resolutions."""

from __future__ import annotations

import dataclasses
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
    # the same with bending and drag (torch forces on the mesh, see taichi_mpm.cloth_forces)
    params = dataclasses.replace(params, bending_stiffness=torch.tensor(2e-5), drag_coefficient=torch.tensor(1.2))
    p_grad = dataclasses.replace(p_grad, bending_stiffness=params.bending_stiffness, drag_coefficient=params.drag_coefficient)
    tfm = min(fwd() for _ in range(2))
    tbm = min(fwd_bwd() for _ in range(2))
    note = f"{n}x{n} vertices + {model.num_particles - n * n} elements, {res}^3 grid, {config.substeps_per_frame} substeps/frame"
    rows = [
        Measurement(SECTION, "cloth forward", substeps / tf, "substeps/s", note),
        Measurement(SECTION, "cloth forward+backward", substeps / tb, "substeps/s", note, "cloth forward", tf / tb),
        Measurement(SECTION, "cloth forward, bending + drag", substeps / tfm, "substeps/s", note, "cloth forward", tf / tfm),
        Measurement(SECTION, "cloth forward+backward, bending + drag", substeps / tbm, "substeps/s", note,
                    "cloth forward+backward", tb / tbm),
        Measurement(SECTION, "cloth first call (compile + run)", first, "s", "warm offline cache unless the first run"),
    ]
    return rows + fabric_standards(quick)


def fabric_standards(quick: bool = False) -> list[Measurement]:
    """Relative errors of the fabric-standard experiments against their analytic answers (percent)."""
    from . import fabric

    rows = []
    grids = (32,) if quick else (32, 48)
    for load in (4.0,) if quick else (4.0, 12.0):
        ref = fabric.elastica_tip_deflection(load)
        for res in grids:
            d = fabric.cantilever(load, res, seconds=0.3 if quick else 1.2)[-1]
            rows.append(Measurement(SECTION, f"cantilever w g L^3/B = {load:g}, grid {res}", 100 * (d - ref) / ref, "% error",
                                    f"tip deflection / L {d:.4f} vs elastica {ref:.4f}; goal within 5%"))
    for res in (32,) if quick else (32, 64):
        d, ref = fabric.hanging_stretch(res, seconds=0.3 if quick else 1.5)
        rows.append(Measurement(SECTION, f"stretch under self-weight, grid {res}", 100 * (d[-1] - ref) / ref, "% error",
                                f"{1e3 * d[-1]:.3f} mm vs w g L^2 / 2E = {1e3 * ref:.3f} mm; goal within 5%"))
        v, vt = fabric.falling_sheet(res, seconds=0.2 if quick else 0.6)
        rows.append(Measurement(SECTION, f"terminal speed, grid {res}", 100 * (v - vt) / vt, "% error",
                                f"{v:.4f} m/s vs sqrt(2 w g / (rho_air C_d)) = {vt:.4f} m/s; goal within 5%"))
    for solver, name in (("mpm", "grid 32"), ("mesh", "mesh solver")):  # drag along the velocity (drag_tangential 1)
        v, side, vt = fabric.inclined_sheet(40.0, 1.0, seconds=0.2 if quick else 0.6, solver=solver)
        rows.append(Measurement(SECTION, f"terminal speed, sheet inclined 40 deg, drag_tangential 1, {name}", 100 * (v - vt) / vt,
                                "% error", f"{v:.4f} m/s down, {side:.2g} m/s sideways, vs sqrt(2 w g / (rho_air C_d cos 40)) "
                                f"= {vt:.4f} m/s; goal within 5%"))
    # the grid-free cloth solver (taichi_mpm.mesh_cloth): no grid, so one run each, with the
    # membrane explicit ("mesh") and implicit ("mesh-implicit", taichi_mpm.membrane_newton)
    for solver, name in (("mesh", "mesh solver, explicit membrane"), ("mesh-implicit", "mesh solver, implicit membrane")):
        for load in (4.0,) if quick else (4.0, 12.0):
            ref = fabric.elastica_tip_deflection(load)
            d = fabric.cantilever(load, 32, seconds=0.3 if quick else 1.2, solver=solver)[-1]
            rows.append(Measurement(SECTION, f"cantilever w g L^3/B = {load:g}, {name}", 100 * (d - ref) / ref, "% error",
                                    f"tip deflection / L {d:.4f} vs elastica {ref:.4f}; goal within 5%"))
        d, ref = fabric.hanging_stretch(32, seconds=0.3 if quick else 1.5, solver=solver)
        rows.append(Measurement(SECTION, f"stretch under self-weight, {name}", 100 * (d[-1] - ref) / ref, "% error",
                                f"{1e3 * d[-1]:.3f} mm vs w g L^2 / 2E = {1e3 * ref:.3f} mm; goal within 5%"))
        v, vt = fabric.falling_sheet(32, seconds=0.2 if quick else 0.6, solver=solver)
        rows.append(Measurement(SECTION, f"terminal speed, {name}", 100 * (v - vt) / vt, "% error",
                                f"{v:.4f} m/s vs sqrt(2 w g / (rho_air C_d)) = {vt:.4f} m/s; goal within 5%"))
    if not quick:
        from .convergence import grid_convergence

        for solver, name in (("mesh", "mesh solver, the scene-file default"), ("mpm", "mpm solver")):
            c = grid_convergence(32, 64, cloth_solver=solver)
            rows.append(Measurement(SECTION, f"grid 32 vs 64: demo drop, 31x31 cloth, worst silhouette IoU ({name})",
                                    c["worst"], "", f"frame {c['worst_frame']}; mean {c['mean']:.3f} over one second; goal >= 0.90"))
    return rows
