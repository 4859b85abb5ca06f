"""Bending and air drag on the cloth mesh (``cloth_forces``): energies against the continuum,
forces against autograd, invariances, and gradients through whole rollouts against finite
differences (float64, >= 100 substeps)."""

import math

import numpy as np
import pytest
import torch

from dreamcloth.taichi_mpm import Bounds, Params, State, grid_mesh, simulate, stable_config
from dreamcloth.taichi_mpm.cloth_forces import (
    AIR_DENSITY, ImplicitBending, bending_energy, bending_force, build_bending, drag_force, implicit_bending_force,
    mesh_forces, mesh_forces_adjoint,
)

from .cloth_scenes import F64, assert_gradients_match, drape_scene, scalar_central_differences


def _operator(verts, faces):
    return build_bending(verts, faces, F64)


def _cylinder(verts, radius, angle_deg):
    """The flat mesh rolled isometrically onto a cylinder whose axis lies in the x-z plane at ``angle_deg``."""
    a = math.radians(angle_deg)
    d, p = np.array([math.cos(a), 0, math.sin(a)]), np.array([-math.sin(a), 0, math.cos(a)])
    s, t = verts @ d, verts @ p
    out = np.outer(radius * np.sin(s / radius), d) + np.outer(t, p)
    out[:, 1] = radius * (1 - np.cos(s / radius))
    return torch.tensor(out)


def test_bending_energy_of_a_cylinder_matches_the_continuum_in_every_direction():
    """E = (B/2) k^2 A for a sheet rolled onto a cylinder of curvature k, whatever the direction of
    the roll relative to the mesh's rows and diagonals (per-edge energies differed by 1.5x here)."""
    verts, faces = grid_mesh(41, 41, (1.0, 1.0))
    op = _operator(verts, faces)
    B = torch.full((len(faces),), 2e-5, dtype=F64)
    radius = 0.4
    exact = 0.5 * 2e-5 / radius**2 * 1.0
    ratios = [float(bending_energy(_cylinder(verts, radius, ang), B, op)) / exact for ang in (0, 30, 45, 60, 90)]
    print("E / E_continuum at 0, 30, 45, 60, 90 degrees:", [round(r, 4) for r in ratios])
    assert all(0.95 <= r <= 1.0 for r in ratios), ratios
    assert max(ratios) - min(ratios) < 0.02
    # the shortfall is the free edges' strip (O(h)): it halves when the mesh is refined twice
    fine_v, fine_f = grid_mesh(81, 81, (1.0, 1.0))
    fine = float(bending_energy(_cylinder(fine_v, radius, 0), torch.full((len(fine_f),), 2e-5, dtype=F64), _operator(fine_v, fine_f))) / exact
    assert abs(1 - fine) < 0.6 * abs(1 - ratios[0])
    # a flat sheet, moved and rotated rigidly, stores nothing
    R = torch.tensor(np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0])
    flat = torch.tensor(verts) @ R.T + torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    assert float(bending_energy(flat, B, op)) < 1e-20


def test_bending_force_is_minus_the_energy_gradient():
    verts, faces = grid_mesh(7, 5, (0.5, 0.4))
    op = _operator(verts, faces)
    gen = torch.Generator().manual_seed(0)
    x = (torch.tensor(verts) + 0.02 * torch.randn(len(verts), 3, generator=gen, dtype=F64)).requires_grad_(True)
    B = torch.rand(len(faces), generator=gen, dtype=F64)
    (g,) = torch.autograd.grad(bending_energy(x, B, op), x)
    f = bending_force(x.detach(), B, op, torch.as_tensor(faces))
    assert torch.allclose(f, -g, rtol=1e-10, atol=1e-12 * float(g.abs().max()))


def _implicit_case(n=5, pinned=(0, 4)):
    verts, faces = grid_mesh(n, n, (0.2, 0.2))
    verts = np.asarray(verts, dtype=np.float64)
    op = _operator(verts, np.asarray(faces))
    gen = torch.Generator().manual_seed(3)
    x = torch.tensor(verts) + 0.01 * torch.randn(len(verts), 3, generator=gen, dtype=F64)
    v = 0.3 * torch.randn(len(verts), 3, generator=gen, dtype=F64)
    free = torch.ones(len(verts), dtype=F64)
    free[list(pinned)] = 0.0
    mass = 1e-4 * (1.0 + torch.rand(len(verts), generator=gen, dtype=F64))
    stiffness = 1e-3 * (1.0 + torch.rand(len(faces), generator=gen, dtype=F64))
    return op, torch.as_tensor(np.asarray(faces)), x, v, free, mass, stiffness


