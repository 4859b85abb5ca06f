"""Shape morphing: grid-mass splatting, losses, Chamfer distance, control gradients, a small morph."""

import math

import numpy as np
import pytest
import torch

from dreamcloth.taichi_mpm import GridSpec, ParticleSet, State, sample_box, sample_sphere
from dreamcloth.cli.pipeline import morph_control as M

F64 = torch.float64


def _bspline(d: torch.Tensor) -> torch.Tensor:
    """The quadratic B-spline N(d) (d in cells), evaluated directly: the dense reference of splat_mass."""
    a = d.abs()
    return torch.where(a < 0.5, 0.75 - a**2, torch.where(a < 1.5, 0.5 * (1.5 - a) ** 2, torch.zeros_like(a)))


def _dense_splat(x, mass, grid):
    """m_i = sum_p m_p N(u_p - i_x) N(u_p - i_y) N(u_p - i_z) over every node (slow, obviously right)."""
    u = (x - torch.tensor(grid.origin, dtype=x.dtype)) / grid.dx
    axes = [_bspline(u[:, a, None] - torch.arange(grid.res[a], dtype=x.dtype)) for a in range(3)]  # [N, R_a]
    return torch.einsum("p,pi,pj,pk->ijk", mass, *axes)


def _points(n, grid, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(grid.inner_min, dtype=F64), torch.tensor(grid.inner_max, dtype=F64)
    return lo + (hi - lo) * torch.rand(n, 3, generator=gen, dtype=F64)


GRID = GridSpec(origin=(0.1, -0.2, 0.3), dx=0.1, res=(10, 11, 12))


def test_splat_matches_dense_reference_and_conserves_mass():
    x = _points(40, GRID)
    mass = torch.rand(40, generator=torch.Generator().manual_seed(1), dtype=F64) + 0.5
    m = M.splat_mass(x, mass, GRID)
    assert m.shape == GRID.res
    assert torch.allclose(m, _dense_splat(x, mass, GRID), rtol=1e-12, atol=1e-14)
    assert float(m.sum()) == pytest.approx(float(mass.sum()), rel=1e-13)
    assert float(m.min()) >= 0.0


def test_splat_gradcheck():
    x = _points(5, GRID, seed=2).requires_grad_(True)
    mass = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0], dtype=F64, requires_grad=True)
    weights = torch.randn(GRID.res, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert torch.autograd.gradcheck(lambda x, m: (M.splat_mass(x, m, GRID) * weights).sum(), (x, mass))
    # and the full [R0, R1, R2] Jacobian on a small grid
    small = GridSpec((0.0, 0.0, 0.0), 0.25, (6, 6, 6))
    xs = _points(2, small, seed=4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: M.splat_mass(x, torch.ones(2, dtype=F64), small), (xs,))


def test_splat_rejects_points_off_the_grid():
    x = torch.tensor([[0.5, 0.3, 0.9], [0.12, 0.3, 0.9]], dtype=F64)  # the second is 0.2 cells from the edge
    with pytest.raises(ValueError, match="point 1 .* too close to the edge"):
        M.splat_mass(x, torch.ones(2, dtype=F64), GRID)


def test_losses_and_pooling():
    x = _points(30, GRID)
    mass = torch.ones(30, dtype=F64)
    target = M.target_mass_grid(_points(50, GRID, seed=5), 30.0, GRID)
    assert float(target.sum()) == pytest.approx(30.0, rel=1e-12)
    m = M.splat_mass(x, mass, GRID)
    for kind in M.LOSS_KINDS:
        assert float(M.grid_mass_loss(target, target, kind)) == 0.0
        assert float(M.grid_mass_loss(m, target, kind)) > 0.0
    assert float(M.grid_mass_loss(torch.zeros_like(target), target, "squared")) == pytest.approx(0.5)
    pooled = M.pool_mass(m)
    assert pooled.shape == (5, 6, 6)
    assert float(pooled.sum()) == pytest.approx(float(m.sum()), rel=1e-13)
    with pytest.raises(ValueError, match="loss kind"):
        M.grid_mass_loss(m, target, "l3")


def test_regularisers():
    eye = torch.eye(3, dtype=F64).expand(2, 4, 3, 3)
    assert float(M.control_regulariser(eye)) == 0.0
    assert float(M.volume_regulariser(eye)) == 0.0
    # a rotation keeps volume but is not the identity; a uniform scaling changes volume
    c, s = math.cos(0.3), math.sin(0.3)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=F64).expand(2, 4, 3, 3)
    assert float(M.volume_regulariser(rot)) == pytest.approx(0.0, abs=1e-24)
    assert float(M.control_regulariser(rot)) > 0.0
    assert float(M.volume_regulariser(1.1 * eye)) == pytest.approx((3 * math.log(1.1)) ** 2)


