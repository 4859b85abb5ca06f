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

Crisp silhouettes (``camera`` given): splats blur the sheet's edge, and because a nearly opaque
sheet composites many of them, the blurred tails outside the mesh still add up to alpha >= 0.5.
Across a straight edge the optical depth ``tau = -log T`` is the interior depth ``tau_in`` times
the blur's CDF, so the alpha = 1/2 contour (``tau = log 2``) sits about ``sigma q(tau_in)`` pixels
outside the edge (``_edge_quantile``), where ``sigma^2`` is the projected splat variance across the
edge, the rasterizer's 0.3 px^2 low-pass included.  Measured before this correction: a flat 41 x 41
sheet seen from 20 degrees covered ~10% more pixels than the mesh (IoU 0.91-0.93 at 128 x 128),
because sub-pixel splats pile up to ``tau_in`` ~ 25 there, which puts the contour ~1 px out; the
alpha threshold matters less (alpha >= 0.9 still gave IoU 0.94).  The correction moves the boundary
vertices inward by that distance (per edge, in the cloth's plane; rings of vertices inside share
insets larger than a row) before the Gaussians are built, so that ``alpha >= SILHOUETTE_ALPHA`` is
the mesh's silhouette for both backends (the correction is in the Gaussians, not the rasterizer).

Solids (PhysGaussian, Xie et al. 2024, eq. 4 there): one Gaussian per particle, ``Sigma = F Sigma0 F^T``.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .camera import Camera
from .conventions import ALPHA_MAX, LOW_PASS_VARIANCE, NEAR_CULL

#: Silhouette convention: a pixel is foreground where the rendered alpha is at least this (half
#: covered, as a pixel centre on an antialiased edge is).
SILHOUETTE_ALPHA = 0.5
#: The inset is shared by this many rings of vertices (ring r moves by (1 - r / rings) of it), so
#: that a grazing view of a fine mesh, whose rows are thinner than the inset, is fixed too ...
_INSET_RINGS = 8
#: ... and no row shrinks by more than this fraction of its height (no face turns over).
_MAX_INSET_FRACTION = 0.75
#: The inset's rate of screen motion per metre of inward motion is floored at this fraction of the
#: face-on rate (sin 10 degrees): edges seen more nearly edge-on get the inset of a 10-degree view
#: (see ``_silhouette_inset``).
_MIN_GRAZING_SIN = math.sin(math.radians(10.0))
#: Terms of the series -log(1 - o g) = sum_k (o g)^k / k used for a splat's optical depth: at the
#: clamp o = 0.99 the weights o^k / k^2 left out beyond 100 sum to < 0.1% of Li2(o).
_DEPTH_SERIES_TERMS = 100


@dataclasses.dataclass(frozen=True)
class ClothSampling:
    """Where a cloth's Gaussians sit on its mesh (static: depends on the faces only).

    - ``faces [F, 3]`` (int64): the triangles;
    - ``face_index [M]`` (int64): the triangle of each Gaussian, ``M = F * per_triangle``;
    - ``barycentric [M, 3]``: the Gaussian's mean as weights on its triangle's three vertices;
    - ``subdivision``: ``n`` with ``per_triangle = n^2``;
    - ``boundary_edges [B, 4]`` (int64): each boundary edge (an edge of one face only) as its two
      vertices, the third vertex of its face and that face, for the crisp-silhouette correction;
    - ``ring [V]`` / ``ring_parent [V]`` (int64): for vertices within ``_INSET_RINGS`` edges of
      the boundary, that edge distance (0 on the boundary) and a nearest boundary vertex; -1
      elsewhere.

    Per-Gaussian quantities (colours, opacities) can be learnt as ``[M, C]`` parameters directly,
    or taken from per-vertex values with ``interpolate``.
    """

    faces: torch.Tensor
    face_index: torch.Tensor
    barycentric: torch.Tensor
    subdivision: int
    boundary_edges: torch.Tensor
    ring: torch.Tensor
    ring_parent: torch.Tensor

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
    """Cloth Gaussians: the geometry plus the ``sampling`` that placed them (for per-Gaussian colours)
    and ``normals [M, 3]``, the unit normal of each Gaussian's deformed triangle, on the "front"
    side (``(v1 - v0) x (v2 - v0)``, counter-clockwise winding; see ``two_sided_colors``)."""

    sampling: ClothSampling
    normals: torch.Tensor


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
    boundary = _boundary_edges(faces)
    ring, parent = _boundary_rings(faces, boundary)
    return ClothSampling(faces=faces, face_index=face_index, barycentric=barycentric, subdivision=n,
                         boundary_edges=boundary, ring=ring, ring_parent=parent)