def test_implicit_bending_is_one_backward_euler_step():
    """On the free vertices M dv = dt f(x + dt (v + dv)) (flat rest mesh: f linear in x); nothing on pinned ones."""
    op, faces, x, v, free, mass, stiffness = _implicit_case()
    dt = 2e-3
    f = implicit_bending_force(x, v, stiffness, mass, free, dt, ImplicitBending(op, free), faces)
    dv = dt * f / mass[:, None]
    want = dt * bending_force(x + dt * (v + dv), stiffness, op, faces) / mass[:, None]
    free_rows = free.bool()
    assert torch.allclose(dv[free_rows], want[free_rows], rtol=1e-10, atol=1e-12 * float(want.abs().max()))
    assert float(f[~free_rows].abs().max()) == 0.0
    # a stiff step is bounded where the explicit force is not: k_eff dt^2 / m <= 1 on every mode
    explicit = bending_force(x, stiffness, op, faces)
    big = 5e-2
    stiff = implicit_bending_force(x, v, stiffness, mass, free, big, ImplicitBending(op, free), faces)
    assert float((big * big * explicit / mass[:, None]).abs().max()) > 100 * float((big * big * stiff / mass[:, None]).abs().max())
    # and a small step is the explicit force of the current positions
    small = implicit_bending_force(x, torch.zeros_like(v), stiffness, mass, free, 1e-7, ImplicitBending(op, free), faces)
    assert torch.allclose(small[free_rows], explicit[free_rows], rtol=1e-4, atol=1e-4 * float(explicit.abs().max()))


def test_implicit_bending_gradcheck():
    """float64 gradcheck of the backward-Euler bending force in positions, velocities, stiffness and masses (the banded solve's adjoint)."""
    op, faces, x, v, free, mass, stiffness = _implicit_case(n=4, pinned=(0,))
    system = ImplicitBending(op, free)
    inputs = [t.clone().requires_grad_(True) for t in (x, v, stiffness, mass)]
    assert torch.autograd.gradcheck(lambda a, b, k, m: implicit_bending_force(a, b, k, m, free, 5e-3, system, faces),
                                    inputs, eps=1e-7, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("use_bending, use_drag", [(True, True), (True, False), (False, True)])
def test_written_out_mesh_force_adjoint_equals_autograd(use_bending, use_drag):
    """``mesh_forces_adjoint`` (what the engine's adjoint substep runs) gives autograd's
    vector-Jacobian product of ``mesh_forces`` in every input, to round-off, pins included."""
    op, faces, x, v, free, mass, stiffness = _implicit_case(n=6, pinned=(0, 5))
    gen = torch.Generator().manual_seed(11)
    drag = 0.5 + torch.rand(len(faces), generator=gen, dtype=F64)
    g_f = torch.randn(len(x), 3, generator=gen, dtype=F64)
    g_fe = torch.randn(len(faces), 3, generator=gen, dtype=F64)
    tangential = torch.rand(len(faces), generator=gen, dtype=F64)
    dt = 3e-3
    system = ImplicitBending(op, free)
    inputs = [t.clone().requires_grad_(True) for t in (x, v, stiffness, drag, mass, tangential)]
    fv, fe = mesh_forces(*inputs[:4], op, faces, 0.5, use_bending, use_drag, implicit=(system, inputs[4], free, dt),
                         tangential=inputs[5])
    outs, cots = [fv], [g_f]
    if fe is not None:
        outs.append(fe)
        cots.append(g_fe)
    want = torch.autograd.grad(outs, inputs, cots, allow_unused=True)
    for params in ((True, True, True), (False, False, False), (True, False, False), (False, True, True)):
        # the parameter gradients not asked for are None; the state's are the same either way
        got = mesh_forces_adjoint(x, v, stiffness, drag, op, faces, 0.5, use_bending, use_drag, (system, mass, free, dt),
                                  g_f, g_fe if use_drag else None, params=params, tangential=tangential)
        asked = (True, True) + params + (params[1],)
        for name, w, g, a in zip(("x", "v", "bending", "drag", "mass", "tangential"), want, got, asked):
            if w is None or not a:
                assert g is None or float(g.abs().max()) == 0.0, (name, params)
                continue
            assert g is not None, name
            assert torch.allclose(g, w, rtol=1e-9, atol=1e-11 * float(w.abs().max())), (name, params)


def test_curved_rest_mesh_is_at_rest_in_any_orientation():
    """Rest curvature: a mesh bent at rest feels no force at rest, after a rigid motion either, and
    a force when bent further."""
    verts, faces = grid_mesh(9, 7, (0.6, 0.4))
    rest = _cylinder(verts, 0.3, 20).numpy()
    op = _operator(rest, faces)
    assert op.curved.numel() > 0
    B = torch.full((len(faces),), 1e-4, dtype=F64)
    F = torch.as_tensor(faces)
    scale = float(bending_force(_cylinder(verts, 0.2, 20), B, op, F).abs().max())
    assert scale > 0
    R = torch.tensor(np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))[0])
    if torch.det(R) < 0:
        R = -R
    for x in (torch.tensor(rest), torch.tensor(rest) @ R.T + torch.tensor([1.0, 2.0, -0.5], dtype=F64)):
        assert float(bending_force(x, B, op, F).abs().max()) < 1e-9 * scale


