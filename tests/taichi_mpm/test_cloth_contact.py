"""Vertex-level cloth contact with analytic colliders (taichi_mpm.cloth_contact): the projection and
its gradient, when it is on, and a cloth resting on the ground at the ground, on two grids."""

import pytest
import torch

from dreamcloth.taichi_mpm import GridSpec, ModelBuilder, Plane, Sphere, grid_mesh, simulate, stable_config
from dreamcloth.taichi_mpm import cloth_contact as CC
from dreamcloth.taichi_mpm.colliders import Box, pack
from dreamcloth.taichi_mpm.solver import Engine, Launcher

from .cloth_scenes import F64, cloth_bounds, cloth_params

BOX = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _rows(colliders):
    kinds, rows, _ = pack(colliders)
    return kinds, torch.tensor(rows, dtype=F64)


def test_a_vertex_inside_lands_on_the_surface_and_loses_its_inward_speed():
    kinds, rows = _rows([Sphere((0.5, 0.4, 0.5), 0.1), Plane((0, 0.1, 0), (0, 1, 0)),
                         Box((0.2, 0.5, 0.2), (0.05, 0.05, 0.05), (0.0, 30.0, 0.0))])
    x = torch.tensor([[0.5, 0.49, 0.5],     # inside the sphere, below its top
                      [0.7, 0.09, 0.7],     # below the ground
                      [0.2, 0.54, 0.21],    # inside the box, near its top face
                      [0.8, 0.8, 0.8],      # free
                      [0.5, 0.495, 0.51]],  # inside the sphere but pinned
                     dtype=F64)
    v = torch.tensor([[0.1, -1.0, 0.0], [0.0, -1.0, 0.0], [0.0, -0.5, 0.0], [0.3, -2.0, 0.1], [0.0, -1.0, 0.0]], dtype=F64)
    free = torch.tensor([True, True, True, True, False])
    friction = torch.tensor([0.0, 1.0, 0.2], dtype=F64)
    y, w = CC.contact(x, v, kinds, rows, friction, 0.0, 1e-3, free, (torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)))
    assert float((y[0] - torch.tensor([0.5, 0.4, 0.5], dtype=F64)).norm()) == pytest.approx(0.1)
    assert float(y[1, 1]) == pytest.approx(0.1) and torch.equal(y[1, [0, 2]], x[1, [0, 2]])
    assert float(y[2, 1]) == pytest.approx(0.55)  # the box's top face (rotated about y only)
    assert torch.equal(y[3:], x[3:]) and torch.equal(w[3:], v[3:])
    # frictionless sphere: only the inward normal part goes; the ground (mu 1) holds the vertex still
    n0 = (y[0] - torch.tensor([0.5, 0.4, 0.5], dtype=F64)) / 0.1
    assert float(w[0] @ n0) == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(w[1], torch.zeros(3, dtype=F64))
    assert float(w[2, 1]) == pytest.approx(0.0, abs=1e-12)


def test_the_contact_is_continuous_across_the_surface():
    """A vertex just below the surface keeps almost all its velocity (the removed part is what took it
    below within the substep), so the map, hence the fitted loss, has no jump at phi = 0; a vertex
    found deeper than its inward speed explains loses all of it (the grid's rule)."""
    kinds, rows = _rows([Plane((0, 0.1, 0), (0, 1, 0), friction=0.5)])
    dt = 1e-3
    box = (torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64))
    v = torch.tensor([[0.4, -1.0, 0.0]], dtype=F64)
    free = torch.tensor([True])
    mu = torch.tensor([0.5], dtype=F64)

    def after(depth):
        return CC.contact(torch.tensor([[0.5, 0.1 - depth, 0.5]], dtype=F64), v, kinds, rows, mu, 0.0, dt, free, box)

    above, below = after(-1e-12), after(1e-12)
    assert torch.equal(above[1], v) and (below[1] - v).abs().max() < 1e-8
    # half the substep's fall below the surface: half the inward speed goes, friction takes mu of that
    y, w = after(0.5e-3)
    assert float(y[0, 1]) == pytest.approx(0.1) and float(w[0, 1]) == pytest.approx(-0.5)
    assert float(w[0, 0]) == pytest.approx(0.4 - 0.5 * 0.5)
    # deeper than the inward speed explains: all of it goes, and the tangential speed down to zero
    y, w = after(5e-3)
    assert float(w[0, 1]) == pytest.approx(0.0, abs=1e-12) and float(w[0, 0]) == pytest.approx(0.0, abs=1e-12)


