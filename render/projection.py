"""EWA projection of 3D Gaussians to the image plane, and tile binning, in plain torch.

This is the per-Gaussian half of the portable rasterizer: cheap, vectorised, and differentiated by
torch's autograd.  Only the per-pixel compositing (a dynamic loop over depth-sorted Gaussians) is a
Taichi kernel with a hand-written backward (``_portable.py``).

The 2D covariance follows EWA splatting (Zwicker et al. 2002, eqs. 29 and 31) as the 3DGS
rasterizer implements it (Kerbl et al. 2023, eq. 5): ``Sigma' = J W Sigma W^T J^T`` with ``W`` the
world->camera rotation and ``J`` the Jacobian of the perspective map at the Gaussian's centre,
plus the 0.3 px^2 low-pass on the diagonal.
"""

from __future__ import annotations

import dataclasses

import torch

from .camera import Camera
from .conventions import (
    JACOBIAN_FOV_CLAMP,
    LOW_PASS_VARIANCE,
    NEAR_CULL,
    RADIUS_DISCRIMINANT_FLOOR,
    SIGMA_EXTENT,
    TILE,
)


@dataclasses.dataclass(frozen=True)
class ProjectedGaussians:
    """Gaussians on the image plane (N = number of input Gaussians, culled ones included).

    - ``mean2d [N, 2]``: pixel coordinates (u right, v down; pixel centres at integers);
    - ``conic [N, 3]``: ``(a, b, c)`` of the inverse 2D covariance ``[[a, b], [b, c]]`` (px^-2);
    - ``depth [N]``: view-space z of the centre;
    - ``radius [N]`` (int64): ``ceil(3 sqrt(lambda_max))`` in pixels, 0 for culled Gaussians;
    - ``tile_min``/``tile_max [N, 2]`` (int64, ``(x, y)``): the touched tile rectangle, max exclusive;
    - ``visible [N]`` (bool): in front of the near plane, invertible, touching at least one tile.

    ``mean2d``, ``conic`` and ``depth`` carry gradients to the means and covariances; the rest is
    discrete.  Culled Gaussians have finite placeholder values so that no NaN leaks into gradients.
    """

    mean2d: torch.Tensor
    conic: torch.Tensor
    depth: torch.Tensor
    radius: torch.Tensor
    tile_min: torch.Tensor
    tile_max: torch.Tensor
    visible: torch.Tensor


def tile_grid(camera: Camera) -> tuple[int, int]:
    """``(tiles_x, tiles_y)``: how many 16x16 tiles cover the image (partial tiles at the border count)."""
    return (camera.width + TILE - 1) // TILE, (camera.height + TILE - 1) // TILE


def project_gaussians(means: torch.Tensor, covariances: torch.Tensor, camera: Camera) -> ProjectedGaussians:
    """Project Gaussians (``means [N, 3]``, ``covariances [N, 3, 3]``, world frame) with EWA.

    Only the symmetric part of each covariance is used, so the gradient with respect to
    ``covariances`` is symmetric.
    """
    dtype, device = means.dtype, means.device
    rot = camera.rotation(dtype, device)
    p = camera.to_camera(means)
    z = p[:, 2]
    in_front = z > NEAR_CULL
    # Culled Gaussians get z = 1 so that 1/z and friends stay finite: 0 * inf in a backward pass
    # would turn their (zero) gradient into NaN.
    z_safe = torch.where(in_front, z, torch.ones_like(z))
    x, y = p[:, 0], p[:, 1]
    fx, fy = camera.focal_x, camera.focal_y
    cx, cy = camera.principal_point

    # The Jacobian is evaluated at the centre clamped to 1.3x the half field of view (3DGS
    # computeCov2D); the clamp has zero derivative outside, as in the CUDA backward.
    lim_x = JACOBIAN_FOV_CLAMP * camera.tan_half_fov_x
    lim_y = JACOBIAN_FOV_CLAMP * camera.tan_half_fov_y
    tx = torch.clamp(x / z_safe, -lim_x, lim_x) * z_safe
    ty = torch.clamp(y / z_safe, -lim_y, lim_y) * z_safe
    zero = torch.zeros_like(z)
    jac = torch.stack(
        [
            torch.stack([fx / z_safe, zero, -fx * tx / (z_safe * z_safe)], dim=-1),
            torch.stack([zero, fy / z_safe, -fy * ty / (z_safe * z_safe)], dim=-1),
        ],
        dim=-2,
    )  # [N, 2, 3]
    m = jac @ rot  # [N, 2, 3]: d(pixel) / d(world)
    sym = 0.5 * (covariances + covariances.transpose(-1, -2))
    cov2d = m @ sym @ m.transpose(-1, -2)  # [N, 2, 2]
    a = cov2d[:, 0, 0] + LOW_PASS_VARIANCE
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + LOW_PASS_VARIANCE
    det = a * c - b * b
    # The CUDA rasterizer culls only an exactly singular 2D covariance; we do the same.
    ok = in_front & (det != 0)
    det_safe = torch.where(ok, det, torch.ones_like(det))
    conic = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    mean2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)

    with torch.no_grad():
        radius, tile_min, tile_max = _tile_rect(mean2d, a, c, det, camera)
        area = (tile_max - tile_min).prod(dim=-1)
        visible = ok & (area > 0)
        radius = torch.where(visible, radius, torch.zeros_like(radius))
    return ProjectedGaussians(mean2d, conic, z, radius, tile_min, tile_max, visible)