def _boundary_rings(faces: torch.Tensor, boundary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Breadth-first rings from the boundary over the mesh edges: ``ring [V]``, ``ring_parent [V]``."""
    num_vertices = int(faces.max()) + 1 if faces.numel() else 0
    ring = torch.full((num_vertices,), -1, dtype=torch.int64, device=faces.device)
    parent = torch.full_like(ring, -1)
    if boundary.shape[0] == 0:
        return ring, parent
    on = torch.unique(boundary[:, :2])
    ring[on] = 0
    parent[on] = on
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.cat([edges, edges.flip(1)])  # both directions
    for r in range(1, _INSET_RINGS):
        frontier = (ring[edges[:, 0]] == r - 1) & (ring[edges[:, 1]] < 0)
        src, dst = edges[frontier, 0], edges[frontier, 1]
        if dst.numel() == 0:
            break
        # The smallest parent id among the candidates: deterministic whatever the edge order.
        best = torch.full_like(parent, torch.iinfo(torch.int64).max)
        best = best.scatter_reduce(0, dst, parent[src], reduce="amin")
        new = torch.unique(dst)
        ring[new] = r
        parent[new] = best[new]
    return ring, parent


def _boundary_edges(faces: torch.Tensor) -> torch.Tensor:
    """``[B, 4]``: (a, b, opposite vertex, face) for every edge that belongs to exactly one face."""
    ids = torch.arange(faces.shape[0], dtype=faces.dtype, device=faces.device)[:, None]
    edges = torch.cat([torch.cat([faces[:, order], ids], 1) for order in ([0, 1, 2], [1, 2, 0], [2, 0, 1])])
    if edges.shape[0] == 0:
        return edges
    key = torch.sort(edges[:, :2], dim=1).values
    _, inverse, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    return edges[counts[inverse] == 1].contiguous()


def cloth_gaussians(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    per_triangle: int = 1,
    thickness: float = 1e-3,
    sampling: ClothSampling | None = None,
    in_plane_scale: float = 1.0,
    camera: Camera | None = None,
    opacity: float = 0.95,
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
        camera: when given, the silhouette is made crisp for this view: boundary vertices move
            inward (in the cloth's plane) by the distance the splats' blur pushes the alpha = 0.5
            contour outward (module docstring), so that ``alpha >= SILHOUETTE_ALPHA`` matches the
            mesh.  Only the Gaussians change; gradients flow through the correction too.
        opacity: the opacity the Gaussians will be rendered with, which sets how far the contour
            moves (only used with ``camera``).

    Returns:
        ``ClothGaussians`` with ``means [M, 3]``, ``covariances [M, 3, 3]``, ``M = F * per_triangle``.
    """
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not vertices.is_floating_point():
        raise ValueError(f"vertices must be a float tensor of shape [V, 3], got {tuple(vertices.shape)}")
    if not (thickness > 0 and math.isfinite(thickness)):
        raise ValueError(f"thickness must be a positive number, got {thickness}")
    if not (in_plane_scale > 0 and math.isfinite(in_plane_scale)):
        raise ValueError(f"in_plane_scale must be a positive number, got {in_plane_scale}")
    if not (0.0 < opacity < 1.0):
        raise ValueError(f"opacity must lie in (0, 1), got {opacity}")
    if sampling is None:
        sampling = cloth_sampling(faces, per_triangle)
    f = sampling.faces.to(vertices.device)
    if f.numel() and (int(f.min()) < 0 or int(f.max()) >= vertices.shape[0]):
        raise ValueError(f"faces index vertices outside [0, {vertices.shape[0]})")
    if camera is not None:
        cov = _face_covariances(vertices, f, sampling.subdivision, thickness, in_plane_scale)
        vertices = vertices + _silhouette_inset(vertices, f, sampling, cov, camera, opacity, in_plane_scale)
    v0, v1, v2 = vertices[f[:, 0]], vertices[f[:, 1]], vertices[f[:, 2]]
    cov_face = _face_covariances(vertices, f, sampling.subdivision, thickness, in_plane_scale)
    bary = sampling.barycentric.to(vertices.dtype).to(vertices.device)
    idx = sampling.face_index.to(vertices.device)
    means = bary[:, 0:1] * v0[idx] + bary[:, 1:2] * v1[idx] + bary[:, 2:3] * v2[idx]
    normal = torch.linalg.cross(v1 - v0, v2 - v0)
    # The floor keeps a collapsed triangle's normal finite (zero), with finite gradients.
    normal = normal / torch.sqrt(torch.clamp((normal * normal).sum(-1, keepdim=True), min=torch.finfo(vertices.dtype).tiny))
    return ClothGaussians(means=means, covariances=cov_face[idx], sampling=sampling, normals=normal[idx])


def _face_covariances(vertices: torch.Tensor, f: torch.Tensor, n: int, thickness: float, in_plane_scale: float) -> torch.Tensor:
    """``[F, 3, 3]``: the covariance shared by the sub-triangle Gaussians of each face."""
    v0, v1, v2 = vertices[f[:, 0]], vertices[f[:, 1]], vertices[f[:, 2]]
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
    return in_plane + (thickness * thickness) * normal_part


def _edge_quantile(tau_in: torch.Tensor, opacity: float) -> torch.Tensor:
    """How many across-edge standard deviations outside a straight edge ``tau = log 2`` lies.

    One splat's optical depth ``-log(1 - o g) = sum_k o^k g^k / k`` is a sum of Gaussians that are
    ``sqrt(k)`` times narrower, so a dense half-plane of splats has the depth profile
    ``tau_in sum_k w_k Phi(-q sqrt(k))`` at ``q`` standard deviations outside the edge, with
    ``w_k = o^k / k^2 / Li2(o)``.  Solve ``profile(q) = log 2`` for ``q`` (>= 0; 0 where the
    interior is too thin for the contour to leave the mesh): bisection and Newton without gradient,
    then one Newton step with it, which gives the value and the implicit-function derivative ``dq/dtau_in``.
    """
    k = torch.arange(1, _DEPTH_SERIES_TERMS + 1, dtype=tau_in.dtype, device=tau_in.device)
    w = opacity**k / (k * k)
    w = w / w.sum()
    root_k = torch.sqrt(k)

    def profile(q):  # [B] -> [B]: the fraction of tau_in left at q
        return (w * torch.special.ndtr(-q[:, None] * root_k)).sum(-1)

    def slope(q):
        x = q[:, None] * root_k
        return -(w * root_k * torch.exp(-0.5 * x * x)).sum(-1) / math.sqrt(2.0 * math.pi)

    target = math.log(2.0) / torch.clamp(tau_in, min=2.0 * math.log(2.0))
    with torch.no_grad():
        lo, hi = torch.zeros_like(target), torch.full_like(target, 10.0)
        for _ in range(20):  # to 1e-5, then Newton (the profile is smooth and monotone)
            mid = 0.5 * (lo + hi)
            above = profile(mid) > target
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        q0 = 0.5 * (lo + hi)
        for _ in range(2):
            q0 = torch.clamp(q0 - (profile(q0) - target) / slope(q0), min=lo, max=hi)
    q = q0 - (profile(q0) - target) / slope(q0)
    return torch.clamp(q, min=0.0)


def _silhouette_inset(
    vertices: torch.Tensor, f: torch.Tensor, sampling: ClothSampling, cov_face: torch.Tensor, camera: Camera, opacity: float,
    in_plane_scale: float,
) -> torch.Tensor:
    """Inward displacements ``[V, 3]`` of the boundary vertices (zero elsewhere) for ``camera``.

    Per boundary edge (a, b) of a face with opposite vertex c:

    - ``sigma^2``: the blur across the projected edge (screen normal ``n``), from the face's
      projected splat covariance ``Sigma'`` (low-pass included) less the sub-triangle's own moment;
    - ``tau_in``: the interior optical depth, splats per pixel^2 times one splat's depth integral
      ``int -log(1 - o g) = 2 pi sqrt(det Sigma') Li2(o)`` (a per-Gaussian sum, since compositing
      multiplies transmittances);
    - the alpha = 1/2 contour lies ``sigma q(tau_in)`` px outside the edge (``_edge_quantile``); that
      distance, divided by how many pixels the edge moves per metre of in-plane inward motion, is
      the edge's inset (capped so that ``_INSET_RINGS`` rings of vertices can share it).

    Each boundary vertex then takes the miter offset of its edges' insets (see the code).
    """
    from .projection import project_gaussians

    dtype, device = vertices.dtype, vertices.device
    be = sampling.boundary_edges.to(device)
    if be.shape[0] == 0:
        return torch.zeros_like(vertices)
    a, b, c = vertices[be[:, 0]], vertices[be[:, 1]], vertices[be[:, 2]]
    edge = b - a
    normal = torch.linalg.cross(edge, c - a)
    inward = torch.linalg.cross(normal, edge)  # in the face's plane, perpendicular to the edge, towards c
    tiny = torch.finfo(dtype).tiny
    inward = inward / torch.sqrt(torch.clamp((inward * inward).sum(-1, keepdim=True), min=tiny))
    height = ((c - a) * inward).sum(-1)

    owner = be[:, 3]
    mid = 0.5 * (a + b)
    proj = project_gaussians(mid, cov_face[owner], camera)
    conic = proj.conic  # inverse of Sigma' (low-pass included)
    det_conic = torch.clamp(conic[:, 0] * conic[:, 2] - conic[:, 1] ** 2, min=tiny)
    cov2 = torch.stack([conic[:, 2], -conic[:, 1], conic[:, 0]], -1) / det_conic[:, None]  # Sigma' as (xx, xy, yy)

    # Screen-space geometry from the pinhole Jacobian at the edge midpoint.
    rot = camera.rotation(dtype, device)
    pa, pb, pc = (camera.project(camera.to_camera(p)) for p in (a, b, c))
    edge2 = pb - pa
    n2 = torch.stack([-edge2[:, 1], edge2[:, 0]], -1)
    n2 = n2 / torch.sqrt(torch.clamp((n2 * n2).sum(-1, keepdim=True), min=tiny))
    p = camera.to_camera(mid)
    z = torch.clamp(p[:, 2], min=1e-6)
    d_cam = inward @ rot.T  # the inward direction in the camera frame
    du = camera.focal_x * (d_cam[:, 0] - p[:, 0] / z * d_cam[:, 2]) / z
    dv = camera.focal_y * (d_cam[:, 1] - p[:, 1] / z * d_cam[:, 2]) / z
    px_per_metre = (du * n2[:, 0] + dv * n2[:, 1]).abs()

    sigma2 = cov2[:, 0] * n2[:, 0] ** 2 + 2 * cov2[:, 1] * n2[:, 0] * n2[:, 1] + cov2[:, 2] * n2[:, 1] ** 2
    area_px = 0.5 * (edge2[:, 0] * (pc - pa)[:, 1] - edge2[:, 1] * (pc - pa)[:, 0]).abs()
    # Per-Gaussian alpha is clamped at ALPHA_MAX by every backend.
    o = min(opacity, ALPHA_MAX)
    li2 = sum(o**k / (k * k) for k in range(1, _DEPTH_SERIES_TERMS + 1))
    splat_depth = 2.0 * math.pi * torch.sqrt(torch.clamp(cov2[:, 0] * cov2[:, 2] - cov2[:, 1] ** 2, min=tiny)) * li2
    tau_in = splat_depth * sampling.subdivision**2 / torch.clamp(area_px, min=1e-12)
    step = _MAX_INSET_FRACTION * height  # the most one ring may move beyond the next
    cap = _INSET_RINGS * step
    # The splats sit at the sub-triangles' centroids and carry s times their second moment: the
    # sheet's indicator is blurred only by the excess, (1 - 1/s) of the in-plane part, plus the
    # low-pass (the sub-triangle's own moment is the indicator's, not blur).  Matters for splats
    # of several pixels; sub-pixel ones are all low-pass.
    sigma2 = (1.0 - 1.0 / in_plane_scale) * sigma2 + LOW_PASS_VARIANCE / in_plane_scale
    sigma = torch.sqrt(torch.clamp(sigma2, min=0.0))
    # A boundary face seen edge-on moves its edge on screen by ~0 px per metre of inward motion, and
    # sigma q / px_per_metre blew up to the cap (_INSET_RINGS rows: on a coarse mesh most of the
    # sheet) within a degree of turn: a cloth draped over a sphere, whose hanging skirt turns its
    # edge faces through edge-on, rendered a 0.6 mm move of the cloth as an 86 mm move of the
    # Gaussians, and the fitted loss jumped.  So the rate is floored at what a face seen
    # _MIN_GRAZING_SIN off edge-on gives (the face-on rate sqrt(fx fy) / z times that sine).
    face_on = math.sqrt(camera.focal_x * camera.focal_y) / z
    ppm = torch.maximum(px_per_metre, _MIN_GRAZING_SIN * face_on)
    # Sharing the inset compresses the rows near the edge by h / (h - inset / rings), which raises
    # the splat density and so tau_in there: a few fixed-point steps settle the inset with it.
    inset = torch.minimum(sigma * _edge_quantile(tau_in, o) / ppm, cap)
    # a boundary face collapsed to its edge (height 0: a vertex pushed onto its neighbour) has
    # inset and cap 0; its squeeze was 0 / 0, a NaN in every mean and gradient
    h = torch.clamp(height, min=tiny)
    for _ in range(3):
        squeeze = h / torch.clamp(h - inset / _INSET_RINGS, min=1e-3 * h)
        inset = torch.minimum(sigma * _edge_quantile(tau_in * squeeze, o) / ppm, cap)
    inset = torch.where(proj.depth > NEAR_CULL, inset, torch.zeros_like(inset))  # behind the camera: nothing to fix

    # Per vertex, the miter offset: with unit inward normals m_k and insets d_k of its c boundary
    # edges, u = mean(d) c sum(m) / |sum(m)|^2 moves a straight edge by d along m and both edges
    # of a corner by d (along the bisector), and stays bounded where neighbouring edges are
    # nearly parallel (a least-squares fit of u . m_k = d_k would shoot sideways by
    # (d_1 - d_2) / angle there).  The floor bounds the miter of sharp corners at twice d.
    V = vertices.shape[0]
    count = vertices.new_zeros(V)
    sum_m = vertices.new_zeros(V, 3)
    sum_d = vertices.new_zeros(V)
    for col in (0, 1):
        count = count.index_add(0, be[:, col], torch.ones_like(inset))
        sum_m = sum_m.index_add(0, be[:, col], inward)
        sum_d = sum_d.index_add(0, be[:, col], inset)
    c = torch.clamp(count, min=1.0)
    sq = torch.clamp((sum_m * sum_m).sum(-1), min=0.25 * c * c)
    miter = (sum_d / sq)[:, None] * sum_m  # mean(d) c = sum(d); [V, 3], zero off the boundary

    # The rings inside follow their boundary vertex's offset, scaled down linearly to zero at ring
    # _INSET_RINGS: the rows near the edge shrink evenly and never cross.
    ring = sampling.ring.to(device)
    parent = sampling.ring_parent.to(device)
    if ring.shape[0] < V:  # vertices that no face uses sit after the last used one: never moved
        pad = torch.full((V - ring.shape[0],), -1, dtype=ring.dtype, device=device)
        ring, parent = torch.cat([ring, pad]), torch.cat([parent, pad])
    scale = torch.where(ring >= 0, 1.0 - ring.to(dtype) / _INSET_RINGS, torch.zeros((), dtype=dtype, device=device))
    return miter[torch.clamp(parent, min=0)] * scale[:, None]


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
