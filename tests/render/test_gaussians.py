import pytest
import torch

from dreamcloth.render import cloth_gaussians, cloth_sampling, solid_gaussians

from .conftest import grid_faces

F64 = torch.float64


def _grid(n=3, dtype=F64):
    """An n x n vertex grid on the unit square (z = 0) and its 2 (n-1)^2 triangles."""
    ys, xs = torch.meshgrid(torch.arange(n, dtype=dtype), torch.arange(n, dtype=dtype), indexing="ij")
    verts = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.zeros(n * n, dtype=dtype)], -1) / (n - 1)
    return verts, grid_faces(n)


@pytest.mark.parametrize("per_triangle", [1, 4, 9, 16])
def test_cloth_sampling_tiles_each_triangle_evenly(per_triangle):
    s = cloth_sampling(torch.tensor([[0, 1, 2]]), per_triangle)
    assert s.num_gaussians == per_triangle
    assert torch.allclose(s.barycentric.sum(-1), torch.ones(per_triangle, dtype=F64))
    assert (s.barycentric > 0).all()
    # The centroids of the n^2 congruent sub-triangles average to the triangle's centroid.
    assert torch.allclose(s.barycentric.mean(0), torch.full((3,), 1 / 3, dtype=F64))
    assert len({tuple(round(v, 9) for v in row) for row in s.barycentric.tolist()}) == per_triangle


def test_cloth_gaussians_shapes_and_moments_of_flat_sheet():
    verts, faces = _grid(3)
    g = cloth_gaussians(verts, faces, per_triangle=4, thickness=1e-3)
    m = faces.shape[0] * 4
    assert g.means.shape == (m, 3) and g.covariances.shape == (m, 3, 3)
    assert torch.equal(g.sampling.face_index, torch.arange(faces.shape[0]).repeat_interleave(4))
    # The sub-triangle Gaussians carry the sheet's area moments: the mixture of all of them has the
    # mean and the second moment of a uniform density on the unit square.
    mixture_mean = g.means.mean(0)
    assert torch.allclose(mixture_mean[:2], torch.tensor([0.5, 0.5], dtype=F64))
    centred = g.means - mixture_mean
    second = (g.covariances + centred[:, :, None] * centred[:, None, :]).mean(0)
    assert torch.allclose(second[:2, :2], torch.eye(2, dtype=F64) / 12, atol=1e-12)
    # Thin along the normal (z): exactly thickness^2.
    assert torch.allclose(g.covariances[:, 2, 2], torch.full((m,), 1e-6, dtype=F64))
    assert torch.allclose(g.covariances[:, :2, 2], torch.zeros(m, 2, dtype=F64))


def test_cloth_covariance_symmetric_psd_and_follows_deformation():
    verts, faces = _grid(4)
    gen = torch.Generator().manual_seed(0)
    deformed = verts + 0.1 * torch.randn(verts.shape, generator=gen, dtype=F64)
    g = cloth_gaussians(deformed, faces, per_triangle=9, thickness=2e-3)
    cov = g.covariances
    assert torch.allclose(cov, cov.transpose(-1, -2))
    eig = torch.linalg.eigvalsh(cov)
    assert (eig > 0).all()
    # The smallest axis is the normal with variance thickness^2; the normal is orthogonal to the edges.
    assert torch.allclose(eig[:, 0], torch.full_like(eig[:, 0], 4e-6), rtol=1e-6)
    # Means are barycentric combinations of the deformed vertices.
    f = faces[g.sampling.face_index]
    expect = (g.sampling.barycentric[:, :, None] * deformed[f]).sum(1)
    assert torch.allclose(g.means, expect)
    # Stretching the sheet 2x along x stretches the in-plane variance along x by 4.
    stretched = verts * torch.tensor([2.0, 1.0, 1.0], dtype=F64)
    g0 = cloth_gaussians(verts, faces, per_triangle=1)
    g2 = cloth_gaussians(stretched, faces, per_triangle=1)
    assert torch.allclose(g2.covariances[:, 0, 0], 4 * g0.covariances[:, 0, 0])
    assert torch.allclose(g2.covariances[:, 1, 1], g0.covariances[:, 1, 1])


def test_in_plane_scale_widens_only_in_plane():
    verts, faces = _grid(3)
    g1 = cloth_gaussians(verts, faces, per_triangle=4, thickness=1e-3)
    g2 = cloth_gaussians(verts, faces, per_triangle=4, thickness=1e-3, in_plane_scale=2.0)
    assert torch.allclose(g2.covariances[:, :2, :2], 2 * g1.covariances[:, :2, :2])
    assert torch.allclose(g2.covariances[:, 2, 2], g1.covariances[:, 2, 2])
    assert torch.equal(g2.means, g1.means)


