"""Gradients of whole rollouts: float64 gradcheck, central finite differences over >= 200 substeps,
segmented == unsegmented."""

import dataclasses

import pytest
import torch

from dreamcloth.taichi_mpm import GridSpec, Model, Params, Plane, SimConfig, State, simulate

from .scenes import F64, lattice

# fixed random weights: the loss looks at every frame's positions and deformation gradients
_GEN = torch.Generator().manual_seed(11)


def _block_scene(substeps: int = 25, frames: int = 9, segment=None, n_side: int = 3):
    """A small block thrown onto a tilted plane: contact, friction, damping and elasticity all act."""
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), 12)
    x = lattice(n_side, grid.dx * 0.5, (0.45, 0.3, 0.45))
    vol = torch.full((x.shape[0],), (grid.dx * 0.5) ** 3, dtype=F64)
    plane = Plane(point=(0.5, 0.25, 0.5), normal=(0.25, 1.0, 0.0), friction=0.3)
    model = Model.create(vol, "neo_hookean", colliders=[plane])
    config = SimConfig(grid=grid, fps=40.0, substeps_per_frame=substeps, segment_substeps=segment)
    return model, x, config, frames


def _loss_fn(model, x0, config, frames):
    n = x0.shape[0]
    wx = torch.randn(frames, n, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    wF = torch.randn(frames, n, 3, 3, generator=torch.Generator().manual_seed(2), dtype=F64)

    def loss(E, nu, rho, friction, damping, v0):
        params = Params(E, nu, rho, damping, friction)
        traj = simulate(model, State.at_rest(x0, v0), params, config, frames)
        return (traj.x * wx).sum() + 0.1 * (traj.F * wF).sum()

    return loss


def _base_values():
    return [
        torch.tensor(3e3, dtype=F64),   # young_modulus (Pa)
        torch.tensor(0.3, dtype=F64),   # poisson_ratio
        torch.tensor(800.0, dtype=F64),  # density
        torch.tensor(0.3, dtype=F64),   # friction
        torch.tensor(0.6, dtype=F64),   # damping (fraction kept per second)
        torch.tensor([0.4, -0.5, 0.2], dtype=F64),  # initial velocity (global)
    ]


@pytest.mark.slow
def test_finite_differences_over_200_substeps():
    model, x0, config, frames = _block_scene()
    assert (frames - 1) * config.substeps_per_frame >= 200
    loss = _loss_fn(model, x0, config, frames)
    values = [v.clone().requires_grad_(True) for v in _base_values()]
    L = loss(*values)
    grads = torch.autograd.grad(L, values)
    names = ["young_modulus", "poisson_ratio", "density", "friction", "damping", "v0.x", "v0.y", "v0.z"]
    checks = []
    with torch.no_grad():
        for i, base in enumerate(_base_values()):
            for k in range(base.numel()):
                h = 1e-6 * max(abs(float(base.reshape(-1)[k])), 1e-2)
                plus, minus = [v.clone() for v in _base_values()], [v.clone() for v in _base_values()]
                plus[i].reshape(-1)[k] += h
                minus[i].reshape(-1)[k] -= h
                fd = (loss(*plus) - loss(*minus)) / (2 * h)
                checks.append((float(fd), float(grads[i].reshape(-1)[k])))
    report = []
    for name, (fd, ad) in zip(names, checks):
        rel = abs(ad - fd) / max(abs(fd), 1e-300)
        report.append(f"{name}: autodiff {ad:+.6e}  finite diff {fd:+.6e}  rel {rel:.2e}")
    print("\n".join(report))
    for name, (fd, ad) in zip(names, checks):
        assert fd != 0.0, f"{name}: the scene does not depend on it"
        assert (fd > 0) == (ad > 0), f"{name}: sign differs (autodiff {ad:.4g}, finite diff {fd:.4g})"
        assert abs(ad - fd) <= 0.01 * abs(fd), f"{name}: autodiff {ad:.6g} vs finite diff {fd:.6g}"


@pytest.mark.parametrize("flip", [0.0, 0.95])
def test_gradcheck_tiny_rollout(flip):
    """float64 gradcheck of simulate over 3 segments (positions, velocity and every material scalar),
    APIC and a PIC/FLIP blend."""
    model, x0, config, _ = _block_scene(substeps=2, frames=4, segment=2, n_side=2)
    config = dataclasses.replace(config, fps=200.0, flip=flip)
    x0 = x0 + torch.tensor([0.0, -0.03, 0.0], dtype=F64)  # touching the plane: friction matters

    def fn(x, v, E, nu, rho, friction, damping):
        traj = simulate(model, State.at_rest(x, v), Params(E, nu, rho, damping, friction), config, 4)
        return traj.x, traj.F, traj.final.v

    inputs = [x0.clone(), torch.randn(x0.shape[0], 3, generator=torch.Generator().manual_seed(5), dtype=F64)]
    inputs += [v.clone() for v in _base_values()[:5]]
    inputs = [t.requires_grad_(True) for t in inputs]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("flip", [0.0, 0.95])
def test_segmented_equals_unsegmented(flip):
    model, x0, config, frames = _block_scene(substeps=10, frames=7)
    config = dataclasses.replace(config, flip=flip)
    results = []
    for seg in (1, 7, None, 60):  # one substep per segment, uneven segments, sqrt(T), one segment
        cfg = dataclasses.replace(config, segment_substeps=seg)
        lf = _loss_fn(model, x0, cfg, frames)
        values = [v.clone().requires_grad_(True) for v in _base_values()]
        L = lf(*values)
        results.append((float(L.detach()), [g.clone() for g in torch.autograd.grad(L, values)]))
    L0, g0 = results[0]
    for L, g in results[1:]:
        assert L == pytest.approx(L0, rel=1e-13, abs=1e-12)
        for a, b in zip(g, g0):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (a, b)


def test_gradcheck_deformation_control():
    """Per-particle F controls (shape morphing) get exact gradients through later substeps."""
    model, x0, config, _ = _block_scene(substeps=2, frames=4, n_side=2)
    config = dataclasses.replace(config, fps=200.0)
    n = x0.shape[0]
    params = Params(*[v.clone() for v in _base_values()[:3]], _base_values()[4], _base_values()[3])

    def fn(control):
        traj = simulate(model, State.at_rest(x0), params, config, 4, control=control, control_stride=2)
        return traj.x, traj.final.F

    gen = torch.Generator().manual_seed(9)
    control = torch.eye(3, dtype=F64) + 0.05 * torch.randn(3, n, 3, 3, generator=gen, dtype=F64)
    assert torch.autograd.gradcheck(fn, [control.requires_grad_(True)], eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