def test_the_projection_gradcheck():
    kinds, rows = _rows([Sphere((0.5, 0.4, 0.5), 0.1, friction=0.4), Plane((0, 0.1, 0), (0.1, 1, 0), friction=0.6),
                         Box((0.2, 0.5, 0.2), (0.05, 0.06, 0.07), (10.0, 30.0, 5.0), friction=0.3)])
    gen = torch.Generator().manual_seed(3)
    x = torch.cat([torch.tensor([0.5, 0.4, 0.5], dtype=F64) + 0.09 * torch.nn.functional.normalize(torch.randn(6, 3, generator=gen, dtype=F64), dim=1),
                   torch.tensor([[0.6, 0.098, 0.7], [0.8, 0.105, 0.3]], dtype=F64),
                   torch.tensor([0.2, 0.5, 0.2], dtype=F64) + 0.03 * torch.randn(3, 3, generator=gen, dtype=F64)])
    v = torch.randn(x.shape, generator=gen, dtype=F64)
    v[:, 1] -= 1.0  # mostly inward: sliding and sticking both occur
    free = torch.ones(len(x), dtype=torch.bool)
    free[2] = False
    box = (torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64))

    def f(x, v, mu):
        return CC.contact(x, v, kinds, rows, mu, 0.0, 1e-3, free, box)

    mu = torch.tensor([0.4, 0.6, 0.3], dtype=F64)
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), v.requires_grad_(), mu.requires_grad_()), eps=1e-7, atol=1e-6)


def test_vertex_contact_is_on_for_cloth_only_scenes_with_an_analytic_collider():
    assert CC.enabled(("sphere", "plane"), 0, 1)
    assert not CC.enabled(("sphere",), 1, 1)  # a solid shares the grid: grid contact for all
    assert not CC.enabled(("mesh",), 0, 1)
    assert not CC.enabled((), 0, 1)
    grid = GridSpec.from_domain(*BOX, 16)
    b = ModelBuilder(F64)
    verts, faces = grid_mesh(3, 3, (0.3, 0.3), (0.5, 0.5, 0.5))
    b.add_cloth("sheet", verts, faces)
    model, _ = b.build([Sphere((0.5, 0.3, 0.5), 0.1), Plane((0, 0.1, 0), (0, 1, 0))])
    cfg = stable_config(grid, 24.0, cloth_bounds())
    engine = Engine(model, cfg)
    assert engine.contact
    assert float(engine.coll[0, 3]) == pytest.approx(0.1 - CC.GRID_SHRINK_CELLS * grid.dx)  # the grid's sphere
    assert float(engine.coll[1, 1]) == pytest.approx(0.1 - CC.GRID_SHRINK_CELLS * grid.dx)  # the grid's plane
    assert float(engine.coll_true[0, 3]) == 0.1


@pytest.mark.parametrize("res", [16, 32])
def test_a_cloth_dropped_on_the_ground_rests_on_it_on_any_grid(res):
    """Grid contact alone held a cloth about a cell above the ground (36 mm on a 42 mm cell in the
    cross-simulator case tilted_ground); with vertex contact it lies on the ground, on either grid."""
    grid = GridSpec.from_domain(*BOX, res)
    b = ModelBuilder(F64)
    verts, faces = grid_mesh(8, 8, (0.4, 0.4), (0.5, 0.2, 0.5))
    b.add_cloth("sheet", verts, faces)
    model, state = b.build([Plane((0, 0.1, 0), (0, 1, 0), friction=0.5)])
    bounds = cloth_bounds(E=(100.0, 100.0), rho=(0.2, 0.2), shear=(200.0, 200.0), normal=(200.0, 200.0), min_length=0.05, speed=2.0)
    cfg = stable_config(grid, 24.0, bounds)
    with torch.no_grad():
        traj = simulate(model, state, cloth_params(rho=0.2), cfg, 10, bounds=bounds)
    height = traj.x[-1, :64, 1] - 0.1
    print(f"grid {res}: vertex heights above the ground {float(height.min()) * 1e3:.3f}-{float(height.max()) * 1e3:.3f} mm")
    assert float(height.min()) >= -1e-9
    assert float(height.max()) < 0.02 * grid.dx  # on the ground, not a cell above it


