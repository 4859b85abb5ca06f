"""The grid-free cloth solver (``SimConfig.cloth_solver = "mesh"``, ``taichi_mpm/mesh_cloth.py``):
its membrane force, its gradients against float64 central differences, grid independence, the
fabric-standard experiments and its errors."""

import dataclasses

import numpy as np

import pytest
import torch

from dreamcloth.benchmarks.fabric import falling_sheet, hanging_stretch, inclined_sheet
from dreamcloth.taichi_mpm import Bounds, Box, GridSpec, ModelBuilder, Params, grid_mesh, max_dt, simulate, stable_config
from dreamcloth.taichi_mpm.membrane import membrane_energy, membrane_stencil, stencil_membrane_forces

from .cloth_scenes import F64, assert_gradients_match, cloth_bounds, cloth_params, config_for, drape_scene, scalar_central_differences


def _triangle_data(n=5, seed=0):
    verts, faces = grid_mesh(n, n, (0.3, 0.3), (0.5, 0.5, 0.5), (20.0, 10.0, 0.0))
    b = ModelBuilder(F64)
    b.add_cloth("sheet", verts, faces)
    model, state = b.build([])
    c = model.cloth[0]
    g = torch.Generator().manual_seed(seed)
    x = state.x[: c.num_vertices] + 0.02 * torch.randn(c.num_vertices, 3, generator=g, dtype=F64)
    area = model.volume[c.element_start : c.element_start + c.num_elements]
    mu = 40.0 + 10 * torch.rand(c.num_elements, generator=g, dtype=F64)
    lam = 25.0 + 10 * torch.rand(c.num_elements, generator=g, dtype=F64)
    return x, c.faces_local, c.rest_inverse.reshape(-1, 2, 2), area, mu, lam


def _membrane_force(x, faces, dm_inv, area, mu, lam):
    return stencil_membrane_forces(x, membrane_stencil(faces, dm_inv, x.shape[0]), area, mu, lam)


def test_membrane_force_is_minus_the_energy_gradient():
    """The solver's membrane force (two sparse products) against autograd of the energy, defined
    independently by the singular values."""
    x, faces, dm_inv, area, mu, lam = _triangle_data()
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(membrane_energy(xr, faces, dm_inv, area, mu, lam), xr)
    f = _membrane_force(x, faces, dm_inv, area, mu, lam)
    torch.testing.assert_close(f, -g, rtol=1e-10, atol=1e-12)
    # at rest: no force
    assert _membrane_force(_rest_x(), faces, dm_inv, area, mu, lam).abs().max() < 1e-9


def _rest_x():
    verts, _ = grid_mesh(5, 5, (0.3, 0.3), (0.5, 0.5, 0.5), (20.0, 10.0, 0.0))
    return torch.tensor(verts, dtype=F64)


def test_membrane_force_gradcheck():
    x, faces, dm_inv, area, mu, lam = _triangle_data(n=3)
    inputs = (x.requires_grad_(True), mu.requires_grad_(True), lam.requires_grad_(True))
    assert torch.autograd.gradcheck(lambda x, mu, lam: _membrane_force(x, faces, dm_inv, area, mu, lam), inputs)


def _drape(res=12):
    """A 4x4 cloth just above a sphere, falling at 1 m/s (it reaches the sphere within 100 substeps)."""
    grid, model, state, _ = drape_scene(n=4, res=res, height=0.53)
    state.v[:] = torch.tensor([0.0, -1.0, 0.0], dtype=F64)
    return grid, model, state


def test_gradients_match_central_differences_over_100_substeps():
    """Every parameter's autograd gradient against float64 central differences, with contact,
    friction, bending and drag acting."""
    grid, model, state = _drape()
    bounds = cloth_bounds()
    cfg = config_for(grid, 30.0, bounds, cloth_solver="mesh")
    rows = _drape_gradients(model, state, cfg, bounds, dict(E=120.0, damping=0.6, friction=0.3, rho=1.0, bending=2e-4, drag=0.8,
                                                            drag_t=0.5), seed=4)
    with torch.no_grad():  # the cloth reached the sphere: contact is part of what is differentiated
        p = cloth_params(bending_stiffness=2e-4, drag_coefficient=0.8)
        x = simulate(model, state, p, cfg, 4, bounds=bounds).x[-1, :16]
        gap = float(((x - torch.tensor([0.5, 0.42, 0.5], dtype=F64)).norm(dim=1) - 0.14).min())
    assert abs(gap) < 1e-6, gap
    assert_gradients_match(rows)


