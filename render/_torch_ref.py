"""A dense, slow, pure-torch twin of the rasterizer: the test oracle. Not for production use.

Every pixel is composited against every visible Gaussian (no tile lists, no early exit); the tile
rule of the CUDA rasterizer appears only as a mask.  The geometry goes through the camera's 3DGS
matrices (transposed ``viewmatrix``/``projmatrix``, homogeneous division, ``ndc2Pix``) exactly as the
CUDA code does, rather than through the pinhole helpers the portable backend uses, so the two
implementations share conventions but not code.  Gradients come from torch autograd alone.

Memory is bounded by processing pixels in chunks under activation checkpointing (the backward pass
recomputes one chunk at a time), so the reference can run at benchmark sizes too.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .camera import Camera
from .conventions import (
    ALPHA_MAX,
    ALPHA_MIN,
    JACOBIAN_FOV_CLAMP,
    LOW_PASS_VARIANCE,
    NEAR_CULL,
    RADIUS_DISCRIMINANT_FLOOR,
    SIGMA_EXTENT,
    TILE,
    TRANSMITTANCE_MIN,
)
from .rasterize import RenderOutput

#: Elements of one ``[pixels, gaussians]`` intermediate per chunk (bounds memory).
_CHUNK_ELEMENTS = 1 << 22


def render_reference(
    means: torch.Tensor,
    covariances: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    camera: Camera,
    background: torch.Tensor | None = None,
) -> RenderOutput:
    """Dense reference render: ``means [N,3]``, ``covariances [N,3,3]``, ``colors [N,3]``, ``opacities [N]``.

    Returns ``RenderOutput`` (``color [3,H,W]``, ``alpha [1,H,W]``, ``depth [1,H,W]``) with the same
    conventions as ``rasterize``; ``backend`` is ``"reference"``.
    """
    dtype, device = means.dtype, means.device
    if background is None:
        background = torch.zeros(3, dtype=dtype, device=device)
    width, height = camera.width, camera.height
    mats = camera.gaussian_splatting_matrices(dtype, device)
    homogeneous = torch.cat([means, torch.ones_like(means[:, :1])], dim=-1)
    p_view = (homogeneous @ mats.viewmatrix)[:, :3]  # row vector times transposed matrix
    p_clip = homogeneous @ mats.projmatrix
    z = p_view[:, 2]
    keep = z > NEAR_CULL
    idx = torch.nonzero(keep, as_tuple=False).squeeze(-1)
    # Front to back; ties keep index order (the CUDA radix sort is stable).
    idx = idx[torch.sort(z[idx].detach(), stable=True).indices]
    p_view, p_clip, z = p_view[idx], p_clip[idx], z[idx]

    ndc = p_clip[:, :2] / p_clip[:, 3:4]
    size = torch.tensor([width, height], dtype=dtype, device=device)
    mean2d = ((ndc + 1.0) * size - 1.0) * 0.5  # ndc2Pix

    # EWA (Zwicker et al. 2002 eq. 31): Sigma' = J W Sigma W^T J^T, W = rotation of the view matrix.
    rot = mats.viewmatrix[:3, :3].T
    focal_x = width / (2.0 * mats.tanfovx)
    focal_y = height / (2.0 * mats.tanfovy)
    limx, limy = JACOBIAN_FOV_CLAMP * mats.tanfovx, JACOBIAN_FOV_CLAMP * mats.tanfovy
    tx = torch.clamp(p_view[:, 0] / z, -limx, limx) * z
    ty = torch.clamp(p_view[:, 1] / z, -limy, limy) * z
    jac = torch.zeros(idx.numel(), 2, 3, dtype=dtype, device=device)
    jac[:, 0, 0] = focal_x / z
    jac[:, 0, 2] = -focal_x * tx / (z * z)
    jac[:, 1, 1] = focal_y / z
    jac[:, 1, 2] = -focal_y * ty / (z * z)
    cov3 = covariances[idx]
    cov3 = 0.5 * (cov3 + cov3.transpose(-1, -2))
    cov2 = jac @ rot @ cov3 @ rot.T @ jac.transpose(-1, -2)
    cov2 = cov2 + LOW_PASS_VARIANCE * torch.eye(2, dtype=dtype, device=device)
    det = cov2[:, 0, 0] * cov2[:, 1, 1] - cov2[:, 0, 1] * cov2[:, 1, 0]
    ok = det != 0
    det = torch.where(ok, det, torch.ones_like(det))
    inv = torch.stack(
        [
            torch.stack([cov2[:, 1, 1], -cov2[:, 0, 1]], -1),
            torch.stack([-cov2[:, 1, 0], cov2[:, 0, 0]], -1),
        ],
        -2,
    ) / det[:, None, None]

    with torch.no_grad():
        mid = 0.5 * (cov2[:, 0, 0] + cov2[:, 1, 1])
        lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=RADIUS_DISCRIMINANT_FLOOR))
        radius = torch.ceil(SIGMA_EXTENT * torch.sqrt(torch.clamp(lam, min=0.0)))
        grid = torch.tensor([math.ceil(width / TILE), math.ceil(height / TILE)], dtype=dtype, device=device)
        rect_min = torch.clamp(torch.floor((mean2d - radius[:, None]) / TILE), min=0.0)
        rect_min = torch.minimum(rect_min, grid)
        rect_max = torch.clamp(torch.floor((mean2d + radius[:, None] + TILE - 1) / TILE), min=0.0)
        rect_max = torch.minimum(rect_max, grid)
        ok = ok & ((rect_max - rect_min).prod(-1) > 0)

    opac = opacities[idx] * ok.to(dtype)  # invisible Gaussians contribute nothing
    feats = torch.cat([colors[idx], z[:, None]], dim=-1)  # rgb + depth, composited alike

    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [P, 2]
    pix_tile = torch.floor(pix / TILE)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, idx.numel()))
    need_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means, covariances, colors, opacities, background)
    )
    outs = []
    for start in range(0, pix.shape[0], chunk):
        rows = slice(start, start + chunk)
        args = (pix[rows], pix_tile[rows], mean2d, inv, opac, feats, rect_min, rect_max)
        if need_grad:
            outs.append(checkpoint(_composite_chunk, *args, use_reentrant=False))
        else:
            outs.append(_composite_chunk(*args))
    weighted = torch.cat([o[0] for o in outs], 0)  # [P, 4]
    t_final = torch.cat([o[1] for o in outs], 0)  # [P]
    color = weighted[:, :3] + t_final[:, None] * background[None, :]
    color = color.T.reshape(3, height, width)
    alpha = (1.0 - t_final).reshape(1, height, width)
    depth = weighted[:, 3].reshape(1, height, width)
    return RenderOutput(color=color, alpha=alpha, depth=depth, backend="reference")


def _composite_chunk(pix, pix_tile, mean2d, inv, opac, feats, rect_min, rect_max):
    """Pixels ``[P, 2]`` against all Gaussians ``[N]`` -> (``sum w f [P, 4]``, ``T_final [P]``)."""
    d = mean2d[None, :, :] - pix[:, None, :]  # [P, N, 2]
    power = -0.5 * (
        inv[None, :, 0, 0] * d[..., 0] ** 2 + inv[None, :, 1, 1] * d[..., 1] ** 2
    ) - inv[None, :, 0, 1] * d[..., 0] * d[..., 1]
    in_rect = (
        (pix_tile[:, None, 0] >= rect_min[None, :, 0])
        & (pix_tile[:, None, 0] < rect_max[None, :, 0])
        & (pix_tile[:, None, 1] >= rect_min[None, :, 1])
        & (pix_tile[:, None, 1] < rect_max[None, :, 1])
    )
    alpha = torch.clamp(opac[None, :] * torch.exp(power), max=ALPHA_MAX)
    contributes = in_rect & (power <= 0) & (alpha >= ALPHA_MIN)
    zero = torch.zeros_like(alpha)
    a = torch.where(contributes, alpha, zero)
    # Transmittance after each Gaussian; compositing stops before the first one that would take it
    # below 1e-4.  T after is non-increasing, so "before the stop" is simply "T after >= 1e-4".
    t_after = torch.cumprod(1.0 - a, dim=1)
    a = torch.where(contributes & (t_after >= TRANSMITTANCE_MIN), alpha, zero)
    t_after = torch.cumprod(1.0 - a, dim=1)
    t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
    w = a * t_before
    return w @ feats, t_after[:, -1] if t_after.shape[1] else torch.ones_like(pix[:, 0])


def rasterize_mesh_reference(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Exact silhouette of a triangle mesh: ``[H, W]`` bool, True where the pixel centre lies in a triangle.

    ``vertices [V, 3]`` (world), ``faces [F, 3]``; every vertex must lie in front of the camera
    (view z > 0), so that a triangle projects to the triangle of its projected vertices (a pinhole
    maps planes to planes).  Pixel centres are at integer coordinates, as in ``Camera.project``;
    a centre exactly on an edge counts as inside.  This is the ground truth the splatted
    silhouette (``alpha >= SILHOUETTE_ALPHA``) is tested against.
    """
    v = vertices.detach().to(torch.float64)
    cam = camera.to_camera(v)
    if bool((cam[:, 2] <= 0).any()):
        raise ValueError("rasterize_mesh_reference needs every vertex in front of the camera")
    uv = camera.project(cam)
    f = torch.as_tensor(faces, dtype=torch.int64, device=v.device)
    tri = uv[f]  # [F, 3, 2]
    # Only the pixel centres in each triangle's bounding box are tested; triangles are processed in
    # order of box size so that one chunk's [triangles, box pixels] block stays small.
    lo = torch.ceil(tri.amin(1))
    hi = torch.floor(tri.amax(1))
    lo = torch.maximum(lo, torch.zeros_like(lo))
    hi = torch.minimum(hi, torch.tensor([camera.width - 1.0, camera.height - 1.0], dtype=torch.float64, device=v.device))
    extent = torch.clamp(hi - lo + 1, min=0).to(torch.int64)  # [F, 2]
    order = torch.argsort(extent.prod(-1))
    inside = torch.zeros(camera.height * camera.width, dtype=torch.bool, device=v.device)
    start = 0
    while start < order.numel():
        box = int(extent[order[min(order.numel() - 1, start)]].prod())
        count = max(1, _CHUNK_ELEMENTS // max(1, box))
        ids = order[start : start + count]
        start += count
        ext = extent[ids]
        wmax, hmax = int(ext[:, 0].max()), int(ext[:, 1].max())
        if wmax == 0 or hmax == 0:
            continue
        oy, ox = torch.meshgrid(torch.arange(hmax, device=v.device), torch.arange(wmax, device=v.device), indexing="ij")
        px = lo[ids, 0:1] + ox.reshape(1, -1)  # [C, K]
        py = lo[ids, 1:2] + oy.reshape(1, -1)
        valid = (ox.reshape(1, -1) < ext[:, 0:1]) & (oy.reshape(1, -1) < ext[:, 1:2])
        t = tri[ids]
        signs = []
        for i in range(3):
            a, b = t[:, i], t[:, (i + 1) % 3]
            # Edge function: the z of (b - a) x (p - a); one sign on all three edges means inside.
            signs.append((b[:, 0:1] - a[:, 0:1]) * (py - a[:, 1:2]) - (b[:, 1:2] - a[:, 1:2]) * (px - a[:, 0:1]))
        e = torch.stack(signs)  # [3, C, K]
        hit = valid & ((e >= 0).all(0) | (e <= 0).all(0))
        flat = (py * camera.width + px).to(torch.int64)[hit]
        inside[flat] = True
    return inside.reshape(camera.height, camera.width)