def test_chamfer_matches_brute_force():
    gen = torch.Generator().manual_seed(6)
    a = torch.rand(70, 3, generator=gen, dtype=F64)
    b = torch.rand(45, 3, generator=gen, dtype=F64) + 0.2
    d = torch.cdist(a, b)
    expect_sq = (d.min(1).values ** 2).mean() + (d.min(0).values ** 2).mean()
    expect_eu = d.min(1).values.mean() + d.min(0).values.mean()
    cd = M.chamfer_distance(a, b, chunk=16)  # several chunks
    assert float(cd.squared) == pytest.approx(float(expect_sq), rel=1e-12)
    assert float(cd.euclidean) == pytest.approx(float(expect_eu), rel=1e-12)
    assert float(M.chamfer_distance(a, a).squared) == 0.0
    # differentiable w.r.t. both sets (away from ties)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: M.chamfer_distance(a, b).squared, (a, b))


def test_grid_basis_is_a_partition_of_unity():
    grid = M.morph_grid(16)
    x = _points(60, grid, seed=7)
    basis = M.ControlBasis("grid", x, grid, cells=2)
    assert 0 < basis.num_variables < 60 * 27
    field = torch.randn(3, 3, dtype=F64)
    const = field.expand(2, basis.num_variables, 3, 3)
    assert torch.allclose(basis.controls(const), field.expand(2, 60, 3, 3), atol=1e-14)
    particle = M.ControlBasis("particle", x, grid)
    v = torch.randn(2, 60, 3, 3, dtype=F64)
    assert particle.controls(v) is v


# ----------------------------------------------------------------------------- morph problems


def _tiny_problem(**settings):
    """~60 particles in a 12^3 grid, an interval of 6 substeps with controls every 3."""
    grid = M.morph_grid(12)
    centre = M.grid_centre(grid)
    source = sample_sphere(0.1, [c + 0.013 for c in centre], grid.dx / 2)
    target = sample_box((0.25, 0.12, 0.2), centre, grid.dx / 2)
    base = dict(interval_substeps=6, control_stride=3, frame_substeps=3)
    base.update(settings)
    return M.MorphProblem.create(source, target, grid, M.MorphSettings(**base))


@pytest.mark.parametrize("loss", ["squared", "log"])
def test_morph_objective_gradient_matches_finite_differences(loss):
    """d(objective)/d(controls) by the simulator's adjoint vs central differences (float64)."""
    problem = _tiny_problem(loss=loss)
    n = problem.num_particles
    gen = torch.Generator().manual_seed(8)
    # start moving and off the identity, so every term of the objective (kinetic, both regularisers) is active
    v0 = 0.05 * torch.randn(n, 3, generator=gen, dtype=F64)
    state = State.at_rest(problem.initial_state.x, v0)
    delta0 = 0.03 * torch.randn(2, n, 3, 3, generator=gen, dtype=F64)

    def objective(delta):
        control = torch.eye(3, dtype=F64) + delta
        return problem.loss(problem.rollout(state, control), control).total

    delta = delta0.clone().requires_grad_(True)
    value = objective(delta)
    (grad,) = torch.autograd.grad(value, delta)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) > 0
    h = 1e-6
    with torch.no_grad():
        # random directions (all entries at once) and single entries of the most sensitive particle
        directions = [torch.randn(delta0.shape, generator=gen, dtype=F64) for _ in range(3)]
        k, p = divmod(int(grad.abs().sum(dim=(2, 3)).argmax()), n)
        for i, j in [(0, 0), (1, 2), (2, 1)]:
            e = torch.zeros_like(delta0)
            e[k, p, i, j] = 1.0
            directions.append(e)
        for d in directions:
            fd = (objective(delta0 + h * d) - objective(delta0 - h * d)) / (2 * h)
            ad = (grad * d).sum()
            assert float(ad) == pytest.approx(float(fd), rel=1e-5, abs=1e-9 * float(grad.abs().max())), (float(ad), float(fd))


