"""Cloth behaviour (float64): draping, hanging, sliding, swinging.  Figures are printed (-s)."""

import math

import numpy as np
import pytest
import torch

from dreamcloth.taichi_mpm import GridSpec, ModelBuilder, Plane, grid_mesh, simulate, stable_config

from .cloth_scenes import F64, cloth_bounds, cloth_params, drape_scene

G = 9.81


def _edge_stretch(x, faces):
    """Mean ratio of deformed to rest edge length over the mesh's edges."""
    f = torch.as_tensor(faces, dtype=torch.long)
    edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    return edges


@pytest.mark.slow
def test_drape_over_sphere_never_penetrates_half_a_cell():
    grid, model, state, faces = drape_scene(n=12, res=32, size=0.5)
    bounds = cloth_bounds(E=(100.0, 100.0), rho=(1.0, 1.0), shear=(200.0, 200.0), normal=(200.0, 200.0), min_length=0.045)
    cfg = stable_config(grid, 24.0, bounds)
    with torch.no_grad():
        traj = simulate(model, state, cloth_params(), cfg, 25, bounds=bounds)
    nv = 144
    depth = 0.14 - (traj.x[:, :nv] - torch.tensor([0.5, 0.42, 0.5], dtype=F64)).norm(dim=-1)  # > 0: inside
    worst = depth.max(dim=1).values / grid.dx
    print("deepest vertex inside the sphere per frame (grid cells):", [round(float(w), 3) for w in worst[::3]])
    touching = (depth > -0.5 * grid.dx).any(dim=1)
    assert touching[-1], "the cloth should rest on the sphere"
    assert worst.max() < 0.5
    # it drapes: the cloth's rim hangs well below the top of the sphere
    assert traj.x[-1, :nv, 1].min() < 0.42


def _hang(E: float, seconds: float = 1.0):
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), 24)
    n = 10
    verts, faces = grid_mesh(n, n, (0.4, 0.4), (0.5, 0.8, 0.5), rotation_deg=(90.0, 0.0, 0.0))  # vertical sheet
    top = np.argsort(-verts[:, 1])[:n]
    corners = [int(i) for i in top[np.argsort(verts[top, 0])][[0, -1]]]
    b = ModelBuilder(F64)
    b.add_cloth("sheet", verts, faces, pinned=corners)
    model, state = b.build([])
    bounds = cloth_bounds(E=(E, E), rho=(1.0, 1.0), shear=(300.0, 300.0), normal=(300.0, 300.0), min_length=0.044, speed=2.0)
    cfg = stable_config(grid, 24.0, bounds)
    frames = int(seconds * 24) + 1
    with torch.no_grad():
        traj = simulate(model, state, cloth_params(E=E, damping=0.05, shear=300.0, normal=300.0), cfg, frames, bounds=bounds)
    f = torch.as_tensor(faces, dtype=torch.long)
    edges = torch.unique(torch.sort(torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), dim=1).values, dim=0)
    rest = (state.x[edges[:, 0]] - state.x[edges[:, 1]]).norm(dim=1)
    now = (traj.x[-1, edges[:, 0]] - traj.x[-1, edges[:, 1]]).norm(dim=1)
    pinned_moved = (traj.x[:, corners] - state.x[corners]).abs().max()
    return float((now / rest).mean()), float(pinned_moved)


@pytest.mark.slow
def test_pinned_cloth_hangs_and_stiffness_sets_the_stretch():
    stiff, moved = _hang(500.0)
    soft, _ = _hang(10.0)
    print(f"mean edge stretch after hanging 1 s: young_modulus 500 -> {stiff:.4f}, 10 -> {soft:.4f}")
    assert moved == 0.0  # pinned corners stay exactly in place
    assert abs(stiff - 1.0) < 0.10
    assert soft - 1.0 > 2 * abs(stiff - 1.0) and soft > 1.05


def _slide(friction: float, slope_deg: float = 30.0, seconds: float = 0.6):
    """A cloth lying on flat ground under gravity tilted by ``slope_deg``: the tilted-plane problem."""
    grid = GridSpec.from_domain((0, 0, 0), (1.2, 0.3, 0.5), 40)
    th = math.radians(slope_deg)
    verts, faces = grid_mesh(6, 6, (0.2, 0.2), (0.25, 0.06, 0.25))
    b = ModelBuilder(F64)
    b.add_cloth("sheet", verts, faces)
    model, state = b.build([Plane((0, 0.05, 0), (0, 1, 0), friction=friction)])
    bounds = cloth_bounds(E=(100.0, 100.0), rho=(1.0, 1.0), shear=(200.0, 200.0), normal=(200.0, 200.0), min_length=0.04, speed=3.0)
    cfg = stable_config(grid, 24.0, bounds, gravity=(G * math.sin(th), -G * math.cos(th), 0.0))
    with torch.no_grad():
        traj = simulate(model, state, cloth_params(friction=friction, damping=1.0), cfg, int(seconds * 24) + 1, bounds=bounds)
    return float(traj.x[-1, :36, 0].mean() - state.x[:36, 0].mean())


@pytest.mark.slow
def test_more_friction_slides_less_on_a_tilted_plane():
    d = [_slide(f) for f in (0.05, 0.3, 0.8)]
    print(f"slide distance after 0.6 s on a 30 deg slope: friction 0.05 -> {d[0]:.4f} m, 0.3 -> {d[1]:.4f}, 0.8 -> {d[2]:.4f}")
    assert d[0] > d[1] > d[2] >= -1e-3
    assert d[0] > 0.1  # nearly frictionless: about g (sin - 0.05 cos) t^2 / 2 = 0.76 m
    # tan(30 deg) = 0.58 < 0.8: sticks, up to the creep of grid-based contact (a few % of the free slide)
    assert d[2] < 0.05 * d[0]


def _swing(damping: float, seconds: float = 1.5):
    """A horizontal sheet pinned at the two corners of one edge, released: it swings down and back."""
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), 20)
    n = 6
    verts, faces = grid_mesh(n, n, (0.35, 0.35), (0.5, 0.7, 0.5))
    edge = np.where(np.isclose(verts[:, 0], verts[:, 0].min()))[0]
    corners = [int(edge[np.argmin(verts[edge, 2])]), int(edge[np.argmax(verts[edge, 2])])]
    b = ModelBuilder(F64)
    b.add_cloth("sheet", verts, faces, pinned=corners)
    model, state = b.build([])
    bounds = cloth_bounds(E=(100.0, 100.0), rho=(1.0, 1.0), shear=(200.0, 200.0), normal=(200.0, 200.0), min_length=0.07, speed=4.0)
    cfg = stable_config(grid, 24.0, bounds)
    with torch.no_grad():
        traj = simulate(model, state, cloth_params(damping=damping), cfg, int(seconds * 24) + 1, bounds=bounds)
    com_x = traj.x[:, : n * n, 0].mean(1).numpy()
    late = com_x[len(com_x) // 2 :]
    return float(late.max() - late.min())


@pytest.mark.slow
def test_damping_reduces_swing_amplitude_monotonically():
    amp = [_swing(d) for d in (1.0, 0.5, 0.1)]
    print(f"swing amplitude over the second half (m): damping 1.0 -> {amp[0]:.4f}, 0.5 -> {amp[1]:.4f}, 0.1 -> {amp[2]:.4f}")
    assert amp[0] > amp[1] > amp[2]
    assert amp[0] > 0.02
