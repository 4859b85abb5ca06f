"""The mesh forces' Taichi kernels (``mesh_kernels``) against the torch and scipy reference
(``cloth_forces``), through whole rollouts: values and every gradient in float64."""

import pytest
import torch

from dreamcloth.taichi_mpm import Bounds, GridSpec, ModelBuilder, Params, Plane, Sphere, State, grid_mesh, simulate, stable_config
from dreamcloth.taichi_mpm.solver import Engine

from .cloth_scenes import F64


def _scene(pinned):
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), 12)
    b = ModelBuilder(F64)
    verts, faces = grid_mesh(5, 5, (0.5, 0.5), (0.5, 0.62, 0.5))
    b.add_cloth("sheet", verts, faces, pinned=pinned)
    model, state = b.build([Sphere((0.5, 0.42, 0.5), 0.14, friction=0.3), Plane((0, 0.1, 0), (0, 1, 0), friction=0.3)])
    return grid, model, state


def _rollout(torch_path: bool, pinned, monkeypatch, dtype=F64, frames=4):
    """The loss, its gradients in (bending, drag, density, drag's tangential share, v0) and the trajectory."""
    with monkeypatch.context() as m:
        if torch_path:
            m.setattr(Engine, "_mesh_kernels_apply", lambda self, i: False)
        grid, model, state = _scene(pinned)
        bounds = Bounds((80.0, 120.0), (0.3, 0.3), (0.8, 1.2), max_speed=3.0, shear_stiffness=(150.0, 250.0),
                        normal_stiffness=(150.0, 250.0), min_length=0.1)
        cfg = stable_config(grid, 30.0, bounds, segment_substeps=7)
        leaves = [torch.tensor(v, dtype=F64, requires_grad=True) for v in (5e-3, 1.3, 1.1, 0.4)]
        v0 = torch.tensor([0.1, -1.5, 0.2], dtype=F64, requires_grad=True)
        params = Params.create(100.0, 0.3, leaves[2], 0.6, 0.3, 200.0, 200.0, bending_stiffness=leaves[0],
                               drag_coefficient=leaves[1], drag_tangential=leaves[3], dtype=F64)
        wx = torch.randn(frames, model.num_particles, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
        traj = simulate(model, State(state.x, state.v + v0, state.C, state.F), params, cfg, frames, bounds=bounds)
        loss = (traj.x * wx).sum() + (traj.final.v * wx[0]).sum()
        grads = torch.autograd.grad(loss, [*leaves, v0])
        return traj.x.detach(), torch.stack([g.reshape(-1) for g in grads[:4]]).reshape(-1), grads[4]


@pytest.mark.parametrize("pinned", [(), (0, 4)])
def test_mesh_kernels_equal_the_torch_mesh_forces(pinned, monkeypatch):
    x_k, g_k, gv_k = _rollout(False, pinned, monkeypatch)
    x_t, g_t, gv_t = _rollout(True, pinned, monkeypatch)
    assert float((x_k - x_t).abs().max()) < 1e-11
    assert torch.allclose(g_k, g_t, rtol=1e-8, atol=0), (g_k, g_t)
    assert torch.allclose(gv_k, gv_t, rtol=1e-8, atol=1e-10 * float(gv_t.abs().max())), (gv_k, gv_t)
    assert float(g_t.abs().min()) > 0  # every parameter acts (a zero gradient would compare trivially)
