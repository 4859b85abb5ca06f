"""Physical behaviour of the MPM core (float64): conservation, resting contact, free fall, friction, damping."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from dreamcloth.taichi_mpm import GridSpec, Model, Params, Plane, SimConfig, Bounds, State, simulate, stable_config
from dreamcloth.taichi_mpm.sampling import sample_box
from dreamcloth.taichi_mpm.solver import Engine, StepParams, pack_material, pack_state

from .scenes import F64, random_state, tiny_config

G = 9.81


def _stable(grid, fps, E, rho, speed, **kw):
    """Config and CFL bounds for a run at fixed E, nu = 0.3, density, bounded particle speed."""
    bounds = Bounds((E, E), (0.3, 0.3), (rho, rho), max_speed=speed)
    return stable_config(grid, fps, bounds, **kw), bounds


def _block(size, center, grid, spacing=None):
    ps = sample_box(size, center, spacing or grid.dx * 0.5)
    x = torch.tensor(ps.positions, dtype=F64)
    vol = torch.tensor(ps.volumes, dtype=F64)
    return x, vol


def test_p2g_conserves_mass_and_momentum():
    cfg = tiny_config(res=12)
    st = random_state(80, cfg.grid, seed=4)
    n = 80
    vol = torch.full((n,), (cfg.grid.dx * 0.5) ** 3, dtype=F64)
    model = Model.create(vol, "neo_hookean")
    mass = 1e3 * vol * (1 + torch.rand(n, dtype=F64))
    force = torch.randn(n, 3, dtype=F64)
    P = StepParams(pack_material(torch.full((n,), 1e3, dtype=F64), torch.full((n,), 1e3, dtype=F64), vol, mass, force),
                   torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64))
    eng = Engine(model, cfg)
    S = pack_state(st.x, st.v, st.C, st.F)
    keep = []  # the grid after p2g, as the backward pass keeps it (the step leaves the fields zeroed)
    eng.step(S, P, 0, torch.empty_like(S), keep=keep)
    (_, _, region, grid), = keep
    lo, hi = np.array(region[:3]), np.array(region[3:])
    assert grid.shape[0] == np.prod(hi - lo)
    assert grid[:, 3].sum() == pytest.approx(float(mass.sum()), rel=1e-12)
    # the affine (stress and APIC) terms carry no net momentum: sum_i w_ip (x_i - x_p) = 0
    expected = (mass[:, None] * st.v + cfg.dt * force).sum(0).numpy()
    assert np.allclose(grid[:, 0:3].sum(0).numpy(), expected, rtol=1e-10, atol=1e-14)
    # and the fields are left zero for the next substep's scatter
    assert not eng.grid.m.to_numpy().any() and not eng.grid.mv.to_numpy().any()


@pytest.mark.parametrize("flip", [0.0, 0.95])
def test_an_interrupted_substep_does_not_leak_into_the_next(flip):
    """A substep cut off between its scatter and its grid update (Ctrl-C) leaves mass on the grid
    (and FLIP's momentum); the next substep must clear it rather than add to it."""
    cfg = dataclasses.replace(tiny_config(res=12), flip=flip)
    st = random_state(40, cfg.grid, seed=5)
    n = 40
    vol = torch.full((n,), (cfg.grid.dx * 0.5) ** 3, dtype=F64)
    model = Model.create(vol, "neo_hookean")
    mass = 1e3 * vol
    P = StepParams(pack_material(torch.full((n,), 1e3, dtype=F64), torch.full((n,), 1e3, dtype=F64), vol, mass,
                                 torch.zeros(n, 3, dtype=F64)), torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64))
    eng = Engine(model, cfg)
    S = pack_state(st.x, st.v, st.C, st.F)
    clean, _ = eng.run(S, P, 0, 1)
    real_update = eng.grid_update

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    eng.grid_update = interrupted
    with pytest.raises(KeyboardInterrupt):
        eng.run(S, P, 0, 1)
    eng.grid_update = real_update
    again, _ = eng.run(S, P, 0, 1)
    assert torch.equal(again, clean)


