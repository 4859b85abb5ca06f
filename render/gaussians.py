"""3D Gaussians from simulation state: flat Gaussians on cloth triangles, and PhysGaussian solids.

Everything is plain torch, so gradients reach the simulator's positions and deformation gradients
through autograd.

Cloth (the "runtime surface"): each triangle is split into ``n^2`` congruent sub-triangles
(barycentric up-sampling, ``per_triangle = n^2``) and each sub-triangle carries one flat Gaussian:

- mean: the sub-triangle's centroid, a fixed barycentric combination of the *deformed* vertices;
- covariance: the second moment of a uniform density on the deformed sub-triangle, which is
  ``1/36 (e1 e1^T + e2 e2^T + e3 e3^T)`` for its edge vectors ``e_i`` (all sub-triangles share the
  parent's edges scaled by ``1/n``), plus ``thickness^2 n n^T`` along the unit normal so that the
  Gaussian is thin but not singular.  Stretching or shearing the cloth stretches the Gaussians with it.

Solids (PhysGaussian, Xie et al. 2024, eq. 4 there): one Gaussian per particle, ``Sigma = F Sigma0 F^T``.
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass(frozen=True)
class ClothSampling:
    """Where a cloth's Gaussians sit on its mesh (static: depends on the faces only).

    - ``faces [F, 3]`` (int64): the triangles;
    - ``face_index [M]`` (int64): the triangle of each Gaussian, ``M = F * per_triangle``;
    - ``barycentric [M, 3]``: the Gaussian's mean as weights on its triangle's three vertices;
    - ``subdivision``: ``n`` with ``per_triangle = n^2``.

    Per-Gaussian quantities (colours, opacities) can be learnt as ``[M, C]`` parameters directly,
    or taken from per-vertex values with ``interpolate``.
    """

    faces: torch.Tensor
    face_index: torch.Tensor
    barycentric: torch.Tensor
    subdivision: int

    @property
    def num_gaussians(self) -> int:
        return int(self.face_index.shape[0])

    def interpolate(self, vertex_values: torch.Tensor) -> torch.Tensor:
        """Per-vertex values ``[V, C]`` -> per-Gaussian values ``[M, C]`` (barycentric interpolation)."""
        corners = vertex_values[self.faces[self.face_index]]  # [M, 3, C]
        bary = self.barycentric.to(vertex_values.dtype)
        return (bary[..., None] * corners).sum(dim=1)


@dataclasses.dataclass(frozen=True)
class GaussianGeometry:
    """Positions and shapes of N Gaussians: ``means [N, 3]``, ``covariances [N, 3, 3]`` (symmetric PSD)."""

    means: torch.Tensor
    covariances: torch.Tensor


@dataclasses.dataclass(frozen=True)
class ClothGaussians(GaussianGeometry):
    """Cloth Gaussians: the geometry plus the ``sampling`` that placed them (for per-Gaussian colours)."""

    sampling: ClothSampling


def cloth_sampling(faces: torch.Tensor, per_triangle: int = 1) -> ClothSampling:
    """Barycentric up-sampling of ``faces [F, 3]`` into ``per_triangle`` (a square: 1, 4, 9, ...) Gaussians each."""
    faces = torch.as_tensor(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.is_floating_point:
        raise ValueError(f"faces must be an integer tensor of shape [F, 3], got {tuple(faces.shape)} {faces.dtype}")
    n = math.isqrt(int(per_triangle)) if int(per_triangle) > 0 else 0
    if per_triangle != int(per_triangle) or n < 1 or n * n != int(per_triangle):
        raise ValueError(f"per_triangle must be a perfect square (1, 4, 9, ...), got {per_triangle}")
    faces = faces.to(torch.int64)
    # Sub-triangles of the regular n x n split in lattice coordinates (i, j) = n * (w1, w2):
    # "upward" ones with corner (i, j), i + j <= n - 1, centroid (i + 1/3, j + 1/3) / n, and
    # "downward" ones with corner (i + 1, j + 1), i + j <= n - 2, centroid (i + 2/3, j + 2/3) / n.
    weights = []
    for i in range(n):
        for j in range(n - i):
            weights.append(((i + 1.0 / 3.0) / n, (j + 1.0 / 3.0) / n))
            if i + j <= n - 2:
                weights.append(((i + 2.0 / 3.0) / n, (j + 2.0 / 3.0) / n))
    w = torch.tensor(weights, dtype=torch.float64)  # [n^2, 2]: weights of vertices 1 and 2
    local = torch.cat([1.0 - w.sum(-1, keepdim=True), w], dim=-1)  # [n^2, 3]
    num_faces = faces.shape[0]
    face_index = torch.arange(num_faces, dtype=torch.int64, device=faces.device).repeat_interleave(n * n)
    barycentric = local.to(faces.device).repeat(num_faces, 1)
    return ClothSampling(faces=faces, face_index=face_index, barycentric=barycentric, subdivision=n)


def cloth_gaussians(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    per_triangle: int = 1,
    thickness: float = 1e-3,
    sampling: ClothSampling | None = None,
    in_plane_scale: float = 1.0,
) -> ClothGaussians:
    """Flat Gaussians on a deformed triangle mesh.

    Args:
        vertices: ``[V, 3]`` deformed vertex positions (differentiable).
        faces: ``[F, 3]`` integer vertex indices.
        per_triangle: Gaussians per triangle, a perfect square ``n^2`` (sub-triangles of an n-split).
        thickness: standard deviation (m) across the surface.
        sampling: a precomputed ``cloth_sampling(faces, per_triangle)`` to reuse across frames.
        in_plane_scale: multiplies the in-plane covariance.  1 gives each Gaussian exactly the
            second moment of its sub-triangle (the Gaussians' mixture then has the surface's area
            moments); about 2 closes the see-through gaps between neighbouring splats of a nearly
            opaque cloth, since alpha compositing does not add densities.

    Returns:
        ``ClothGaussians`` with ``means [M, 3]``, ``covariances [M, 3, 3]``, ``M = F * per_triangle``.
    """
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not vertices.is_floating_point():
        raise ValueError(f"vertices must be a float tensor of shape [V, 3], got {tuple(vertices.shape)}")
    if not (thickness > 0 and math.isfinite(thickness)):
        raise ValueError(f"thickness must be a positive number, got {thickness}")
    if not (in_plane_scale > 0 and math.isfinite(in_plane_scale)):
        raise ValueError(f"in_plane_scale must be a positive number, got {in_plane_scale}")
    if sampling is None:
        sampling = cloth_sampling(faces, per_triangle)
    f = sampling.faces.to(vertices.device)
    if f.numel() and (int(f.min()) < 0 or int(f.max()) >= vertices.shape[0]):
        raise ValueError(f"faces index vertices outside [0, {vertices.shape[0]})")
    v0, v1, v2 = vertices[f[:, 0]], vertices[f[:, 1]], vertices[f[:, 2]]
    n = sampling.subdivision
    e1 = (v1 - v0) / n
    e2 = (v2 - v0) / n
    e3 = e2 - e1
    outer = lambda e: e[:, :, None] * e[:, None, :]  # noqa: E731 - local shorthand
    in_plane = (outer(e1) + outer(e2) + outer(e3)) * (in_plane_scale / 36.0)
    normal = torch.linalg.cross(e1, e2)
    # n n^T = c c^T / |c|^2; the tiny floor keeps a collapsed triangle finite (no NaN gradients).
    sq = (normal * normal).sum(-1)
    tiny = torch.finfo(vertices.dtype).tiny
    normal_part = outer(normal) / torch.clamp(sq, min=tiny)[:, None, None]
    cov_face = in_plane + (thickness * thickness) * normal_part  # [F, 3, 3]
    bary = sampling.barycentric.to(vertices.dtype).to(vertices.device)
    idx = sampling.face_index.to(vertices.device)
    means = bary[:, 0:1] * v0[idx] + bary[:, 1:2] * v1[idx] + bary[:, 2:3] * v2[idx]
    return ClothGaussians(means=means, covariances=cov_face[idx], sampling=sampling)


def solid_gaussians(x: torch.Tensor, F: torch.Tensor, sigma0: torch.Tensor | float) -> GaussianGeometry:
    """Particle Gaussians deformed with the material: ``Sigma = F Sigma0 F^T`` (PhysGaussian).

    Args:
        x: ``[N, 3]`` particle positions.
        F: ``[N, 3, 3]`` deformation gradients.
        sigma0: rest covariance, ``[3, 3]`` (shared) or ``[N, 3, 3]``; or a float, the isotropic
            rest standard deviation ``s`` (``Sigma0 = s^2 I``).

    Returns:
        ``GaussianGeometry`` with ``means = x`` and ``covariances [N, 3, 3]``.
    """
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"x must have shape [N, 3], got {tuple(x.shape)}")
    if tuple(F.shape) != (x.shape[0], 3, 3):
        raise ValueError(f"F must have shape [N, 3, 3] with N = {x.shape[0]}, got {tuple(F.shape)}")
    if isinstance(sigma0, torch.Tensor):
        sigma0 = sigma0.to(dtype=F.dtype, device=F.device)
        if tuple(sigma0.shape) not in ((3, 3), (x.shape[0], 3, 3)):
            raise ValueError(f"sigma0 must have shape [3, 3] or [N, 3, 3], got {tuple(sigma0.shape)}")
    else:
        s = float(sigma0)
        if not (s > 0 and math.isfinite(s)):
            raise ValueError(f"sigma0 as a float is a standard deviation and must be positive, got {sigma0}")
        sigma0 = (s * s) * torch.eye(3, dtype=F.dtype, device=F.device)
    cov = F @ sigma0 @ F.transpose(-1, -2)
    return GaussianGeometry(means=x, covariances=cov)
