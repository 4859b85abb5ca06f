"""Mesh colliders (static and animated OBJ sequences) and pinned vertices with prescribed motion."""

import numpy as np
import pytest
import torch
import trimesh

from dreamcloth.taichi_mpm import GridSpec, MeshCollider, ModelBuilder, grid_mesh, simulate, stable_config

from .cloth_scenes import F64, cloth_bounds, cloth_params


def _sphere_frames(tmp_path, centers):
    files = []
    for i, c in enumerate(centers):
        m = trimesh.creation.icosphere(subdivisions=3, radius=0.15)
        m.apply_translation(c)
        f = tmp_path / f"body_{i:03d}.obj"
        m.export(f)
        files.append(str(f))
    return files


def _drape_on(collider, frames=16, substeps=None):
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), 20)
    verts, faces = grid_mesh(8, 8, (0.5, 0.5), (0.5, 0.7, 0.5))
    b = ModelBuilder(F64)
    b.add_cloth("sheet", verts, faces)
    model, state = b.build([collider])
    bounds = cloth_bounds(E=(100.0, 100.0), rho=(1.0, 1.0), shear=(200.0, 200.0), normal=(200.0, 200.0), min_length=0.06, speed=4.0)
    cfg = stable_config(grid, 24.0, bounds)
    with torch.no_grad():
        traj = simulate(model, state, cloth_params(), cfg, frames, bounds=bounds)
    return traj, grid


def test_static_mesh_collider_holds_the_cloth(tmp_path):
    files = _sphere_frames(tmp_path, [(0.5, 0.45, 0.5)])
    traj, grid = _drape_on(MeshCollider.from_files(files, friction=0.3))
    dist = (traj.x[:, :64] - torch.tensor([0.5, 0.45, 0.5], dtype=F64)).norm(dim=-1)
    depth = (0.15 - dist).max(dim=1).values / grid.dx
    print("deepest vertex inside the mesh sphere per frame (cells):", [round(float(d), 2) for d in depth[::3]])
    assert depth.max() < 0.75  # the sampled distance field is accurate to a fraction of a cell
    assert traj.x[-1, :64, 1].max() > 0.55  # resting on top of the sphere, not fallen through


def test_animated_mesh_collider_pushes_the_cloth(tmp_path):
    # the sphere rises 2 cm per frame (0.48 m/s) into the cloth lying above it
    centers = [(0.5, 0.40 + 0.02 * i, 0.5) for i in range(16)]
    collider = MeshCollider.from_files(_sphere_frames(tmp_path, centers), friction=0.3, fps=24.0)
    assert collider.velocity[0] == pytest.approx(0.48, rel=1e-6)
    field = collider.field(GridSpec.from_domain((0, 0, 0), (1, 1, 1), 20), 5)
    assert field.shape[-1] == 7 and np.allclose(field[..., 5][field[..., 0] < 0.02].mean(), 0.48, rtol=0.1)
    traj, _ = _drape_on(collider)
    top = traj.x[:, :64, 1].max(dim=1).values
    static, _ = _drape_on(MeshCollider.from_files(_sphere_frames(tmp_path, centers[:1]), friction=0.3))
    print(f"highest vertex at the end: moving sphere {float(top[-1]):.3f} m, static {float(static.x[-1, :64, 1].max()):.3f} m")
    assert float(top[-1]) > float(static.x[-1, :64, 1].max()) + 0.1


def test_mesh_sequence_must_keep_its_topology(tmp_path):
    a = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    b = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    with pytest.raises(ValueError, match="topology"):
        MeshCollider([a.vertices, b.vertices], a.faces)


def test_pinned_vertices_follow_their_prescribed_motion():
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), 20)
    verts, faces = grid_mesh(6, 6, (0.3, 0.3), (0.5, 0.6, 0.5), rotation_deg=(90.0, 0.0, 0.0))
    top = [int(i) for i in np.argsort(-verts[:, 1])[:6]]
    b = ModelBuilder(F64)
    b.add_cloth("flag", verts, faces, pinned=top, pin_velocity=(0.2, 0.0, 0.0))
    model, state = b.build([])
    bounds = cloth_bounds(E=(100.0, 100.0), rho=(1.0, 1.0), shear=(200.0, 200.0), normal=(200.0, 200.0), min_length=0.05, speed=3.0)
    cfg = stable_config(grid, 24.0, bounds)
    with torch.no_grad():
        traj = simulate(model, state, cloth_params(), cfg, 13, bounds=bounds)
    moved = traj.x[-1, top] - state.x[top]
    assert torch.allclose(moved, torch.tensor([0.1, 0.0, 0.0], dtype=F64).expand_as(moved), atol=1e-9)  # 0.2 m/s for 0.5 s
    free = [i for i in range(36) if i not in top]
    assert (traj.x[-1, free, 0] - state.x[free, 0]).mean() > 0.03  # the rest of the cloth is dragged along