def test_momentum_conserved_without_gravity_and_boundaries():
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), 16)
    cfg = SimConfig(grid=grid, fps=30.0, substeps_per_frame=20, gravity=(0, 0, 0))
    x, vol = _block((0.2, 0.15, 0.2), (0.5, 0.5, 0.5), grid)
    n = x.shape[0]
    gen = torch.Generator().manual_seed(0)
    v = 0.3 * torch.randn(n, 3, generator=gen, dtype=F64)
    F = torch.eye(3, dtype=F64) + 0.05 * torch.randn(n, 3, 3, generator=gen, dtype=F64)  # pre-stressed
    state = State(x, v, torch.zeros(n, 3, 3, dtype=F64), F)
    model = Model.create(vol, "fixed_corotated")
    rho = 500.0
    traj = simulate(model, state, Params.create(2e4, 0.3, rho, 1.0, 0.0, dtype=F64), cfg, 6)
    p0 = (rho * vol[:, None] * v).sum(0)
    p1 = (rho * vol[:, None] * traj.final.v).sum(0)
    print(f"momentum before {p0.tolist()} after 100 substeps {p1.tolist()}")
    assert torch.allclose(p1, p0, rtol=1e-9, atol=1e-12 * float(p0.abs().max()))
    assert (traj.final.v - v).abs().max() > 1e-3  # the stresses did act


def test_block_resting_on_ground_stays_at_rest():
    grid = GridSpec.from_domain((0, 0, 0), (0.6, 0.6, 0.6), 32)
    cfg, bounds = _stable(grid, 30.0, 2e4, 1e3, 1.0)
    ground = 0.1
    x, vol = _block((0.12, 0.1, 0.12), (0.3, ground + 0.05, 0.3), grid)
    model = Model.create(vol, "neo_hookean", colliders=[Plane(point=(0, ground, 0), normal=(0, 1, 0), friction=0.5)])
    traj = simulate(model, State.at_rest(x), Params.create(2e4, 0.3, 1000.0, 0.05, 0.5, dtype=F64), cfg, 31, bounds=bounds)  # 1 s
    disp = (traj.x - x).norm(dim=-1)
    drift = traj.x[-1].mean(0) - x.mean(0)
    print(f"max displacement over 1 s: {disp.max() / grid.dx:.3f} dx; COM drift {(drift / grid.dx).tolist()} dx")
    assert disp.max() < 0.5 * grid.dx
    assert drift[[0, 2]].abs().max() < 0.05 * grid.dx
    # what is left is the elastic ringing of a block released without prestress, not motion of the body
    assert traj.final.v.mean(0).norm() < 0.02


def test_free_fall_reaches_ground_at_analytic_time():
    grid = GridSpec.from_domain((0, 0, 0), (0.6, 1.0, 0.6), 48)
    fps = 60.0
    cfg, bounds = _stable(grid, fps, 5e4, 1e3, 3.5)
    ground, h = 0.1, 0.45
    x, vol = _block((0.1, 0.1, 0.1), (0.3, ground + h + 0.05, 0.3), grid)
    model = Model.create(vol, "neo_hookean", colliders=[Plane(point=(0, ground, 0), normal=(0, 1, 0), friction=0.5)])
    frames = 30
    traj = simulate(model, State.at_rest(x), Params.create(5e4, 0.3, 1000.0, 1.0, 0.5, dtype=F64), cfg, frames, bounds=bounds)
    com = traj.x[:, :, 1].mean(1).numpy()
    t = np.arange(frames) / fps
    free = com[0] - 0.5 * G * t**2
    dev = com - free
    impact_frame = int(np.argmax(np.abs(dev) > 0.25 * grid.dx))
    t_star = math.sqrt(2 * h / G)
    print(f"impact at frame {impact_frame} ({impact_frame / fps:.4f} s); analytic {t_star:.4f} s")
    assert np.abs(dev[: max(impact_frame - 1, 1)]).max() < 0.05 * grid.dx  # free flight follows the parabola
    assert abs(impact_frame / fps - t_star) <= 1.0 / fps