def _drape_gradients(model, state, cfg, bounds, base: dict, seed: int, frames: int = 4) -> list:
    """(name, autograd, central difference) of a weighted sum of every frame's positions for
    young_modulus, damping, friction, density, bending, drag and drag's tangential share (``base``: their values)."""
    assert (frames - 1) * cfg.substeps_per_frame >= 100
    wx = torch.randn(frames, model.num_particles, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)

    def loss(E, damping, friction, rho, bending, drag, drag_t):
        p = cloth_params(E=E, damping=damping, friction=friction, rho=rho, bending_stiffness=bending, drag_coefficient=drag,
                         drag_tangential=drag_t)
        return (simulate(model, state, p, cfg, frames, bounds=bounds).x * wx).sum()

    leaves = {k: torch.tensor(v, dtype=F64, requires_grad=True) for k, v in base.items()}
    loss(**leaves).backward()
    fd = scalar_central_differences(loss, base, step=1e-6)
    return [(k, float(leaves[k].grad), fd[k]) for k in base]


def test_the_grid_does_not_change_the_rollout():
    """The grid only bounds the domain: the same drop on grid 12 and grid 32 is the same, time step included."""
    out = []
    for res in (12, 32):
        grid, model, state = _drape(res)
        bounds = cloth_bounds()
        cfg = config_for(grid, 30.0, bounds, cloth_solver="mesh")
        with torch.no_grad():
            out.append(simulate(model, state, cloth_params(bending_stiffness=2e-4), cfg, 4, bounds=bounds).x)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("experiment", ["stretch", "terminal"])
def test_fabric_standards_without_a_grid(experiment):
    """Stretch under self-weight and terminal speed within 5% of the analytic answers (measured
    2026-12-04: -0.005% and -0.02%; the cantilever, +4.7% and +2.8% at w g L^3 / B = 4 and 12, is
    in ``dreamcloth bench --section cloth``)."""
    if experiment == "stretch":
        d, ref = hanging_stretch(32, solver="mesh")
        assert abs(d[-1] - d[-3]) < 0.002 * ref, "not settled"
        got = d[-1]
    else:
        got, ref = falling_sheet(32, solver="mesh")
    assert got == pytest.approx(ref, rel=0.05)


@pytest.mark.parametrize("solver", ["mpm", "mesh"])
def test_inclined_sheet_with_drag_along_the_velocity(solver):
    """drag_tangential 1: a sheet inclined 40 degrees falls straight down at sqrt(2 w g / (rho_air C_d
    cos 40)) (measured 2026-12-05: -0.07% with both solvers); with 0 the normal force makes it glide
    sideways (2.1 m/s after 0.6 s)."""
    v, side, ref = inclined_sheet(40.0, 1.0, solver=solver)
    assert v == pytest.approx(ref, rel=0.05)
    assert side < 1e-6 * v
    v0, side0, _ = inclined_sheet(40.0, 0.0, solver=solver, seconds=0.3)
    assert side0 > 0.3 * v0


def test_unsupported_scenes_are_refused():
    grid, model, state = _drape()
    bounds = cloth_bounds()
    cfg = config_for(grid, 30.0, bounds, cloth_solver="mesh")
    with pytest.raises(ValueError, match="max_stretch"):
        simulate(model, state, cloth_params(max_stretch=1.05), cfg, 2, bounds=bounds)
    b = ModelBuilder(F64)
    verts, faces = grid_mesh(4, 4, (0.3, 0.3), (0.5, 0.6, 0.5))
    b.add_cloth("sheet", verts, faces)
    from dreamcloth.taichi_mpm import sample_box

    b.add_solid("block", sample_box((0.1, 0.1, 0.1), (0.5, 0.25, 0.5), 0.02), "neo_hookean")
    model2, state2 = b.build([Box((0.5, 0.05, 0.5), (0.5, 0.02, 0.5))])
    with pytest.raises(ValueError, match="only of cloth"):
        simulate(model2, state2, cloth_params(), cfg, 2, bounds=bounds)
    with pytest.raises(ValueError, match="cloth_solver"):
        dataclasses.replace(cfg, cloth_solver="grid")


