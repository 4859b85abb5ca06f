"""Small cloth scenes shared by the cloth tests."""

from __future__ import annotations

import torch

from dreamcloth.taichi_mpm import Bounds, GridSpec, ModelBuilder, Params, Plane, Sphere, grid_mesh, stable_config

F64 = torch.float64


def drape_scene(n: int = 6, res: int = 16, dtype=F64, friction=0.3, size=0.5, height=0.62, device="cpu"):
    """An n x n cloth falling onto a sphere above the ground."""
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), res)
    b = ModelBuilder(dtype, device)
    verts, faces = grid_mesh(n, n, (size, size), (0.5, height, 0.5))
    b.add_cloth("sheet", verts, faces)
    sphere = Sphere((0.5, 0.42, 0.5), 0.14, friction=friction)
    model, state = b.build([sphere, Plane((0, 0.1, 0), (0, 1, 0), friction=friction)])
    return grid, model, state, faces


def cloth_params(E=100.0, nu=0.3, rho=1.0, damping=0.6, friction=0.3, shear=200.0, normal=200.0, dtype=F64, **overrides):
    values = dict(young_modulus=E, poisson_ratio=nu, density=rho, damping=damping, friction=friction,
                  shear_stiffness=shear, normal_stiffness=normal)
    values.update(overrides)
    return Params.create(**values, dtype=dtype)


def cloth_bounds(E=(10.0, 500.0), rho=(0.1, 5.0), shear=(100.0, 1000.0), normal=(100.0, 1000.0), speed=3.0, min_length=0.05):
    return Bounds(E, (0.1, 0.49), rho, max_speed=speed, shear_stiffness=shear, normal_stiffness=normal, min_length=min_length)


def config_for(grid, fps, bounds, **kw):
    return stable_config(grid, fps, bounds, **kw)


def scalar_central_differences(loss, base: dict[str, float], step: float = 1e-6) -> dict[str, float]:
    """d loss / d value for each named scalar of ``base`` by central differences of relative ``step``
    (``loss(**values)`` -> scalar tensor; float64)."""
    out = {}
    with torch.no_grad():
        for k, v in base.items():
            h = step * v
            plus, minus = dict(base), dict(base)
            plus[k] += h
            minus[k] -= h
            out[k] = float((loss(**plus) - loss(**minus)) / (2 * h))
    return out


def assert_gradients_match(rows, tol: float = 0.05) -> None:
    """``rows`` of (name, autodiff, finite difference): same sign, within ``tol`` relative."""
    for name, ad, fd in rows:
        print(f"{name:12s} autodiff {ad:+.8e}  finite diff {fd:+.8e}  rel {abs(ad - fd) / abs(fd):.1e}")
        assert fd != 0.0 and (ad > 0) == (fd > 0), name
        assert abs(ad - fd) <= tol * abs(fd), f"{name}: autodiff {ad:.6g} vs finite diff {fd:.6g}"
