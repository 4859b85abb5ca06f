"""The simulator on CUDA: float32 rollouts and gradients against the CPU's float64 ones.

The CUDA tests are skipped without CUDA (CI has none); they ran on an H200 on 2026-12-04.  The
tensors' device picks Taichi's arch (``runtime.ensure``), so each comparison re-initialises Taichi.
The reference is float64 on the CPU: on that machine's own CPU (an Intel Xeon, torch 2.11, Python
3.12) the float32 CPU gradients of the drape were NaN while CUDA's were finite - see the note of
that session - so a float32 CPU reference would test the wrong thing there.
"""

import pytest
import torch

from dreamcloth.taichi_mpm import GridSpec, Model, Params, Plane, SimConfig, State, runtime, simulate, stable_config

from .cloth_scenes import cloth_bounds, cloth_params, drape_scene
from .scenes import lattice

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CLOTH = dict(young_modulus=100.0, density=1.0, damping=0.5, bending_stiffness=2e-5, drag_coefficient=1.2)


def _cloth_run(device, dtype, frames=6):
    grid, model, state, _ = drape_scene(n=8, res=16, dtype=dtype, device=device)
    bounds = cloth_bounds()
    cfg = stable_config(grid, 24.0, bounds)
    wx = torch.randn(frames, model.num_particles, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    leaves = {k: torch.tensor(v, dtype=dtype, device=device, requires_grad=True) for k, v in CLOTH.items()}
    params = cloth_params(dtype=dtype, device=device, E=leaves["young_modulus"], rho=leaves["density"],
                          damping=leaves["damping"], bending_stiffness=leaves["bending_stiffness"],
                          drag_coefficient=leaves["drag_coefficient"])
    traj = simulate(model, state, params, cfg, frames, bounds=bounds)
    assert traj.x.device.type == torch.device(device).type
    loss = (traj.x * wx.to(device, dtype)).sum()
    loss.backward()
    return traj.x.detach().cpu().double(), torch.stack([leaves[k].grad for k in CLOTH]).cpu().double()


def _relative(a, b):
    return ((a - b).abs() / b.abs()).tolist()


@needs_cuda
def test_cloth_rollout_and_gradients_on_cuda_match_the_cpu():
    """Measured 2026-12-04 (H200): the float32 CUDA drape within 5.5e-6 m of a float32 CPU one, its
    five parameter gradients within 2e-3 of the CPU's.  float32 against float64 on the CPU (this
    project's machine): 8e-6 m, gradients within 1.9% (damping; contact amplifies round-off)."""
    x_ref, g_ref = _cloth_run("cpu", torch.float64)
    x_g, g_g = _cloth_run("cuda", torch.float32)
    assert torch.isfinite(x_g).all() and torch.isfinite(g_g).all()
    dx = float((x_g - x_ref).abs().max())
    rel = _relative(g_g, g_ref)
    print(f"max |x_cuda32 - x_cpu64| {dx:.3e} m; gradient relative differences {[f'{r:.2e}' for r in rel]}")
    assert dx < 1e-4
    assert max(rel) < 5e-2, rel


def _block_run(device, dtype):
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), 12)
    x = lattice(4, grid.dx * 0.5, (0.45, 0.3, 0.45), dtype=dtype).to(device)
    vol = torch.full((x.shape[0],), (grid.dx * 0.5) ** 3, dtype=dtype, device=device)
    model = Model.create(vol, "neo_hookean", colliders=[Plane(point=(0.5, 0.25, 0.5), normal=(0.25, 1.0, 0.0), friction=0.3)])
    config = SimConfig(grid=grid, fps=40.0, substeps_per_frame=25)
    values = [torch.tensor(v, dtype=dtype, device=device, requires_grad=True) for v in (3e3, 0.3, 800.0, 0.6, 0.3)]
    v0 = torch.tensor([0.4, -0.5, 0.2], dtype=dtype, device=device)
    traj = simulate(model, State.at_rest(x, v0), Params(*values), config, 8)
    w = torch.randn(traj.x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device, dtype)
    (traj.x * w).sum().backward()
    return traj.x.detach().cpu().double(), torch.stack([v.grad for v in values]).cpu().double()


@needs_cuda
def test_solid_block_on_cuda_matches_the_cpu():
    x_ref, g_ref = _block_run("cpu", torch.float64)
    x_g, g_g = _block_run("cuda", torch.float32)
    dx = float((x_g - x_ref).abs().max())
    rel = _relative(g_g, g_ref)
    print(f"block: max |x_cuda32 - x_cpu64| {dx:.3e} m; gradient relative differences {[f'{r:.2e}' for r in rel]}")
    assert dx < 1e-4
    assert max(rel) < 1e-2, rel


def test_float64_on_cuda_is_refused_with_a_clear_error():
    """float64 rollouts on CUDA faulted (misaligned address) in Taichi 1.7.4's CUDA backend and
    poisoned the process's CUDA context; the runtime refuses them before any kernel runs."""
    with pytest.raises(ValueError, match="float64 simulation on CUDA is not supported.*float32 on CUDA"):
        runtime.config_for("cuda", torch.float64)
    assert runtime.config_for("cuda", torch.float32).arch == "cuda"
    assert runtime.config_for("cpu", torch.float64).precision == "f64"