def test_scene_key(tmp_path):
    from dreamcloth.benchmarks.demo_variants import demo_scene_text
    from dreamcloth.cli.pipeline.scene import SceneError, load_scene, to_toml
    from dreamcloth.cli.pipeline.simulation import build, resolution_notes

    text = demo_scene_text({"frames": 3})
    p = tmp_path / "s.toml"
    p.write_text(text.replace("[scene]\n", '[scene]\ncloth_solver = "mesh"\n', 1))
    scene = load_scene(p)
    assert scene.settings.cloth_solver == "mesh" and build(scene).config.cloth_solver == "mesh"
    assert scene.settings.cloth_thickness == 0.004 and build(scene).config.cloth_thickness == 0.004
    # no grid to resolve: the grid-resolution rule of thumb stays silent even on a coarse grid
    coarse = tmp_path / "coarse.toml"
    text_coarse = demo_scene_text({"frames": 3, "grid": 8, "bending_stiffness": 1e-6})
    coarse.write_text(text_coarse.replace("[scene]\n", '[scene]\ncloth_solver = "mpm"\n', 1))
    assert resolution_notes(build(load_scene(coarse)))
    coarse.write_text(text_coarse.replace("[scene]\n", '[scene]\ncloth_solver = "mesh"\n', 1))
    assert resolution_notes(build(load_scene(coarse))) == []
    assert 'cloth_solver = "mesh"' in to_toml(scene)
    p.write_text(text.replace("[scene]\n", '[scene]\ncloth_solver = "lagrange"\n', 1))
    with pytest.raises(SceneError, match="cloth_solver"):
        load_scene(p)


# ------------------------------------------------------------------------------------------------
# cloth-cloth contact (taichi_mpm/self_contact.py)


def _random_triangles(n=400, seed=1):
    g = torch.Generator().manual_seed(seed)
    a, b, c = (torch.rand(n, 3, generator=g, dtype=F64) for _ in range(3))
    p = torch.rand(n, 3, generator=g, dtype=F64) * 1.4 - 0.2
    return p, a, b, c


def test_closest_points_match_trimesh():
    import trimesh

    from dreamcloth.taichi_mpm.self_contact import closest_points

    p, a, b, c = _random_triangles()
    W = closest_points(p, a, b, c)
    q = W[:, 0:1] * a + W[:, 1:2] * b + W[:, 2:3] * c
    ref = trimesh.triangles.closest_point(torch.stack([a, b, c], 1).numpy(), p.numpy())
    np.testing.assert_allclose(q.numpy(), ref, atol=1e-9)
    assert bool((W >= -1e-12).all()) and torch.allclose(W.sum(1), torch.ones(len(p), dtype=F64))


def _two_layers(gap=0.003, n=4):
    """A cloth of two square layers (one mesh), the upper one smaller, turned and ``gap`` above the lower."""
    verts, faces = grid_mesh(n, n, (0.2, 0.2), (0.5, 0.5, 0.5))
    top, _ = grid_mesh(n, n, (0.14, 0.14), (0.51, 0.5 + gap, 0.49), (0.0, 20.0, 0.0))
    return np.concatenate([verts, top]), np.concatenate([faces, faces + len(verts)])


def test_self_contact_force_is_minus_the_energy_gradient_and_gradchecks():
    from dreamcloth.taichi_mpm.self_contact import Search, closest_points, forces

    verts, faces = _two_layers()
    g = torch.Generator().manual_seed(3)
    x = torch.tensor(verts, dtype=F64) + 5e-4 * torch.randn(len(verts), 3, generator=g, dtype=F64)
    f_t = torch.tensor(faces)
    mass = torch.full((len(verts),), 1e-3, dtype=F64)
    h, dt = 0.004, 1e-4
    vi, ti = Search(faces, len(verts), h).pairs(x, 0)
    assert len(vi) > 0

    def energy(x):  # each vertex with its nearest triangle
        tri = f_t[ti]
        W = closest_points(x[vi], x[tri[:, 0]], x[tri[:, 1]], x[tri[:, 2]])
        q = (W[:, :, None] * x[tri]).sum(1)
        d = (x[vi] - q).norm(dim=1)
        k = mass[vi] * (0.5 / dt) ** 2
        e = 0.5 * k * (h - d).clamp_min(0) ** 2
        nearest = torch.full((len(verts),), float("inf"), dtype=F64).scatter_reduce(0, vi, d.detach(), "amin")
        return e[d.detach() == nearest[vi]].sum()

    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(xr), xr)
    f = forces(x, torch.zeros_like(x), mass, f_t, vi, ti, h, dt)
    assert f.abs().max() > 0
    torch.testing.assert_close(f, -grad, rtol=1e-9, atol=1e-9)  # the spring (at rest the dashpot is 0)
    v = 0.3 * torch.randn(x.shape, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda x, v: forces(x, v, mass, f_t, vi, ti, h, dt),
                                    (x.clone().requires_grad_(True), v.requires_grad_(True)))