def _tile_rect(mean2d, a, c, det, camera: Camera):
    """The 3-sigma radius and touched tile rectangle (``getRect`` of ``auxiliary.h``)."""
    mid = 0.5 * (a + c)
    disc = torch.sqrt(torch.clamp(mid * mid - det, min=RADIUS_DISCRIMINANT_FLOOR))
    # lambda_max >= 0 for any covariance the low-pass made positive definite; the clamp only
    # keeps nonsense input (indefinite covariances) from producing NaN radii.
    lam = torch.clamp(mid + disc, min=0.0)
    radius = torch.ceil(SIGMA_EXTENT * torch.sqrt(lam))
    tiles_x, tiles_y = tile_grid(camera)
    hi = torch.tensor([tiles_x, tiles_y], dtype=mean2d.dtype, device=mean2d.device)
    r = radius[:, None]
    # CUDA truncates toward zero and then clamps at 0; floor-then-clamp gives the same tiles and
    # stays defined for centres far off screen.
    tile_min = torch.minimum(torch.clamp(torch.floor((mean2d - r) / TILE), min=0.0), hi)
    tile_max = torch.minimum(torch.clamp(torch.floor((mean2d + r + (TILE - 1)) / TILE), min=0.0), hi)
    tile_min = torch.nan_to_num(tile_min, nan=0.0).to(torch.int64)
    tile_max = torch.nan_to_num(tile_max, nan=0.0).to(torch.int64)
    return radius.to(torch.int64), tile_min, tile_max


@dataclasses.dataclass(frozen=True)
class TileBins:
    """Gaussian ids sorted by (tile, depth), and each tile's slice of that list.

    - ``point_list [M]`` (int32): Gaussian ids, tile-major, front-to-back within a tile (ties by id,
      like the CUDA rasterizer's stable radix sort);
    - ``ranges [tiles_y * tiles_x, 2]`` (int32): ``[start, end)`` into ``point_list`` per tile.
    """

    point_list: torch.Tensor
    ranges: torch.Tensor
    tiles_x: int
    tiles_y: int

    @property
    def num_pairs(self) -> int:
        """How many (tile, Gaussian) pairs there are, i.e. ``len(point_list)``."""
        return int(self.point_list.shape[0])


def bin_gaussians(projected: ProjectedGaussians, camera: Camera) -> TileBins:
    """Duplicate each visible Gaussian into every tile its rectangle touches and sort by (tile, depth)."""
    tiles_x, tiles_y = tile_grid(camera)
    num_tiles = tiles_x * tiles_y
    device = projected.depth.device
    with torch.no_grad():
        n = projected.depth.shape[0]
        ids = torch.nonzero(projected.visible, as_tuple=False).squeeze(-1)
        tmin = projected.tile_min[ids]
        tmax = projected.tile_max[ids]
        extent = tmax - tmin  # [K, 2]
        counts = extent[:, 0] * extent[:, 1]
        total = int(counts.sum().item()) if ids.numel() else 0
        if total == 0:
            return TileBins(
                point_list=torch.zeros(0, dtype=torch.int32, device=device),
                ranges=torch.zeros(num_tiles, 2, dtype=torch.int32, device=device),
                tiles_x=tiles_x,
                tiles_y=tiles_y,
            )
        owner = torch.repeat_interleave(torch.arange(ids.numel(), device=device), counts)
        first = torch.cumsum(counts, 0) - counts
        local = torch.arange(total, device=device) - first[owner]
        width = extent[owner, 0]
        tx = tmin[owner, 0] + local % width
        ty = tmin[owner, 1] + local // width
        tile = ty * tiles_x + tx
        gid = ids[owner]
        # Depth rank with ties broken by Gaussian id (stable sort), then one sort on a unique key.
        order = torch.sort(projected.depth.detach(), stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n, device=device)
        key = tile * n + rank[gid]
        sorted_key, perm = torch.sort(key)
        point_list = gid[perm].to(torch.int32).contiguous()
        sorted_tile = sorted_key // n
        bounds = torch.arange(num_tiles + 1, device=device)
        edges = torch.searchsorted(sorted_tile, bounds)
        ranges = torch.stack([edges[:-1], edges[1:]], dim=-1).to(torch.int32).contiguous()
    return TileBins(point_list=point_list, ranges=ranges, tiles_x=tiles_x, tiles_y=tiles_y)
