"""Crisp cloth silhouettes: the splatted silhouette (alpha >= SILHOUETTE_ALPHA) against an exact
rasterization of the same mesh, and the gradient of the correction that makes them agree."""

import math

import pytest
import torch

from dreamcloth.render import SILHOUETTE_ALPHA, Camera, cloth_gaussians, cloth_sampling, cuda_backend_available, rasterize
from dreamcloth.render._torch_ref import rasterize_mesh_reference

from .conftest import grid_faces

F64 = torch.float64


def _sheet(n: int, size: float, dtype=F64):
    """A flat n x n vertex square of side ``size`` in the y = 0 plane, centred at the origin."""
    t = torch.linspace(-size / 2, size / 2, n, dtype=dtype)
    zs, xs = torch.meshgrid(t, t, indexing="ij")
    verts = torch.stack([xs.reshape(-1), torch.zeros(n * n, dtype=dtype), zs.reshape(-1)], -1)
    return verts, grid_faces(n)


def _camera(elevation_deg: float, yaw_deg: float = 0.0, distance: float = 1.6) -> Camera:
    e, y = math.radians(elevation_deg), math.radians(yaw_deg)
    eye = (distance * math.cos(e) * math.sin(y), distance * math.sin(e), distance * math.cos(e) * math.cos(y))
    return Camera(eye=eye, look_at=(0.0, 0.0, 0.0), fov_y_deg=45.0, width=128, height=128)


def _compare(verts, faces, camera, crisp=True, backend="portable", device="cpu"):
    """(IoU, symmetric difference / projected perimeter in px) of the splatted vs the exact silhouette.

    The cloth is rendered the way the fit renders it: 4 Gaussians per triangle, thickness 2 mm,
    in-plane scale 2, opacity 0.95, float32, portable backend.
    """
    sampling = cloth_sampling(faces, 4)
    g = cloth_gaussians(verts.float(), faces, thickness=2e-3, sampling=sampling, in_plane_scale=2.0,
                        camera=camera if crisp else None, opacity=0.95)
    m = g.means.shape[0]
    out = rasterize(g.means.to(device), g.covariances.to(device), torch.full((m, 3), 0.5, device=device),
                    torch.full((m,), 0.95, device=device), camera, backend=backend)
    splat = out.alpha[0].cpu() >= SILHOUETTE_ALPHA
    exact = rasterize_mesh_reference(verts, faces, camera)
    iou = float((splat & exact).sum()) / float((splat | exact).sum())
    uv = camera.project(camera.to_camera(verts))
    be = sampling.boundary_edges
    perimeter = float((uv[be[:, 1]] - uv[be[:, 0]]).norm(dim=-1).sum())
    return iou, float((splat ^ exact).sum()) / perimeter


def test_exact_rasterizer_counts_pixel_centres(ray_point):
    cam = Camera(eye=(0.0, 0.0, 3.0), look_at=(0.0, 0.0, 0.0), width=48, height=40)
    corners = [(10.5, 10.5), (30.5, 10.5), (10.5, 30.5)]
    verts = torch.stack([ray_point(cam, u, v, 2.0) for u, v in corners])
    mask = rasterize_mesh_reference(verts, torch.tensor([[0, 1, 2]]), cam)
    # Centres (u, v) with u, v >= 11 and (u - 10.5) + (v - 10.5) <= 20, i.e. u + v <= 41.
    expected = sum(1 for u in range(11, 31) for v in range(11, 31) if u + v <= 41)
    assert int(mask.sum()) == expected
    assert bool(mask[11, 11]) and bool(mask[20, 21]) and not bool(mask[21, 21]) and not bool(mask[10, 15])
    # Winding does not matter.
    assert torch.equal(rasterize_mesh_reference(verts, torch.tensor([[0, 2, 1]]), cam), mask)


@pytest.mark.parametrize("elevation", [20, 40, 60])
@pytest.mark.parametrize("size, yaw", [(0.5, 0.0), (1.0, 0.0), (1.0, 30.0)])
def test_flat_cloth_silhouette_matches_exact_rasterization(elevation, size, yaw):
    verts, faces = _sheet(41, size)
    iou, boundary_px = _compare(verts, faces, _camera(elevation, yaw))
    assert iou >= 0.98, iou
    assert boundary_px <= 0.5, boundary_px


