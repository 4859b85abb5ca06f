"""Two-sided cloth: each Gaussian shows the side facing the camera, with exact gradients."""

import math

import pytest
import torch

from dreamcloth.render import Camera, cloth_gaussians, front_facing, rasterize, two_sided_colors

from .conftest import grid_faces

F64 = torch.float64
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


def _square(n=5, size=0.6, dtype=F64):
    """An n x n vertex square in the z = 0 plane; its triangles wind counter-clockwise seen from +z."""
    t = torch.linspace(-size / 2, size / 2, n, dtype=dtype)
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    verts = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.zeros(n * n, dtype=dtype)], -1)
    return verts, grid_faces(n)


def _centre_colour(verts, faces, camera):
    g = cloth_gaussians(verts, faces, per_triangle=4, thickness=1e-3, in_plane_scale=2.0)
    m = g.means.shape[0]
    front = torch.tensor(RED, dtype=verts.dtype).expand(m, 3)
    back = torch.tensor(BLUE, dtype=verts.dtype).expand(m, 3)
    colors = two_sided_colors(front, back, g.normals, g.means, camera)
    out = rasterize(g.means, g.covariances, colors.contiguous(), torch.full((m,), 0.95, dtype=verts.dtype), camera,
                    background=(1.0, 1.0, 1.0), backend="portable")
    return out.color[:, camera.height // 2, camera.width // 2]


def test_flipped_cloth_shows_its_back_colour():
    verts, faces = _square()
    cam = Camera(eye=(0.1, 0.2, 2.0), look_at=(0.0, 0.0, 0.0), width=32, height=32)
    red, blue = torch.tensor(RED, dtype=F64), torch.tensor(BLUE, dtype=F64)
    assert torch.allclose(_centre_colour(verts, faces, cam), red, atol=0.02)
    # Turned over (rotated half a turn about y): the camera sees the back.
    turned = verts * torch.tensor([-1.0, 1.0, -1.0], dtype=F64)
    assert torch.allclose(_centre_colour(turned, faces, cam), blue, atol=0.02)
    # The same sheet seen from behind.
    behind = Camera(eye=(0.1, 0.2, -2.0), look_at=(0.0, 0.0, 0.0), width=32, height=32)
    assert torch.allclose(_centre_colour(verts, faces, behind), blue, atol=0.02)


def test_front_facing_is_a_sharp_smooth_switch():
    cam = Camera(eye=(0.0, 0.0, 5.0), look_at=(0.0, 0.0, 0.0))
    angles = torch.tensor([-90.0, -15.0, -5.0, 0.0, 5.0, 15.0, 90.0], dtype=F64)  # tilt away from edge-on
    rad = torch.deg2rad(angles)
    normals = torch.stack([torch.cos(rad), torch.zeros_like(rad), torch.sin(rad)], -1)  # cos to camera = sin(angle)
    w = front_facing(normals, torch.zeros(7, 3, dtype=F64), cam)
    assert w[3] == pytest.approx(0.5)
    assert bool((w[1:] > w[:-1]).all())  # monotone in the angle
    assert w[5] > 0.99 and w[1] < 0.01 and w[6] > 1 - 1e-9
    assert torch.allclose(w + w.flip(0), torch.ones(7, dtype=F64))  # front and back are symmetric
    with pytest.raises(ValueError, match="sharpness"):
        front_facing(normals, torch.zeros(7, 3, dtype=F64), cam, sharpness=0.0)


def test_two_sided_colors_gradcheck_through_the_geometry():
    verts, faces = _square(n=3, size=0.5)
    gen = torch.Generator().manual_seed(4)
    # Tilted close to edge-on, so the blend is in its transition where its gradient is large.
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(1.45), -math.sin(1.45)], [0.0, math.sin(1.45), math.cos(1.45)]], dtype=F64)
    verts = (verts @ rot.T + 0.02 * torch.randn(verts.shape, generator=gen, dtype=F64)).requires_grad_()
    cam = Camera(eye=(0.2, 0.3, 2.0), look_at=(0.0, 0.0, 0.0))
    m = faces.shape[0] * 4
    front = torch.rand(m, 3, generator=gen, dtype=F64).requires_grad_()
    back = torch.rand(m, 3, generator=gen, dtype=F64).requires_grad_()

    def fn(v, f, b):
        g = cloth_gaussians(v, faces, per_triangle=4)
        return two_sided_colors(f, b, g.normals, g.means, cam)

    with torch.no_grad():
        g = cloth_gaussians(verts, faces, per_triangle=4)
        w = front_facing(g.normals, g.means, cam)
    assert bool(((w > 0.05) & (w < 0.95)).any())  # the test exercises the transition
    assert torch.autograd.gradcheck(fn, (verts, front, back))