def test_gradients_stay_finite_in_float32_where_the_tangential_speed_is_zero():
    """A vertex falling straight onto the ground or the top of a sphere has no tangential speed; the
    sliding branch that torch.where discards must not send 0 * inf = NaN back (it did, in the fits)."""
    kinds, rows = _rows([Sphere((0.5, 0.4, 0.5), 0.1), Plane((0, 0.1, 0), (0, 1, 0)), Box((0.2, 0.5, 0.2), (0.05, 0.05, 0.05))])
    rows = rows.float()
    x = torch.tensor([[0.5, 0.499, 0.5], [0.7, 0.099, 0.7], [0.2, 0.549, 0.2], [0.8, 0.8, 0.8], [0.5, 0.4, 0.5]])
    v = torch.tensor([[0.0, -1.0, 0.0], [0.0, -1.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    x.requires_grad_(True)
    v.requires_grad_(True)
    mu = torch.tensor([0.3, 0.5, 0.2], requires_grad=True)
    y, w = CC.contact(x, v, kinds, rows, mu, 0.0, 1e-3, torch.ones(5, dtype=torch.bool), (torch.zeros(3), torch.ones(3)))
    (y.sum() + w.sum()).backward()
    for t in (x.grad, v.grad, mu.grad):
        assert torch.isfinite(t).all(), t


def _kernel_contact(x, v, kinds, rows, mu, time, dt, free, box, g=None):
    """The engine's Taichi kernels on packed rows: (x', v') and, given ``g = (gx', gv')``, the VJP
    (gx, gv, g_mu)."""
    from dreamcloth.taichi_mpm import runtime

    runtime.ensure(x.device, x.dtype)
    lo, hi = box
    # by argument name, as the engine launches them
    fixed = dict(coll=rows.contiguous(), time=time, dt=dt, serial=True,
                 **dict(zip(("lo_x", "lo_y", "lo_z", "hi_x", "hi_y", "hi_z"), [float(a) for a in (*lo, *hi)])))
    fwd, adj = (Launcher(k, **fixed) for k in CC.vertex_kernels(tuple(kinds)))
    n = x.shape[0]
    start = 2  # rows of another object before the cloth's: the kernels must respect the offset
    S = torch.zeros((n + start + 1, 24), dtype=x.dtype)
    S[start : start + n, 0:3] = x
    S[start : start + n, 3:6] = v
    freef = free.to(x.dtype).contiguous()
    pre = torch.zeros((n, 6), dtype=x.dtype)
    touched = torch.zeros(1, dtype=torch.int32)
    fwd(S=S, start=start, free=freef, friction=mu.contiguous(), pre=pre, touched=touched)
    assert torch.equal(pre, torch.cat([x, v], 1))
    out = (S[start : start + n, 0:3].clone(), S[start : start + n, 3:6].clone(), int(touched[0]))
    if g is None:
        return out
    G = torch.zeros_like(S)
    G[start : start + n, 0:3] = g[0]
    G[start : start + n, 3:6] = g[1]
    g_mu = torch.zeros((n, len(kinds)), dtype=x.dtype)
    adj(G=G, start=start, free=freef, friction=mu.contiguous(), pre=pre, g_mu=g_mu)
    return out + (G[start : start + n, 0:3], G[start : start + n, 3:6], g_mu.sum(0))


def test_the_engine_kernels_match_the_torch_reference_and_its_gradients():
    """The Taichi kernels the engine runs against ``contact`` under autograd (float64): positions,
    velocities and the VJP in x, v and every friction; moving colliders, several colliders acting on
    one vertex, sliding and sticking, pinned vertices."""
    kinds, rows = _rows([Sphere((0.5, 0.4, 0.5), 0.1, friction=0.4, velocity=(0.0, 0.3, 0.1)),
                         Plane((0, 0.1, 0), (0.1, 1, 0), friction=0.6),
                         Box((0.2, 0.5, 0.2), (0.05, 0.06, 0.07), (10.0, 30.0, 5.0), friction=0.3)])
    gen = torch.Generator().manual_seed(5)
    time, dt = 0.01, 1e-3
    centre = torch.tensor([0.5, 0.4 + 0.3 * time, 0.5 + 0.1 * time], dtype=F64)
    x = torch.cat([centre + 0.095 * torch.nn.functional.normalize(torch.randn(12, 3, generator=gen, dtype=F64), dim=1),
                   torch.tensor([[0.6, 0.098, 0.7], [0.8, 0.105, 0.3], [0.3, 0.0995, 0.3]], dtype=F64),
                   torch.tensor([0.2, 0.5, 0.2], dtype=F64) + 0.03 * torch.randn(4, 3, generator=gen, dtype=F64),
                   torch.tensor([[0.8, 0.8, 0.8]], dtype=F64)])
    v = torch.randn(x.shape, generator=gen, dtype=F64)
    v[:, 1] -= 1.0
    v[13] = torch.tensor([0.0, -2.0, 0.0], dtype=F64)  # straight down: no tangential speed
    free = torch.ones(len(x), dtype=torch.bool)
    free[2] = False
    box = (torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64))
    mu = torch.tensor([0.4, 0.6, 0.3], dtype=F64)
    gx, gv = torch.randn(x.shape, generator=gen, dtype=F64), torch.randn(x.shape, generator=gen, dtype=F64)

    xr, vr, mr = (t.clone().requires_grad_(True) for t in (x, v, mu))
    y, w = CC.contact(xr, vr, kinds, rows, mr, time, dt, free, box)
    ref = torch.autograd.grad((y, w), (xr, vr, mr), (gx, gv))
    yk, wk, touched, *got = _kernel_contact(x, v, kinds, rows, mu, time, dt, free, box, g=(gx, gv))
    inside = int((((y - x).abs().sum(1) > 0) | ((w - v).abs().sum(1) > 0)).sum())
    assert touched == inside and touched >= 15
    torch.testing.assert_close(yk, y.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(wk, w.detach(), rtol=0, atol=1e-12)
    for name, a, b in zip(("x", "v", "friction"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"dL/d{name}")


def test_the_engine_kernels_leave_outside_vertices_alone_in_float32():
    kinds, rows = _rows([Sphere((0.5, 0.4, 0.5), 0.1), Plane((0, 0.1, 0), (0, 1, 0)), Box((0.2, 0.5, 0.2), (0.05, 0.05, 0.05))])
    x = torch.tensor([[0.5, 0.499, 0.5], [0.7, 0.099, 0.7], [0.2, 0.549, 0.2], [0.8, 0.8, 0.8], [0.5, 0.4, 0.5]])
    v = torch.tensor([[0.0, -1.0, 0.0], [0.0, -1.0, 0.0], [0.0, -1.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mu = torch.tensor([0.3, 0.5, 0.2])
    g = (torch.ones_like(x), torch.ones_like(v))
    y, w, touched, gx, gv, gm = _kernel_contact(x, v, kinds, rows.float(), mu, 0.0, 1e-3, torch.ones(5, dtype=torch.bool),
                                                 (torch.zeros(3), torch.ones(3)), g=g)
    assert touched == 4 and torch.equal(y[3], x[3]) and torch.equal(w[3], v[3])
    assert torch.equal(gx[3], g[0][3]) and torch.equal(gv[3], g[1][3])
    for t in (y, w, gx, gv, gm):
        assert torch.isfinite(t).all(), t


def _band_states(dt=1e-3, mu=0.5):
    """Vertices just below a ground plane, each with depth / (dt |v_n|) and
    1 - mu dv / |v_t| chosen in and around the rounded corners (NORMAL_BAND, FRICTION_BAND)."""
    zs = [0.3, 1 - CC.NORMAL_BAND, 0.8, 0.93, 1.0, 1.04, 1.3, 1 + CC.NORMAL_BAND, 1.8]
    rs = [-0.3, -CC.FRICTION_BAND, -0.04, 0.0, 0.06, CC.FRICTION_BAND, 0.4]
    x, v = [], []
    for z in zs:
        for r in rs:
            a = z * 1.0  # inward speed 1 m/s
            dv = min(a, 1.0) if abs(z - 1) >= CC.NORMAL_BAND else float(CC.normal_loss(torch.tensor(a, dtype=F64), torch.tensor(1.0, dtype=F64), CC.NORMAL_BAND))
            t = mu * dv / (1.0 - r)
            x.append([0.5, 0.1 - z * dt, 0.5])
            v.append([0.6 * t, -1.0, 0.8 * t])
    return torch.tensor(x, dtype=F64), torch.tensor(v, dtype=F64)


def test_the_rounded_corners_are_c1_and_exact_outside_their_bands():
    """The normal response's min and the stick/slip ramp are rounded over their bands only: exact
    outside, and their derivatives continuous across each band's edges (a parabola of the wrong
    width or offset would break one of the two)."""
    b = torch.tensor(2.0, dtype=F64)
    for edge in (1 - CC.NORMAL_BAND, 1 + CC.NORMAL_BAND):
        vals, grads = [], []
        for a0 in (edge * 2.0 - 1e-9, edge * 2.0 + 1e-9):
            a, bb = torch.tensor(a0, dtype=F64, requires_grad=True), b.clone().requires_grad_(True)
            y = CC.normal_loss(a, bb, CC.NORMAL_BAND)
            y.backward()
            vals.append(float(y.detach()))
            grads.append((float(a.grad), float(bb.grad)))
        assert vals[0] == pytest.approx(vals[1], abs=1e-8)
        assert grads[0] == pytest.approx(grads[1], abs=1e-7)
    for a0, want in ((2.0 * (1 - CC.NORMAL_BAND) - 0.01, 2.0 * (1 - CC.NORMAL_BAND) - 0.01), (2.0 * (1 + CC.NORMAL_BAND) + 0.01, 2.0), (0.3, 0.3)):
        assert float(CC.normal_loss(torch.tensor(a0, dtype=F64), b, CC.NORMAL_BAND)) == want
    assert float(CC.normal_loss(torch.tensor(2.0, dtype=F64), b, CC.NORMAL_BAND)) == pytest.approx(2.0 - 2.0 * CC.NORMAL_BAND / 4)
    assert float(CC.normal_loss(torch.tensor(0.5, dtype=F64), torch.tensor(-1.0, dtype=F64), CC.NORMAL_BAND)) == 0.0
    for edge in (-CC.FRICTION_BAND, CC.FRICTION_BAND):
        grads = []
        for r0 in (edge - 1e-9, edge + 1e-9):
            r = torch.tensor(r0, dtype=F64, requires_grad=True)
            CC._soft_ramp(r, CC.FRICTION_BAND).backward()
            grads.append(float(r.grad))
        assert grads[0] == pytest.approx(grads[1], abs=1e-7)
    assert float(CC._soft_ramp(torch.tensor(0.0, dtype=F64), CC.FRICTION_BAND)) == pytest.approx(CC.FRICTION_BAND / 4)


def test_the_kernels_match_the_reference_inside_the_rounded_corners():
    """Kernels against ``contact`` (values and VJP, float64) and ``contact``'s gradcheck, for vertices
    placed in and around both bands: the random states of the other tests rarely fall inside."""
    kinds, rows = _rows([Plane((0, 0.1, 0), (0, 1, 0), friction=0.5)])
    dt, mu = 1e-3, torch.tensor([0.5], dtype=F64)
    x, v = _band_states(dt, 0.5)
    free = torch.ones(len(x), dtype=torch.bool)
    box = (torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64))
    gen = torch.Generator().manual_seed(11)
    gx, gv = torch.randn(x.shape, generator=gen, dtype=F64), torch.randn(x.shape, generator=gen, dtype=F64)
    xr, vr, mr = (t.clone().requires_grad_(True) for t in (x, v, mu))
    y, w = CC.contact(xr, vr, kinds, rows, mr, 0.0, dt, free, box)
    ref = torch.autograd.grad((y, w), (xr, vr, mr), (gx, gv))
    yk, wk, touched, *got = _kernel_contact(x, v, kinds, rows, mu, 0.0, dt, free, box, g=(gx, gv))
    assert touched == len(x)
    torch.testing.assert_close(wk, w.detach(), rtol=0, atol=1e-12)
    for name, a, b in zip(("x", "v", "friction"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"dL/d{name}")

    def f(x, v, mu):
        return CC.contact(x, v, kinds, rows, mu, 0.0, dt, free, box)

    # entries reach 1 / dt = 1000; central differences straddling a band's edge (states sit on each
    # edge) are off by curvature x step, ~0.01: atol 0.05 still catches a wrong slope inside a band
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), v.requires_grad_(), mu.clone().requires_grad_()), eps=1e-8, atol=0.05)


def test_the_mesh_solvers_kernel_contact_matches_the_torch_reference_and_gradchecks():
    """``vertex_contact`` (the kernels as an autograd function, what the grid-free solver runs)
    against ``contact`` under autograd, float64: values and the VJP in x, v and every friction, a
    vertex outside the box that no collider touches included (both clamp it); and gradcheck."""
    from dreamcloth.taichi_mpm import runtime

    runtime.ensure("cpu", F64)
    kinds, rows = _rows([Sphere((0.5, 0.4, 0.5), 0.1, friction=0.4, velocity=(0.0, 0.3, 0.1)),
                         Plane((0, 0.1, 0), (0.1, 1, 0), friction=0.6)])
    gen = torch.Generator().manual_seed(3)
    time, dt = 0.01, 1e-3
    centre = torch.tensor([0.5, 0.4 + 0.3 * time, 0.5 + 0.1 * time], dtype=F64)
    x = torch.cat([centre + 0.095 * torch.nn.functional.normalize(torch.randn(8, 3, generator=gen, dtype=F64), dim=1),
                   torch.tensor([[0.6, 0.098, 0.7], [0.8, 0.3, 0.3], [0.5, 0.5, 1.02]], dtype=F64)])
    v = torch.randn(x.shape, generator=gen, dtype=F64)
    v[:, 1] -= 1.0
    free = torch.ones(len(x), dtype=torch.bool)
    free[1] = False
    box = (torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64))
    corners = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
    mu = torch.tensor([0.4, 0.6], dtype=F64)
    gx, gv = torch.randn(x.shape, generator=gen, dtype=F64), torch.randn(x.shape, generator=gen, dtype=F64)

    xr, vr, mr = (t.clone().requires_grad_(True) for t in (x, v, mu))
    y, w = CC.contact(xr, vr, kinds, rows, mr, time, dt, free, box)
    ref = torch.autograd.grad((y, w), (xr, vr, mr), (gx, gv))
    xk, vk, mk = (t.clone().requires_grad_(True) for t in (x, v, mu))
    yk, wk = CC.vertex_contact(xk, vk, kinds, rows, mk, time, dt, free.to(F64), corners)
    got = torch.autograd.grad((yk, wk), (xk, vk, mk), (gx, gv))
    assert float(yk[-1, 2].detach()) == 1.0 and int(((y.detach() - x).abs().sum(1) > 0).sum()) >= 5
    torch.testing.assert_close(yk, y, rtol=0, atol=1e-12)
    torch.testing.assert_close(wk, w, rtol=0, atol=1e-12)
    for name, a, b in zip(("x", "v", "friction"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"dL/d{name}")

    def f(x, v, mu):
        return CC.vertex_contact(x, v, kinds, rows, mu, time, dt, free.to(F64), corners)

    assert torch.autograd.gradcheck(f, (xk, vk, mk), eps=1e-7, atol=1e-6)