_GPU_BACKENDS = [
    pytest.param("portable", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
    pytest.param("cuda", marks=pytest.mark.skipif(not cuda_backend_available("cuda")[0],
                                                  reason=f"CUDA rasterizer: {cuda_backend_available('cuda')[1]}")),
]


@pytest.mark.parametrize("backend", _GPU_BACKENDS)
@pytest.mark.parametrize("elevation", [20, 60])
def test_flat_cloth_silhouette_on_the_gpu(backend, elevation):
    """The same figure with CUDA tensors: the portable backend on Taichi's CUDA arch, and the
    official 3DGS rasterizer."""
    verts, faces = _sheet(41, 1.0)
    iou, boundary_px = _compare(verts, faces, _camera(elevation, 30.0), backend=backend, device="cuda")
    print(f"{backend} on CUDA, elevation {elevation}: IoU {iou:.4f}, {boundary_px:.3f} px per boundary px")
    assert iou >= 0.98, iou
    assert boundary_px <= 0.5, boundary_px


def test_uncorrected_silhouette_is_too_wide():
    # What the correction fixes: without the camera, the splats' tails cover ~10% more pixels.
    verts, faces = _sheet(41, 1.0)
    iou, boundary_px = _compare(verts, faces, _camera(20), crisp=False)
    assert iou < 0.95 and boundary_px > 0.6, (iou, boundary_px)


def test_correction_moves_only_boundary_rows_inward():
    verts, faces = _sheet(21, 1.0)
    cam = _camera(30)
    plain = cloth_gaussians(verts, faces, per_triangle=4)
    crisp = cloth_gaussians(verts, faces, per_triangle=4, camera=cam)
    moved = (crisp.means - plain.means).norm(dim=-1) > 1e-12
    # Only Gaussians near the edge move, never outward, and the sheet stays in its plane.
    radius = plain.means[:, [0, 2]].abs().amax(-1)
    assert bool(moved.any()) and bool((radius[moved] > 0.5 - 9 * 0.05).all())
    assert bool((crisp.means[:, [0, 2]].abs().amax(-1) <= radius + 1e-12).all())
    assert torch.allclose(crisp.means[:, 1], torch.zeros_like(crisp.means[:, 1]))
    sampling = cloth_sampling(faces, 1)
    assert int((sampling.ring == 0).sum()) == 4 * 20  # the square's boundary vertices


def test_crisp_cloth_gaussians_gradcheck():
    verts, faces = _sheet(4, 0.6)
    gen = torch.Generator().manual_seed(3)
    verts = (verts + 0.02 * torch.randn(verts.shape, generator=gen, dtype=F64)).requires_grad_()
    # Far enough that the splats are about a pixel: the inset is large there (several rows share it).
    cam = Camera(eye=(0.2, 1.2, 3.5), look_at=(0.0, 0.0, 0.0), fov_y_deg=30.0, width=40, height=32)

    m = faces.shape[0] * 4
    # A few random projections of the outputs: gradcheck then needs a few backward passes, not one
    # per output entry, and every entry still enters the check.
    mix_means = torch.randn(4, m, 3, generator=gen, dtype=F64)
    mix_covs = torch.randn(4, m, 3, 3, generator=gen, dtype=F64)

    def fn(v):
        g = cloth_gaussians(v, faces, per_triangle=4, thickness=0.01, in_plane_scale=2.0, camera=cam)
        return (mix_means * g.means).sum((1, 2)), (mix_covs * g.covariances).sum((1, 2, 3))

    plain = cloth_gaussians(verts, faces, per_triangle=4, thickness=0.01, in_plane_scale=2.0)
    crisp = cloth_gaussians(verts, faces, per_triangle=4, thickness=0.01, in_plane_scale=2.0, camera=cam)
    assert (crisp.means - plain.means).abs().max() > 1e-3  # the correction is active
    assert torch.autograd.gradcheck(fn, (verts,))


def test_unused_vertices_and_meshes_without_boundary():
    verts, faces = _sheet(5, 0.6)
    cam = _camera(40)
    extra = torch.cat([verts, torch.tensor([[5.0, 5.0, 5.0]], dtype=F64)])  # a vertex no face uses
    a = cloth_gaussians(verts, faces, per_triangle=4, camera=cam)
    b = cloth_gaussians(extra, faces, per_triangle=4, camera=cam)
    assert torch.equal(a.means, b.means) and torch.equal(a.covariances, b.covariances)
    # A closed surface (tetrahedron) has no silhouette edge to move: the camera changes nothing.
    tet = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 0.3]], dtype=F64)
    tet_faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    assert cloth_sampling(tet_faces).boundary_edges.shape == (0, 4)
    assert torch.equal(cloth_gaussians(tet, tet_faces, camera=cam).means, cloth_gaussians(tet, tet_faces).means)