def test_interpolate_per_vertex_values():
    verts, faces = _grid(3)
    g = cloth_gaussians(verts, faces, per_triangle=4)
    # Interpolating the positions themselves gives back the means.
    assert torch.allclose(g.sampling.interpolate(verts), g.means)
    values = torch.arange(9, dtype=torch.float32)[:, None].repeat(1, 3)
    assert g.sampling.interpolate(values).shape == (g.means.shape[0], 3)


def test_cloth_gaussians_gradcheck():
    verts, faces = _grid(3)
    gen = torch.Generator().manual_seed(1)
    verts = (verts + 0.05 * torch.randn(verts.shape, generator=gen, dtype=F64)).requires_grad_()

    def fn(v):
        g = cloth_gaussians(v, faces, per_triangle=4, thickness=0.01)
        return g.means, g.covariances

    assert torch.autograd.gradcheck(fn, (verts,))


def test_degenerate_triangle_stays_finite_with_finite_gradient():
    verts = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=F64, requires_grad=True)  # collinear
    g = cloth_gaussians(verts, torch.tensor([[0, 1, 2]]), per_triangle=1)
    assert torch.isfinite(g.covariances).all()
    g.covariances.sum().backward()
    assert torch.isfinite(verts.grad).all()


def test_solid_gaussians_psd_and_gradcheck():
    gen = torch.Generator().manual_seed(2)
    n = 5
    x = torch.randn(n, 3, generator=gen, dtype=F64, requires_grad=True)
    F = (torch.eye(3, dtype=F64) + 0.3 * torch.randn(n, 3, 3, generator=gen, dtype=F64)).requires_grad_()
    g = solid_gaussians(x, F, 0.01)
    assert g.means is x and g.covariances.shape == (n, 3, 3)
    assert torch.allclose(g.covariances, g.covariances.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(g.covariances) > 0).all()
    # Identity deformation gives back the rest covariance; a stretch by 3 along y scales y-variance by 9.
    rest = solid_gaussians(x, torch.eye(3, dtype=F64).expand(n, 3, 3), 0.01).covariances
    assert torch.allclose(rest, 1e-4 * torch.eye(3, dtype=F64).expand(n, 3, 3))
    stretch = torch.diag(torch.tensor([1.0, 3.0, 1.0], dtype=F64)).expand(n, 3, 3)
    assert torch.allclose(solid_gaussians(x, stretch, 0.01).covariances[:, 1, 1], torch.full((n,), 9e-4, dtype=F64))
    sigma0 = torch.diag(torch.tensor([1.0, 2.0, 0.5], dtype=F64)) * 1e-3
    assert torch.autograd.gradcheck(lambda f: solid_gaussians(x, f, sigma0).covariances, (F,))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cloth_sampling(torch.tensor([[0, 1, 2]]), 3), "perfect square"),
        (lambda: cloth_sampling(torch.tensor([[0, 1, 2]]), 0), "perfect square"),
        (lambda: cloth_sampling(torch.tensor([[0.0, 1.0, 2.0]]), 1), "integer"),
        (lambda: cloth_gaussians(torch.zeros(3, 3), torch.tensor([[0, 1, 3]])), "outside"),
        (lambda: cloth_gaussians(torch.zeros(3, 2), torch.tensor([[0, 1, 2]])), "vertices"),
        (lambda: cloth_gaussians(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), thickness=0.0), "thickness"),
        (lambda: cloth_gaussians(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), in_plane_scale=0.0), "in_plane_scale"),
        (lambda: solid_gaussians(torch.zeros(2, 3), torch.zeros(3, 3, 3), 0.1), "F must"),
        (lambda: solid_gaussians(torch.zeros(2, 3), torch.zeros(2, 3, 3), -1.0), "positive"),
        (lambda: solid_gaussians(torch.zeros(2, 3), torch.zeros(2, 3, 3), torch.eye(2)), "sigma0"),
    ],
)
def test_builders_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_collapsed_boundary_face_keeps_the_means_finite():
    """A boundary vertex pushed onto its neighbour (a face of zero height) made the silhouette
    inset's squeeze 0 / 0: NaN means and gradients for every Gaussian (found 2026-12-06)."""
    from dreamcloth.render import Camera
    from dreamcloth.taichi_mpm import grid_mesh

    cam = Camera(eye=(0.0, 0.8, 1.25), look_at=(0.0, 0.0, 0.0), fov_y_deg=45, width=32, height=24)
    v, f = grid_mesh(4, 4, (0.5, 0.5), (0.0, 0.0, 0.0))
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor(v, dtype=dtype)
        x[0] = x[1]
        x.requires_grad_(True)
        g = cloth_gaussians(x, torch.tensor(f), 4, camera=cam)
        assert torch.isfinite(g.means).all() and torch.isfinite(g.covariances).all()
        (g.means.sum() + g.covariances.sum()).backward()
        assert torch.isfinite(x.grad).all()