def test_drag_on_a_plate_is_the_flat_plate_formula():
    """A flat sheet moving along its normal: total force -rho C_d A |v| v / 2; moving in its plane: none."""
    verts, faces = grid_mesh(6, 6, (0.5, 0.3))
    x = torch.tensor(verts)
    F = torch.as_tensor(faces)
    cd = torch.full((len(faces),), 1.3, dtype=F64)
    v = torch.tensor([0.0, -2.0, 0.0], dtype=F64).expand(len(verts), 3)
    total = drag_force(x, v, cd, F).sum(0)  # per triangle [E, 3]
    expected = 0.5 * AIR_DENSITY * 1.3 * 0.15 * 4.0
    assert torch.allclose(total, torch.tensor([0.0, expected, 0.0], dtype=F64), rtol=1e-12, atol=1e-14)
    in_plane = torch.tensor([1.0, 0.0, 0.5], dtype=F64).expand(len(verts), 3)
    assert float(drag_force(x, in_plane, cd, F).abs().max()) == 0.0


@pytest.mark.parametrize("r", [0.0, 0.3, 1.0])
def test_drag_tangential_share(r):
    """With the tangential share r the flat sheet moving obliquely feels -rho C_d A |v_n| (v_n n + r v_t) / 2:
    r = 1 is a force along -v (Warp's and Newton's cloth drag), r = 0 the plate's normal force."""
    verts, faces = grid_mesh(6, 6, (0.5, 0.3))
    x = torch.tensor(verts)
    F = torch.as_tensor(faces)
    cd = torch.full((len(faces),), 1.3, dtype=F64)
    vel = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    total = drag_force(x, vel.expand(len(verts), 3), cd, F, torch.full((len(faces),), r, dtype=F64)).sum(0)
    area, vn = 0.15, -2.0
    n = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    expected = -0.5 * AIR_DENSITY * 1.3 * area * abs(vn) * (vn * n + r * (vel - vn * n))
    assert torch.allclose(total, expected, rtol=1e-12, atol=1e-14)
    # its gradients in positions, velocities, C_d and r (the kink of |v_n| at 0 is not crossed here)
    gen = torch.Generator().manual_seed(3)
    xs = x + 0.01 * torch.randn(x.shape, generator=gen, dtype=F64)
    vs = vel + 0.3 * torch.randn(x.shape, generator=gen, dtype=F64)
    inputs = [t.clone().requires_grad_(True) for t in (xs, vs, cd, torch.full((len(faces),), max(r, 0.2), dtype=F64))]
    assert torch.autograd.gradcheck(lambda a, b, c, d: drag_force(a, b, c, F, d), inputs, eps=1e-7, atol=1e-8, rtol=1e-6)


def _rollout_loss(frames=6):
    grid, model, state, _ = drape_scene(n=5, res=12)
    bounds = Bounds((80.0, 120.0), (0.3, 0.3), (0.8, 1.2), max_speed=3.0, shear_stiffness=(150.0, 250.0),
                    normal_stiffness=(150.0, 250.0), min_length=0.1)
    cfg = stable_config(grid, 30.0, bounds)
    n = model.num_particles
    wx = torch.randn(frames, n, 3, generator=torch.Generator().manual_seed(0), dtype=F64)

    def loss(bend, drag, tan, v0):
        params = Params.create(100.0, 0.3, 1.0, 0.6, 0.3, 200.0, 200.0, bending_stiffness=bend, drag_coefficient=drag,
                               drag_tangential=tan, dtype=F64)
        traj = simulate(model, State(state.x, state.v + v0, state.C, state.F), params, cfg, frames, bounds=bounds)
        return (traj.x * wx).sum()

    return loss, (frames - 1) * cfg.substeps_per_frame