def test_create_rejects_shapes_outside_the_grid():
    grid = M.morph_grid(12)
    inside = sample_sphere(0.08, M.grid_centre(grid), grid.dx / 2)
    too_big = sample_box((0.8, 0.2, 0.2), M.grid_centre(grid), grid.dx / 2)
    with pytest.raises(ValueError, match="target shape extends outside the simulation grid"):
        M.MorphProblem.create(inside, too_big, grid)
    with pytest.raises(ValueError, match="source shape extends outside"):
        M.MorphProblem.create(too_big, inside, grid)
    empty = ParticleSet(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="target has no particles"):
        M.MorphProblem.create(inside, empty, grid)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="multiple of frame_substeps"):
        M.MorphSettings(interval_substeps=10, frame_substeps=3)
    with pytest.raises(ValueError, match="loss must be one of"):
        M.MorphSettings(loss="l1")
    with pytest.raises(ValueError, match="method must be one of"):
        M.OptimiserSettings(method="lbfgs")
    with pytest.raises(ValueError, match="basis must be one of"):
        M.OptimiserSettings(basis="mesh")


def test_custom_loss_drives_the_controls():
    """Any torch loss on the trajectory can replace the grid-mass objective: here, stretch the body
    along x.  (Its centre of mass could not move: the controls are internal forces.)"""
    problem = _tiny_problem()

    def loss_fn(trajectory, control):
        x = trajectory.final.x[:, 0]
        return -((x - x.mean()) ** 2).mean() * 1e3

    settings = M.OptimiserSettings(method="adam", iterations=4, step_size=0.05, basis="particle")
    result = M.optimise_interval(problem, problem.initial_state, settings, loss_fn=loss_fn)
    assert result.control.shape == (2, problem.num_particles, 3, 3)
    assert result.final_loss < result.initial_loss
    assert result.evaluations == 5 and result.gradients == 4
    # the result's trajectory is the rollout of the returned control
    again = problem.rollout(problem.initial_state, result.control)
    assert torch.allclose(again.final.x, result.end_state.x, atol=1e-12)


def test_sphere_to_torus_improves_chamfer():
    """A small chained morph (16^3 grid, ~470 particles): every interval lowers its objective and the
    Chamfer distance to the torus falls well below the sphere's."""
    grid = M.morph_grid(16)
    centre = M.grid_centre(grid)
    volume = 4.0 / 3.0 * math.pi * 0.15**3
    source = M.sample_primitive("sphere", volume, centre, grid.dx / 2)
    target = M.sample_primitive("torus", volume, centre, grid.dx / 2)
    problem = M.MorphProblem.create(source, target, grid)
    seen = []
    result = M.morph(problem, 3, M.OptimiserSettings(iterations=4), on_interval=lambda i, r: seen.append(i))
    assert seen == [0, 1, 2]
    for r in result.intervals:
        assert r.final_loss < r.initial_loss
    assert result.x.shape == (1 + 3 * problem.settings.frames_per_interval, problem.num_particles, 3)
    assert torch.equal(result.x[0], problem.initial_state.x)
    assert torch.equal(result.x[-1], result.final_state.x)
    print("chamfer per interval", result.chamfer)
    assert result.chamfer_ratio < 0.5
