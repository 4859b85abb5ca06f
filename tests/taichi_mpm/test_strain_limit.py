"""The cloth strain limit (``max_stretch``, taichi_mpm.strain_limit): the projection itself, its
gradient (gradcheck and finite differences over a rollout), and a hanging sheet against the analytic
elongation of a stretch-capped sheet."""

import numpy as np
import pytest
import torch

from dreamcloth.benchmarks.fabric import hanging_stretch
from dreamcloth.taichi_mpm import Bounds, GridSpec, ModelBuilder, Params, grid_mesh, simulate, stable_config
from dreamcloth.taichi_mpm import strain_limit as SL
from dreamcloth.taichi_mpm.cloth import ClothGroup

from .cloth_scenes import assert_gradients_match, scalar_central_differences

F64 = torch.float64


def _mesh(nx=5, nz=4, pinned=()):
    verts, faces = grid_mesh(nx, nz, (0.4, 0.3))
    group = ClothGroup.build(verts, faces, 0, len(verts), F64)
    free = torch.ones(len(verts), dtype=F64)
    free[list(pinned)] = 0.0
    return torch.tensor(verts, dtype=F64), SL.LimitMesh(group.faces_local, group.rest_inverse, free)


def _stretched(x, sx=1.15, sz=1.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rot = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=F64))[0]
    y = x * torch.tensor([sx, 1.0, sz], dtype=F64)
    return y @ rot.T + 0.002 * torch.randn(x.shape, generator=gen, dtype=F64)


def test_a_triangle_beyond_the_limit_lands_on_it_and_keeps_its_rotation():
    x0 = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.02, 0.0, 0.08]], dtype=F64)
    group = ClothGroup.build(x0.numpy(), np.array([[0, 1, 2]]), 0, 3, F64)
    mesh = SL.LimitMesh(group.faces_local, group.rest_inverse, torch.ones(3, dtype=F64))
    x = _stretched(x0, 1.3, 1.1)
    _, s2 = SL.principal_stretches(x, mesh)
    for limit in (1.05, float(s2) + 0.03):  # both stretches clamped; only the larger one
        y = SL.limit_positions(x, torch.tensor([limit], dtype=F64), mesh, iterations=1)
        t1, t2 = SL.principal_stretches(y, mesh)
        assert float(t1) == pytest.approx(limit, rel=1e-6)  # (the discriminant floor: ~5e-7)
        assert float(t2) == pytest.approx(min(limit, float(s2)), rel=1e-6)
        assert torch.allclose(y.mean(0), x.mean(0))  # the centroid stays
        # the same rotation: the limited edges are the old ones times a symmetric positive 2x2
        n_old = torch.linalg.cross(x[1] - x[0], x[2] - x[0])
        n_new = torch.linalg.cross(y[1] - y[0], y[2] - y[0])
        assert torch.allclose(n_old / n_old.norm(), n_new / n_new.norm())
    # within the limit nothing moves, exactly
    assert torch.equal(SL.limit_positions(x, torch.tensor([1.5], dtype=F64), mesh), x)


def test_pinned_vertices_never_move_and_the_free_ones_come_to_them():
    x0, mesh = _mesh(5, 4, pinned=range(4))  # the first column of vertices (along z), at rest
    pulled = x0.clone()
    pulled[:, 0] = x0[0, 0] + 1.15 * (x0[:, 0] - x0[0, 0])  # stretched 15% away from it
    x = _stretched(pulled, 1.0, 1.0)  # and turned as a whole
    y = SL.limit_positions(x, torch.full((24,), 1.05, dtype=F64), mesh, iterations=30)
    assert torch.equal(y[:4], x[:4])
    s1, _ = SL.principal_stretches(y, mesh)
    before, _ = SL.principal_stretches(x, mesh)
    assert float(before.max()) > 1.14
    assert float(s1.max()) < 1.06


def test_the_projection_gradcheck():
    """float64 gradcheck of positions, velocities and per-element max_stretch, with triangles on both
    sides of the limit and a pinned vertex."""
    x0, mesh = _mesh(4, 3, pinned=(0,))
    x = _stretched(x0, 1.12, 1.02, seed=3).requires_grad_(True)
    v = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    limit = torch.linspace(1.03, 1.2, 12, dtype=F64).requires_grad_(True)
    s1, _ = SL.principal_stretches(x.detach(), mesh)
    assert bool((s1 > limit.detach()).any()) and bool((s1 < limit.detach()).any())
    assert torch.autograd.gradcheck(lambda a, b, c: SL.limit(a, b, c, mesh, 1e-3, iterations=2), (x, v, limit), eps=1e-7,
                                    atol=1e-6, rtol=1e-5)