@pytest.mark.slow
def test_bending_and_drag_gradients_match_finite_differences():
    """Over >= 100 substeps, falling fast enough (v0) that the drag matters, with half of it on the
    speed along the sheet (drag_tangential 0.5)."""
    loss, substeps = _rollout_loss()
    assert substeps >= 100
    base = {"bend": 5e-3, "drag": 1.0, "tan": 0.5}
    leaves = {k: torch.tensor(v, dtype=F64, requires_grad=True) for k, v in base.items()}
    v0 = torch.tensor([0.1, -1.5, 0.2], dtype=F64, requires_grad=True)
    grads = torch.autograd.grad(loss(leaves["bend"], leaves["drag"], leaves["tan"], v0), [*leaves.values(), v0])
    fd = scalar_central_differences(lambda bend, drag, tan: loss(bend, drag, tan, v0), base)
    rows = [(k, float(grads[i]), fd[k]) for i, k in enumerate(base)]
    with torch.no_grad():
        for j in range(3):
            e = torch.zeros(3, dtype=F64)
            e[j] = 1e-6
            args = (base["bend"], base["drag"], base["tan"])
            rows.append((f"v0[{j}]", float(grads[3][j]), float((loss(*args, v0 + e) - loss(*args, v0 - e)) / 2e-6)))
    assert_gradients_match(rows)


def test_bending_and_drag_gradcheck_tiny():
    """float64 gradcheck of positions and velocities (through the torch mesh forces' adjoint) and of the
    bending stiffness, the drag coefficient and drag's tangential share."""
    grid, model, state, _ = drape_scene(n=3, res=10)
    bounds = Bounds((80.0, 120.0), (0.3, 0.3), (0.8, 1.2), max_speed=3.0, shear_stiffness=(150.0, 250.0),
                    normal_stiffness=(150.0, 250.0), min_length=0.2)
    cfg = stable_config(grid, 30.0, bounds, segment_substeps=3)
    nv = 9

    def fn(xv, v, bend, drag, tan):
        x = state.x.clone()
        x[:nv] = xv
        params = Params.create(100.0, 0.3, 1.0, 0.6, 0.3, 200.0, 200.0, bending_stiffness=bend, drag_coefficient=drag,
                               drag_tangential=tan, dtype=F64)
        traj = simulate(model, State.at_rest(x, v, model), params, cfg, 2, bounds=bounds)
        return traj.x, traj.F

    gen = torch.Generator().manual_seed(4)
    inputs = [
        state.x[:nv].clone() + 0.02 * torch.randn(nv, 3, generator=gen, dtype=F64),
        torch.randn(model.num_particles, 3, generator=gen, dtype=F64) + torch.tensor([0.0, -1.0, 0.0], dtype=F64),
        torch.tensor(5e-3, dtype=F64), torch.tensor(1.0, dtype=F64), torch.tensor(0.4, dtype=F64),
    ]
    inputs = [t.requires_grad_(True) for t in inputs]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def _bent_sheet(device, dtype):
    verts, faces = grid_mesh(9, 7, (0.4, 0.3))
    op = build_bending(verts, faces, dtype, device)
    gen = torch.Generator().manual_seed(7)
    x = torch.tensor(verts) + 0.01 * torch.randn(len(verts), 3, generator=gen, dtype=F64)
    v = 0.1 * torch.randn(len(verts), 3, generator=gen, dtype=F64)
    B = 1e-4 * (1 + torch.rand(len(faces), generator=gen, dtype=F64))
    return op, torch.as_tensor(faces), x, v, B


def test_a_float32_operator_gives_float64_forces_for_float64_positions():
    """The stencil's sparse products follow the positions' dtype (gradient checks run float64 through
    an operator the engine built in its own dtype)."""
    op32, faces, x, _, B = _bent_sheet("cpu", torch.float32)
    op64, *_ = _bent_sheet("cpu", F64)
    f = bending_force(x, B, op32, faces)
    assert f.dtype == F64
    want = bending_force(x, B, op64, faces)
    assert torch.allclose(f, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_bending_forces_on_cuda_equal_the_cpu(dtype):
    """The operator's CSR products (cuSPARSE on CUDA) and the banded solve (LAPACK on the host) give
    the CPU's forces for CUDA tensors."""
    op_c, faces, x, v, B = _bent_sheet("cpu", dtype)
    op_g, *_ = _bent_sheet("cuda", dtype)
    x, v, B = x.to(dtype), v.to(dtype), B.to(dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    want = bending_force(x, B, op_c, faces)
    got = bending_force(x.cuda(), B.cuda(), op_g, faces.cuda()).cpu()
    assert torch.allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * float(want.abs().max()))
    mass, free = torch.full((x.shape[0],), 1e-3, dtype=dtype), torch.ones(x.shape[0], dtype=dtype)
    want = implicit_bending_force(x, v, B, mass, free, 1e-3, ImplicitBending(op_c, free), faces)
    got = implicit_bending_force(x.cuda(), v.cuda(), B.cuda(), mass.cuda(), free.cuda(), 1e-3,
                                 ImplicitBending(op_g, free.cuda()), faces.cuda()).cpu()
    assert torch.allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * float(want.abs().max()))
