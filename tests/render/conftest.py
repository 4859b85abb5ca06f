"""Random scenes for the render tests: hard cases on purpose (behind the camera, at the border, degenerate)."""

import pytest
import torch

from dreamcloth.render import Camera

#: Cameras with sizes that are not multiples of the 16-pixel tile, various aspects and fields of view.
CAMERAS = [
    Camera(eye=(0.3, 0.2, 3.0), look_at=(0.0, 0.0, 0.0), width=70, height=45, fov_y_deg=40.0),
    Camera(eye=(-2.0, 1.5, -1.5), look_at=(0.1, -0.1, 0.2), up=(0.0, 1.0, 0.0), width=33, height=64, fov_y_deg=60.0),
    Camera(eye=(0.0, 3.0, 0.01), look_at=(0.0, 0.0, 0.0), up=(0.0, 0.0, -1.0), width=48, height=48, fov_y_deg=30.0),
]


def _random_rotations(n, gen, dtype):
    q = torch.randn(n, 3, 3, generator=gen, dtype=torch.float64)
    rot, _ = torch.linalg.qr(q)
    return rot.to(dtype)


def make_scene(camera: Camera, n: int = 400, seed: int = 0, dtype=torch.float64):
    """``(means, covariances, colors, opacities)`` around the camera's target, with hard cases mixed in.

    - most Gaussians in a 1.6 m cube around ``look_at``, anisotropic sizes of 0.5-3 px;
    - ~5% behind the camera or inside the near-cull distance (view z in [-1, 0.35]);
    - ~5% around the image border (partly visible) and beyond it;
    - ~10% nearly degenerate: needles (one axis ~1e-6 of the others) and flat discs, some edge-on.
    """
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    target = torch.tensor(camera.look_at, dtype=f64)
    means = target + (torch.rand(n, 3, generator=gen, dtype=f64) - 0.5) * 1.6
    rot = camera.rotation(f64)
    eye = torch.tensor(camera.eye, dtype=f64)
    dist = float((target - eye).norm())
    k = max(1, n // 20)
    # Behind the camera / at the near cull: view z from -1 to 0.35.
    cam_pts = torch.stack(
        [
            (torch.rand(k, generator=gen, dtype=f64) - 0.5) * 0.4,
            (torch.rand(k, generator=gen, dtype=f64) - 0.5) * 0.4,
            torch.rand(k, generator=gen, dtype=f64) * 1.35 - 1.0,
        ],
        -1,
    )
    means[:k] = cam_pts @ rot + eye  # camera -> world (rot is orthonormal)
    # Around the border: view directions at 0.8-1.5x the half field of view.
    tx, ty = camera.tan_half_fov_x, camera.tan_half_fov_y
    z = dist * (0.8 + 0.4 * torch.rand(k, generator=gen, dtype=f64))
    sx = torch.where(torch.rand(k, generator=gen) < 0.5, -1.0, 1.0).to(f64)
    u = (0.8 + 0.7 * torch.rand(k, generator=gen, dtype=f64)) * tx * sx
    v = (torch.rand(k, generator=gen, dtype=f64) * 2 - 1) * ty
    means[k : 2 * k] = torch.stack([u * z, v * z, z], -1) @ rot + eye

    # Sizes: 0.5-3 pixels (standard deviation) at the target distance.
    pixel = dist * 2 * ty / camera.height
    scales = pixel * (0.5 + 2.5 * torch.rand(n, 3, generator=gen, dtype=f64))
    # Near-plane Gaussians keep their on-screen size instead of flooding the image.
    scales[:k] *= (cam_pts[:, 2].abs() / dist).clamp(min=0.05)[:, None]
    d = 2 * k
    scales[d : d + k, 1:] *= 1e-6  # needles
    scales[d + k : d + 2 * k, 2] *= 1e-6  # flat discs (cloth-like), random orientation: some edge-on
    rots = _random_rotations(n, gen, f64)
    cov = rots @ torch.diag_embed(scales**2) @ rots.transpose(-1, -2)
    colors = torch.rand(n, 3, generator=gen, dtype=f64)
    opacities = 0.05 + 0.93 * torch.rand(n, generator=gen, dtype=f64)
    return tuple(t.to(dtype).contiguous() for t in (means, cov, colors, opacities))


@pytest.fixture
def scene_factory():
    return make_scene


@pytest.fixture(params=range(len(CAMERAS)), ids=[f"cam{i}" for i in range(len(CAMERAS))])
def camera(request):
    return CAMERAS[request.param]


def pixel_centre_ray(camera: Camera, u: float, v: float, depth: float) -> torch.Tensor:
    """The world point at view depth ``depth`` that projects to pixel ``(u, v)``."""
    cx, cy = camera.principal_point
    x = (u - cx) / camera.focal_x * depth
    y = (v - cy) / camera.focal_y * depth
    rot = camera.rotation(torch.float64)
    eye = torch.tensor(camera.eye, dtype=torch.float64)
    return torch.tensor([x, y, depth], dtype=torch.float64) @ rot + eye


@pytest.fixture
def ray_point():
    return pixel_centre_ray


def grid_faces(n: int) -> torch.Tensor:
    """The ``2 (n-1)^2`` triangles ``[F, 3]`` of an n x n vertex grid numbered row by row; each
    quad's two triangles wind the same way (counter-clockwise with rows along +y and columns along +x)."""
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            faces += [[a, b, c], [b, d, c]]
    return torch.tensor(faces)