def test_search_finds_every_pair_within_the_thickness():
    from dreamcloth.taichi_mpm.self_contact import Search, closest_points

    verts, faces = _two_layers(gap=0.002)
    x = torch.tensor(verts, dtype=F64)
    h = 0.004
    s = Search(faces, len(verts), h)
    vi, ti = s.pairs(x, 0)
    found = set(zip(vi.tolist(), ti.tolist()))
    V, E = len(verts), len(faces)
    allv = torch.arange(V).repeat_interleave(E)
    allt = torch.arange(E).repeat(V)
    tri = torch.tensor(faces)[allt]
    W = closest_points(x[allv], x[tri[:, 0]], x[tri[:, 1]], x[tri[:, 2]])
    d = (x[allv] - (W[:, :, None] * x[tri]).sum(1)).norm(dim=1)
    near = (d < h).nonzero()[:, 0]
    needed = {(int(allv[i]), int(allt[i])) for i in near if not s._is_excluded(np.array([int(allv[i])]), np.array([int(allt[i])]))[0]}
    assert needed and needed <= found
    # each layer's own vertices are excluded from its own triangles around them
    assert all((v < V // 2) != (t < E // 2) for v, t in needed)


def test_search_excludes_the_same_pairs_with_codes_as_with_the_table(monkeypatch):
    from dreamcloth.taichi_mpm import self_contact as SC

    verts, faces = _two_layers(gap=0.002)
    x = torch.tensor(verts, dtype=F64)
    table = SC.Search(faces, len(verts), 0.004).pairs(x, 0)
    monkeypatch.setattr(SC, "DENSE_EXCLUSION_LIMIT", 0)
    codes = SC.Search(faces, len(verts), 0.004)
    assert codes._dense is None
    for a, b in zip(table, codes.pairs(x, 0)):
        assert torch.equal(a, b)


def test_a_falling_layer_stops_on_the_other_and_gradients_match_central_differences():
    """The upper layer falls at 0.5 m/s onto the lower one, held flat (pinned): it stops about the
    thickness above it, and the gradients of young_modulus, damping and density through the contact
    match float64 central differences over >= 100 substeps.  (Held flat, because only vertices are
    kept off triangles: on a lower layer free to sag, this coarse mesh's 67 mm edges pass between
    the vertices; see ``self_contact``.)"""
    verts, faces = _two_layers(gap=0.006)
    n = 16
    b = ModelBuilder(F64)
    b.add_cloth("layers", verts, faces, pinned=list(range(n)))
    model, state = b.build([])
    state.v[:n] = 0.0
    state.v[n : 2 * n] = torch.tensor([0.0, -0.5, 0.0], dtype=F64)
    grid = drape_scene(n=4, res=12)[0]
    bounds = cloth_bounds(speed=2.0)
    cfg = config_for(grid, 60.0, bounds, cloth_solver="mesh", cloth_thickness=0.004)
    frames = 4
    assert (frames - 1) * cfg.substeps_per_frame >= 100
    wx = torch.randn(frames, model.num_particles, 3, generator=torch.Generator().manual_seed(5), dtype=F64)

    def run(E, damping, rho, grad=True):
        p = cloth_params(E=E, damping=damping, rho=rho, bending_stiffness=1e-5)
        return simulate(model, state, p, cfg, frames, bounds=bounds)

    with torch.no_grad():
        x = run(100.0, 0.6, 1.0).x
    from dreamcloth.benchmarks.cross_sim import self_crossings
    from dreamcloth.taichi_mpm.self_contact import closest_points

    lower = torch.tensor(faces[: len(faces) // 2])
    for k in range(frames):
        xk = x[k, : 2 * n]
        assert self_crossings(xk.numpy(), faces) == 0, k
        p = xk[n:].repeat_interleave(len(lower), 0)
        tri = lower.repeat(n, 1)
        W = closest_points(p, xk[tri[:, 0]], xk[tri[:, 1]], xk[tri[:, 2]])
        gap = float((p - (W[:, :, None] * xk[tri]).sum(1)).norm(dim=1).min())
        print(f"frame {k}: closest upper vertex {1e3 * gap:.2f} mm from the lower layer")
    assert 0.002 < gap < 0.0045  # it started 6 mm above and rests about the thickness (4 mm) above

    def loss(E, damping, rho):
        return (run(E, damping, rho).x * wx).sum()

    base = dict(E=100.0, damping=0.6, rho=1.0)
    leaves = {k: torch.tensor(v, dtype=F64, requires_grad=True) for k, v in base.items()}
    loss(**leaves).backward()
    fd = scalar_central_differences(loss, base, step=1e-6)
    assert_gradients_match([(k, float(leaves[k].grad), fd[k]) for k in base])


# ------------------------------------------------------------------------------------------------
# the implicit membrane step (SimConfig.membrane = "implicit", taichi_mpm/membrane_newton.py)


def test_membrane_energy_hessian_matches_autograd():
    """The Newton step's written-out 6x6 Hessian of the energy density in F, against autograd's."""
    from dreamcloth.taichi_mpm.membrane_newton import energy_hessian

    g = torch.Generator().manual_seed(0)
    E = 40
    F = 0.3 * torch.randn(E, 3, 2, generator=g, dtype=F64) + torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=F64)
    mu, lam = 0.5 + torch.rand(E, generator=g, dtype=F64), 0.5 + torch.rand(E, generator=g, dtype=F64)

    def psi(F, mu, lam):
        C = F.T @ F
        a, b, d = C[0, 0], C[0, 1], C[1, 1]
        J = torch.sqrt(a * d - b * b)
        return mu * (a + d - 2 * torch.sqrt(a + d + 2 * J) + 2) + 0.5 * lam * (J - 1) ** 2

    ref = torch.stack([torch.autograd.functional.hessian(lambda f: psi(f, mu[e], lam[e]), F[e]) for e in range(E)])
    torch.testing.assert_close(energy_hessian(F, mu, lam), ref, rtol=1e-12, atol=1e-12)


def test_membrane_hessian_kernel_matches_autograd_of_the_energy():
    """The Taichi kernel's per-triangle Hessians, summed over the mesh, against autograd's Hessian of
    the energy defined by singular values; and against the torch path (clamped steps and CUDA)."""
    from dreamcloth.taichi_mpm import membrane_hessian as MH
    from dreamcloth.taichi_mpm import membrane_newton as MN

    x, faces, dm_inv, area, mu, lam = _triangle_data(n=4, seed=3)
    V = x.shape[0]
    solver = MN.NewtonMembrane(faces, dm_inv, area, torch.ones(V, dtype=torch.bool))
    assert MH.available(F64)
    He = MH.element_hessians(x, solver.faces32, solver.coef6, torch.stack([solver.area, mu, lam], 1))
    torch.testing.assert_close(He, solver.element_hessians(MN.energy_hessian(solver._F(x), mu, lam).reshape(-1, 6, 6)),
                               rtol=1e-12, atol=1e-9)
    dense = torch.zeros(V, 3, V, 3, dtype=F64)
    blocks = He.reshape(-1, 3, 3, 3, 3)  # [E, v, i, w, k]
    for e, tri in enumerate(faces.tolist()):
        for a, v in enumerate(tri):
            for b, w in enumerate(tri):
                dense[v, :, w, :] += blocks[e, a, :, b, :]
    ref = torch.autograd.functional.hessian(lambda y: membrane_energy(y, faces, dm_inv, area, mu, lam), x)
    torch.testing.assert_close(dense, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


def test_membrane_energy_force_kernel_matches_the_energy_and_its_autograd():
    """The Taichi kernel's energy and forces (the Newton step's every trial point) against the
    energy defined by singular values and minus its autograd gradient, and against the torch path;
    two calls give the same bits (each vertex gathers its triangles in a fixed order)."""
    from dreamcloth.taichi_mpm import membrane_hessian as MH
    from dreamcloth.taichi_mpm import membrane_newton as MN
    from dreamcloth.taichi_mpm.membrane import stencil_membrane_energy_forces

    x, faces, dm_inv, area, mu, lam = _triangle_data(n=5, seed=4)
    V = x.shape[0]
    solver = MN.NewtonMembrane(faces, dm_inv, area, torch.ones(V, dtype=torch.bool))
    assert MH.available(F64)
    mat = torch.stack([solver.area, mu, lam], 1)
    energy, force = MH.energy_forces(x, solver.faces32, solver.coef6, mat, solver.start, solver.incident)
    xr = x.clone().requires_grad_(True)
    ref = membrane_energy(xr, faces, dm_inv, area, mu, lam)
    (grad,) = torch.autograd.grad(ref, xr)
    torch.testing.assert_close(energy, ref.detach(), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(force, -grad, rtol=1e-10, atol=1e-10 * float(grad.abs().max()))
    e_torch, f_torch = stencil_membrane_energy_forces(x, solver.stencil, solver.area, mu, lam)
    torch.testing.assert_close(force, f_torch, rtol=1e-12, atol=1e-12 * float(grad.abs().max()))
    torch.testing.assert_close(energy, e_torch, rtol=1e-12, atol=0.0)
    again = MH.energy_forces(x, solver.faces32, solver.coef6, mat, solver.start, solver.incident)
    assert torch.equal(again[1], force) and torch.equal(again[0], energy)


def test_newton_membrane_step_leaves_a_buckling_saddle_for_the_buckled_minimum():
    """A flat sheet squeezed 10% in its plane (yhat) with 1e-9 m of out-of-plane noise: the flat
    state is a saddle of Phi (M / dt^2 + H indefinite there), and the step must end at the buckled
    minimum, where the exact Hessian is positive definite, within its iteration limit."""
    from dreamcloth.taichi_mpm import membrane_newton as MN

    verts, faces = grid_mesh(6, 6, (0.1, 0.1), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0))  # in the xz plane
    b = ModelBuilder(F64)
    b.add_cloth("sheet", verts, faces)
    model, state = b.build([])
    c = model.cloth[0]
    x = state.x[: c.num_vertices]
    V, E = x.shape[0], c.num_elements
    area = model.volume[c.element_start : c.element_start + E]
    mu, lam = torch.full((E,), 1000.0, dtype=F64), torch.full((E,), 500.0, dtype=F64)
    mass = torch.full((V,), 0.2 * 0.01 / V, dtype=F64)
    center = x.mean(0)
    squeezed = center + (x - center) * torch.tensor([0.9, 1.0, 0.9], dtype=F64)
    yhat = squeezed.clone()
    yhat[:, 1] += 1e-9 * torch.randn(V, generator=torch.Generator().manual_seed(0), dtype=F64)
    dt = 1 / 1200

    def new_solver():
        return MN.NewtonMembrane(c.faces_local, c.rest_inverse.reshape(-1, 2, 2), area, torch.ones(V, dtype=torch.bool))

    flat = new_solver().solve(squeezed, mass, mu, lam, dt, 0)  # without the noise it stays flat
    solver = new_solver()
    solver._refactor(flat, mass, mu, lam, dt)
    assert not solver.exact  # the flat equilibrium is a saddle
    y = solver.solve(yhat, mass, mu, lam, dt, 0)
    solver._refactor(y, mass, mu, lam, dt)
    assert solver.exact  # a minimum: the exact Hessian is positive definite
    assert float((y[:, 1] - center[1]).abs().max()) > 1e-3  # buckled out of the plane
    assert solver.phi_force(y, yhat, mass, mu, lam, dt)[0] < solver.phi_force(flat, yhat, mass, mu, lam, dt)[0]


def test_newton_membrane_step_gradcheck():
    """The converged step's gradient (implicit-function theorem, adjoint by conjugate gradients) in
    every input, against float64 finite differences of the whole solve, a pinned vertex included."""
    from dreamcloth.taichi_mpm import membrane_newton as MN

    x, faces, dm_inv, area, mu, lam = _triangle_data(n=4, seed=2)
    V = x.shape[0]
    free = torch.ones(V, dtype=F64)
    free[0] = 0
    g = torch.Generator().manual_seed(1)
    mass = 0.01 + 0.001 * torch.rand(V, generator=g, dtype=F64)

    def step(yhat, mass, mu, lam):
        return MN.newton_step(MN.NewtonMembrane(faces, dm_inv, area, free), yhat, mass, mu, lam, 0.01, 0)

    y = step(x, mass, mu, lam)
    assert (y - x).abs().max() > 1e-3  # the membrane moved the vertices
    assert torch.equal(y[0], x[0])  # the pinned one stays where the other forces took it
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, mass, mu, lam))
    assert torch.autograd.gradcheck(step, inputs, eps=1e-7, atol=1e-6, rtol=1e-4)


def test_implicit_membrane_gradients_match_central_differences():
    """Every parameter's gradient through 100 substeps with the implicit membrane, with contact,
    friction, bending and drag acting, at a membrane stiffness whose explicit step would need 10x
    more substeps."""
    grid, model, state = _drape()
    bounds = cloth_bounds(E=(100.0, 3000.0))
    cfg = config_for(grid, 30.0, bounds, cloth_solver="mesh", membrane="implicit")
    explicit = config_for(grid, 30.0, bounds, cloth_solver="mesh")
    assert explicit.substeps_per_frame > 10 * cfg.substeps_per_frame
    base = dict(E=2000.0, damping=0.6, friction=0.3, rho=1.0, bending=2e-4, drag=0.8, drag_t=0.5)
    assert_gradients_match(_drape_gradients(model, state, cfg, bounds, base, seed=6))


def test_kept_and_recomputed_tapes_give_the_same_gradients(monkeypatch):
    """A frame whose tape fits ``simulate.KEEP_TAPE_BYTES`` keeps it; beyond the budget a frame is
    checkpointed and re-simulated in the backward pass.  All kept, none kept and a budget that runs
    out part-way give the same gradients to round-off."""
    import importlib

    sim_mod = importlib.import_module("dreamcloth.taichi_mpm.simulate")  # the package exports the function
    grid, model, state = _drape()
    bounds = cloth_bounds(E=(100.0, 800.0))
    cfg = config_for(grid, 30.0, bounds, cloth_solver="mesh", membrane="implicit")
    frames = 3
    wx = torch.randn(frames, model.num_particles, 3, generator=torch.Generator().manual_seed(3), dtype=F64)

    def grads(budget):
        monkeypatch.setattr(sim_mod, "KEEP_TAPE_BYTES", budget)
        leaves = [torch.tensor(v, dtype=F64, requires_grad=True) for v in (800.0, 0.6, 2e-4, 0.8)]
        p = cloth_params(E=leaves[0], damping=leaves[1], friction=0.3, rho=1.0, bending_stiffness=leaves[2], drag_coefficient=leaves[3])
        (simulate(model, state, p, cfg, frames, bounds=bounds).x * wx).sum().backward()
        return torch.stack([t.grad for t in leaves])

    kept, recomputed = grads(2**40), grads(0)
    torch.testing.assert_close(kept, recomputed, rtol=1e-10, atol=0.0)
    meter = {}
    real = sim_mod.simulate_mesh

    def spy(*a, **k):
        meter["keep"] = k["keep_bytes"]
        return real(*a, **k)

    monkeypatch.setattr(sim_mod, "simulate_mesh", spy)
    one_frame = grads(1)  # the first frame is measured and kept, the rest checkpointed
    assert meter["keep"] == 1
    torch.testing.assert_close(one_frame, recomputed, rtol=1e-10, atol=0.0)


def _swing(E):
    """A 7x7 cloth, 0.3 m, pinned at two corners and released horizontal."""
    verts, faces = grid_mesh(7, 7, (0.3, 0.3), (0.5, 0.7, 0.5))
    b = ModelBuilder(F64)
    b.add_cloth("sheet", verts, faces, pinned=[0, 6])
    model, state = b.build([])
    p = Params.create(E, 0.3, 0.2, 0.3, 0.3, E, E, bending_stiffness=1e-5, drag_coefficient=0.5, dtype=F64)
    bounds = Bounds((E, E), (0.3, 0.3), (0.2, 0.2), max_speed=3.0, shear_stiffness=(E, E), normal_stiffness=(E, E), min_length=0.05)
    return model, state, p, bounds, GridSpec.from_domain((0, 0, 0), (1, 1, 1), 12)


@pytest.mark.parametrize("E", [500.0, 8000.0])
def test_implicit_membrane_error_does_not_depend_on_the_stiffness(E):
    """The swing over 1/3 s: the implicit membrane's distance from the explicit solver (mean over
    the vertices, worst frame) at its time-step bound and half of it is the same at 16x the
    stiffness (measured 2026-12-05 at 42 and 84 substeps per frame: 2.3 and 1.3 mm at 500 N/m, 2.0
    and 1.1 mm at 8,000, 2.2 and 1.2 mm at 32,000, where the explicit solver needs 146, 560 and
    1,113), and the implicit time-step bound has no stiffness in it."""
    model, state, p, bounds, grid = _swing(E)
    explicit = stable_config(grid, 24.0, bounds, cloth_solver="mesh")
    implicit = stable_config(grid, 24.0, bounds, cloth_solver="mesh", membrane="implicit")
    soft = dataclasses.replace(bounds, young_modulus=(10.0, 10.0))
    assert max_dt(grid.dx, soft, mesh=True, implicit_membrane=True) == max_dt(grid.dx, bounds, mesh=True, implicit_membrane=True)
    assert implicit.substeps_per_frame == 42
    frames = 9
    with torch.no_grad():
        ref = simulate(model, state, p, explicit, frames, bounds=bounds).x[:, :49]
        err = []
        for spf in (42, 84):
            x = simulate(model, state, p, dataclasses.replace(implicit, substeps_per_frame=spf), frames, bounds=bounds).x[:, :49]
            err.append(float((x - ref).norm(dim=2).mean(1).max()))
    print(E, explicit.substeps_per_frame, err)
    assert float(ref[-1, :, 1].mean() - ref[0, :, 1].mean()) < -0.1  # it swung down
    assert err[1] < 0.7 * err[0] and err[0] < 0.003, err


@pytest.mark.parametrize("experiment", ["stretch", "terminal"])
def test_fabric_standards_with_the_implicit_membrane(experiment):
    """Equilibria and terminal speed do not depend on the membrane's integrator (measured
    2026-12-05: stretch -0.005%, terminal -0.02%, the cantilever at w g L^3 / B = 4 within 0.1% of
    the explicit membrane's deflection)."""
    if experiment == "stretch":
        d, ref = hanging_stretch(32, membrane=1000.0, solver="mesh-implicit")
        got = d[-1]
    else:
        got, ref = falling_sheet(32, solver="mesh-implicit")
    assert got == pytest.approx(ref, rel=0.01)


def test_membrane_errors_and_scene_key(tmp_path):
    from dreamcloth.benchmarks.demo_variants import demo_scene_text, with_cloth_solver
    from dreamcloth.cli.pipeline.scene import SceneError, load_scene, to_toml
    from dreamcloth.cli.pipeline.simulation import build

    grid, model, state = _drape()
    cfg = config_for(grid, 30.0, cloth_bounds(), cloth_solver="mesh")
    assert cfg.membrane == "explicit"
    with pytest.raises(ValueError, match="membrane"):
        dataclasses.replace(cfg, membrane="newton")
    p = tmp_path / "s.toml"
    text = with_cloth_solver(demo_scene_text({"frames": 3}), "mesh")
    p.write_text(text)
    assert build(load_scene(p)).config.membrane == "implicit"  # the mesh solver's default in scene files
    p.write_text(text.replace("[scene]\n", '[scene]\nmembrane = "explicit"\n', 1))
    scene = load_scene(p)
    assert build(scene).config.membrane == "explicit" and 'membrane = "explicit"' in to_toml(scene)
    p.write_text(text.replace("[scene]\n", '[scene]\nmembrane = "newton"\n', 1))
    with pytest.raises(SceneError, match="membrane"):
        load_scene(p)


def test_a_float32_model_rolls_out_in_float64(monkeypatch):
    """On the CPU the mesh rollout runs in float64 whatever the model's dtype (``mesh_cloth``,
    "Precision"): a float32 drape onto a sphere with the vertex contact by kernels and by torch (the
    same map, different round-off) ends within one float32 rounding of each other.  In float32
    arithmetic the two part by far more (checked when this test was written: 5.8e-6 m)."""
    from dreamcloth.taichi_mpm import mesh_cloth as MC

    grid, model, state, _ = drape_scene(n=4, res=12, height=0.53, dtype=torch.float32)
    state.v[:] = torch.tensor([0.0, -1.0, 0.0])
    bounds = cloth_bounds()
    cfg = config_for(grid, 30.0, bounds, cloth_solver="mesh", membrane="implicit")
    p = cloth_params(E=120.0, damping=0.6, bending_stiffness=2e-4, drag_coefficient=0.8, dtype=torch.float32)
    kernels = simulate(model, state, p, cfg, 6, bounds=bounds).x
    assert kernels.dtype == torch.float32

    monkeypatch.setattr(MC, "_contact_function", lambda kinds, rows, box, dtype, dev: MC._torch_contact(kinds, rows, box))
    reference = simulate(model, state, p, cfg, 6, bounds=bounds).x
    assert float((kernels[-1] - state.x).abs().max()) > 0.05  # it fell onto the sphere
    assert float((kernels - reference).abs().max()) <= 1e-7