def _slide(friction: float, slope_deg: float = 30.0, seconds: float = 0.5):
    """A block on flat ground under gravity tilted by ``slope_deg``: the tilted-plane problem."""
    grid = GridSpec.from_domain((0, 0, 0), (1.2, 0.4, 0.4), 48)
    th = math.radians(slope_deg)
    fps = 30.0
    cfg, bounds = _stable(grid, fps, 2e4, 1e3, 2.0, gravity=(G * math.sin(th), -G * math.cos(th), 0.0))
    ground = 0.05
    x, vol = _block((0.1, 0.05, 0.1), (0.2, ground + 0.025, 0.2), grid)
    model = Model.create(vol, "neo_hookean", colliders=[Plane(point=(0, ground, 0), normal=(0, 1, 0), friction=friction)])
    frames = int(seconds * fps) + 1
    traj = simulate(model, State.at_rest(x), Params.create(2e4, 0.3, 1000.0, 1.0, friction, dtype=F64), cfg, frames, bounds=bounds)
    return float(traj.x[-1, :, 0].mean() - x[:, 0].mean()), grid.dx, seconds, th


@pytest.mark.slow
def test_block_on_tilted_plane_slides_or_sticks():
    # tan(30 deg) = 0.577: friction 0.2 slides, 0.9 sticks
    d_slide, dx, T, th = _slide(0.2)
    analytic = 0.5 * G * (math.sin(th) - 0.2 * math.cos(th)) * T**2
    d_stick, *_ = _slide(0.9)
    d_mid, *_ = _slide(0.4)
    print(f"slide distance: friction 0.2 -> {d_slide:.4f} m (analytic {analytic:.4f}); 0.4 -> {d_mid:.4f}; 0.9 -> {d_stick:.5f}")
    assert d_slide == pytest.approx(analytic, rel=0.15)
    assert abs(d_stick) < 0.5 * dx
    assert d_slide > d_mid > d_stick


def test_damping_is_per_second_not_per_substep():
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), 16)
    x, vol = _block((0.1, 0.1, 0.1), (0.3, 0.5, 0.5), grid)
    model = Model.create(vol, "neo_hookean")
    v0 = torch.tensor([0.4, 0.0, 0.0], dtype=F64)
    finals = []
    base, bounds = _stable(grid, 10.0, 1e3, 1e3, 0.5, gravity=(0, 0, 0))
    for spf in (base.substeps_per_frame, 4 * base.substeps_per_frame):
        cfg = SimConfig(grid=grid, fps=10.0, substeps_per_frame=spf, gravity=(0, 0, 0))
        traj = simulate(model, State.at_rest(x, v0), Params.create(1e3, 0.3, 1000.0, 0.5, 0.0, dtype=F64), cfg, 11, bounds=bounds)
        finals.append(traj.final.v[:, 0].mean().item())
    print(f"velocity after 1 s at damping 0.5/s: {finals} (expected {0.2})")
    for v in finals:
        assert v == pytest.approx(0.5 * 0.4, rel=1e-6)


def test_particles_never_leave_the_grid():
    grid = GridSpec.from_domain((0, 0, 0), (0.5, 0.5, 0.5), 16)
    cfg, bounds = _stable(grid, 30.0, 1e4, 1e3, 4.0)
    x, vol = _block((0.1, 0.1, 0.1), (0.25, 0.25, 0.25), grid)
    model = Model.create(vol, "neo_hookean")  # no colliders: only the walls
    v0 = torch.tensor([3.0, -2.0, 1.5], dtype=F64)  # thrown hard at the walls
    traj = simulate(model, State.at_rest(x, v0), Params.create(1e4, 0.3, 1000.0, 1.0, 0.0, dtype=F64), cfg, 16, bounds=bounds)
    lo, hi = torch.tensor(grid.origin, dtype=F64), torch.tensor(grid.origin, dtype=F64) + (torch.tensor(grid.res) - 1) * grid.dx
    assert (traj.x >= lo + grid.dx).all() and (traj.x <= hi - grid.dx).all()
