"""Vertex-level cloth contact with analytic colliders (taichi_mpm.cloth_contact): the projection and
its gradient, when it is on, and a cloth resting on the ground at the ground, on two grids."""

import pytest
import torch

from dreamcloth.taichi_mpm import GridSpec, ModelBuilder, Plane, Sphere, grid_mesh, simulate, stable_config
from dreamcloth.taichi_mpm import cloth_contact as CC
from dreamcloth.taichi_mpm.colliders import Box, pack
from dreamcloth.taichi_mpm.solver import Engine

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


def test_touch_skips_only_colliders_where_contact_is_the_identity():
    kinds, rows = _rows([Sphere((0.5, 0.4, 0.5), 0.1), Plane((0, 0.1, 0), (0, 1, 0)), Box((0.2, 0.5, 0.2), (0.05, 0.05, 0.05))])
    box = (torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64))
    mu = torch.tensor([0.3, 0.5, 0.2], dtype=F64)
    free = torch.ones(3, dtype=torch.bool)
    v = torch.tensor([[0.1, -1.0, 0.0], [0.0, -1.0, 0.2], [0.3, -0.5, 0.0]], dtype=F64)
    x = torch.tensor([[0.5, 0.495, 0.5], [0.7, 0.3, 0.7], [0.8, 0.8, 0.8]], dtype=F64)  # the sphere only
    y, w, active = CC.touch(x, v, kinds, rows, mu, 0.0, 1e-3, free, box)
    assert active == (0,)
    for a, b in zip((y, w), CC.contact(x, v, kinds, rows, mu, 0.0, 1e-3, free, box)):
        assert torch.equal(a, b)
    for a, b in zip((y, w), CC.contact(x, v, kinds, rows, mu, 0.0, 1e-3, free, box, active=active)):
        assert torch.equal(a, b)
    x[0, 1] = 0.55  # outside everything: nothing acts and nothing changes
    y, w, active = CC.touch(x, v, kinds, rows, mu, 0.0, 1e-3, free, box)
    assert active == () and torch.equal(y, x) and torch.equal(w, v)


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