def _hanging(limit, E=20.0, n=(7, 5), res=16, frames=5, fps=20.0, flip=0.0):
    verts, faces = grid_mesh(n[0], n[1], (0.3, 0.2), (0.5, 0.7, 0.5), (0.0, 0.0, 90.0))
    top = np.nonzero(np.isclose(verts[:, 1], verts[:, 1].max()))[0].tolist()
    b = ModelBuilder(F64)
    b.add_cloth("sheet", verts, faces, pinned=top)
    model, state = b.build([])
    grid = GridSpec.from_domain((0.2, 0.2, 0.2), (0.8, 0.95, 0.8), res)
    # young_modulus's range holds the finite differences' steps on either side of E (simulate checks it)
    bounds = Bounds((0.9 * E, 1.2 * E), (0.0, 0.0), (0.2, 0.2), max_speed=2.0, shear_stiffness=(E, E), normal_stiffness=(E, E),
                    min_length=0.05)
    cfg = stable_config(grid, fps, bounds, flip=flip)
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(frames, model.num_particles, 3, generator=gen, dtype=F64)

    def loss(max_stretch, young):
        params = Params.create(young, 0.0, 0.2, 0.5, 0.0, E, E, max_stretch=max_stretch, dtype=F64)
        traj = simulate(model, state, params, cfg, frames, bounds=bounds)
        return (traj.x * w).sum(), traj

    return loss, (frames - 1) * cfg.substeps_per_frame


@pytest.mark.slow
@pytest.mark.parametrize("flip", [0.0, 0.95])
def test_max_stretch_and_young_modulus_gradients_match_finite_differences(flip):
    """Over >= 100 substeps of a sheet hanging beyond its limit (float64, central differences), its
    top row pinned; APIC and a PIC/FLIP blend (pinned vertices take no FLIP share)."""
    loss, substeps = _hanging(1.03, flip=flip)
    assert substeps >= 100
    base = {"max_stretch": 1.03, "young": 20.0}
    leaves = {k: torch.tensor(v, dtype=F64, requires_grad=True) for k, v in base.items()}
    value, _ = loss(leaves["max_stretch"], leaves["young"])
    grads = torch.autograd.grad(value, [leaves["max_stretch"], leaves["young"]])
    fd = scalar_central_differences(lambda max_stretch, young: loss(max_stretch, young)[0], base)
    assert_gradients_match([(k, float(grads[i]), fd[k]) for i, k in enumerate(base)])


def test_the_limit_changes_the_motion_only_where_it_binds():
    """A loose limit (never reached) gives the unlimited rollout bit for bit; a tight one shortens the sheet."""
    loss, _ = _hanging(0.0)
    with torch.no_grad():
        _, free = loss(torch.tensor(0.0, dtype=F64), torch.tensor(20.0, dtype=F64))
        _, loose = loss(torch.tensor(1.5, dtype=F64), torch.tensor(20.0, dtype=F64))
        _, tight = loss(torch.tensor(1.01, dtype=F64), torch.tensor(20.0, dtype=F64))
    assert torch.equal(free.x, loose.x)
    assert float(tight.x[-1, :, 1].min()) > float(free.x[-1, :, 1].min()) + 1e-3


@pytest.mark.slow
def test_stretch_capped_sheet_under_self_weight_at_two_grids():
    """A soft sheet (10 N/m) hanging from its top edge with max_stretch 1.03: the strain is capped over
    the top and elastic near the bottom; the elongation matches that analytic profile within 5%."""
    for res in (32, 64):
        d, ref = hanging_stretch(res, max_stretch=1.03)
        free, _ = hanging_stretch(res) if res == 32 else (None, None)
        print(f"grid {res}: elongation {1e3 * d[-1]:.3f} mm, analytic {1e3 * ref:.3f} mm, {100 * (d[-1] - ref) / ref:+.2f}%")
        assert abs(d[-1] - d[-3]) < 0.002 * ref, "not settled"
        assert d[-1] == pytest.approx(ref, rel=0.05)
        if free is not None:
            assert free[-1] > 1.5 * ref  # the cap binds: without it the sheet stretches much further


def test_kept_tapes_give_the_gradients_of_resimulation_with_the_limit_on(monkeypatch):
    """The pre-limit vertices the forward pass keeps are what re-simulation recomputes: bit-identical gradients."""
    import importlib

    simulate_module = importlib.import_module("dreamcloth.taichi_mpm.simulate")  # the module, not the function
    loss, _ = _hanging(1.02, frames=3)

    def grads():
        leaves = [torch.tensor(1.02, dtype=F64, requires_grad=True), torch.tensor(20.0, dtype=F64, requires_grad=True)]
        return torch.autograd.grad(loss(*leaves)[0], leaves)

    kept = grads()
    monkeypatch.setattr(simulate_module, "KEEP_TAPE_BYTES", 0)
    resimulated = grads()
    assert all(torch.equal(a, b) for a, b in zip(kept, resimulated))
    assert float(kept[0]) != 0.0


def test_limited_positions_stay_inside_the_engines_box():
    """Like g2p, the limit clamps positions into the box that keeps every stencil inside the grid
    (a large correction could otherwise carry a vertex past it); velocities follow the clamped motion."""
    x0, mesh = _mesh(4, 3)
    x = _stretched(x0, 1.3, 1.1)
    v = torch.zeros_like(x)
    free, _ = SL.limit(x, v, torch.full((12,), 1.02, dtype=F64), mesh, 1e-3)
    lo = free.min(0).values + 0.01  # a box the unclamped result leaves on every side
    hi = free.max(0).values - 0.01
    y, w = SL.limit(x, v, torch.full((12,), 1.02, dtype=F64), mesh, 1e-3, box=(lo, hi))
    assert bool(((y >= lo) & (y <= hi)).all())
    assert torch.allclose(w, (y - x) / 1e-3)
