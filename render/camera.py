"""Pinhole cameras and the one conversion to the 3DGS rasterizer's matrices.

Conventions (those of the 3DGS CUDA rasterizer, Kerbl et al. 2023, which inherits COLMAP's):

- camera frame: x right, y down, z forward (the viewing direction); view-space z is depth;
- pixel (column u, row v) has its centre at integer coordinates, row 0 at the top, so a point on
  the optical axis lands on ``((W - 1) / 2, (H - 1) / 2)``;
- square pixels: ``tan(fov_x / 2) = tan(fov_y / 2) * W / H`` and ``focal_x == focal_y``;
- the rasterizer takes its matrices *transposed* (row-vector convention: ``p_row @ viewmatrix``),
  ``viewmatrix = world_to_camera^T`` and ``projmatrix = (projection @ world_to_camera)^T`` where
  ``projection`` maps view z in [near, far] to NDC z in [0, 1] (``getProjectionMatrix`` of the 3DGS
  code base, ``z_sign = +1``).

Every backend (portable, CUDA, the dense reference) takes its geometry from here, so the conventions
live in one place.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Sequence

import torch

Vec3 = tuple[float, float, float]


def _vec3(name: str, value: Sequence[float]) -> Vec3:
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        raise ValueError(f"camera {name} must be 3 numbers, got {value!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"camera {name} must be 3 finite numbers, got {value!r}")
    return out  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class GaussianSplattingMatrices:
    """What the 3DGS CUDA rasterizer's ``GaussianRasterizationSettings`` wants from a camera.

    ``viewmatrix`` and ``projmatrix`` are ``[4, 4]`` and transposed (row-vector convention);
    ``campos`` is the camera centre ``[3]`` in world coordinates.
    """

    viewmatrix: torch.Tensor
    projmatrix: torch.Tensor
    tanfovx: float
    tanfovy: float
    campos: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Camera:
    """A pinhole camera looking from ``eye`` at ``look_at`` with ``up`` roughly up in the image.

    ``fov_y_deg`` is the full vertical field of view in degrees; ``width``/``height`` in pixels;
    ``near``/``far`` only enter the projection matrix of the 3DGS rasterizer (whose near cull is
    hard-coded at view z 0.2 regardless, see ``NEAR_CULL``).
    """

    eye: Vec3
    look_at: Vec3
    up: Vec3 = (0.0, 1.0, 0.0)
    fov_y_deg: float = 45.0
    width: int = 128
    height: int = 128
    near: float = 0.01
    far: float = 100.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "eye", _vec3("eye", self.eye))
        object.__setattr__(self, "look_at", _vec3("look_at", self.look_at))
        object.__setattr__(self, "up", _vec3("up", self.up))
        if not (0.0 < float(self.fov_y_deg) < 180.0):
            raise ValueError(f"camera fov_y_deg must lie in (0, 180), got {self.fov_y_deg}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or int(v) != v or int(v) < 1:
                raise ValueError(f"camera {name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if not (0.0 < self.near < self.far and math.isfinite(self.far)):
            raise ValueError(f"camera needs 0 < near < far, got near={self.near}, far={self.far}")
        f = [b - a for a, b in zip(self.eye, self.look_at)]
        if _norm(f) < 1e-12:
            raise ValueError("camera eye and look_at coincide")
        # A zero up, or one parallel to the viewing direction, leaves the image's roll undefined.
        if _norm(_cross(f, self.up)) <= 1e-9 * _norm(f) * _norm(self.up):
            raise ValueError(f"camera up {self.up} is zero or parallel to the viewing direction")

    # -- intrinsics -----------------------------------------------------------------------------
    @property
    def tan_half_fov_y(self) -> float:
        return math.tan(math.radians(self.fov_y_deg) * 0.5)

    @property
    def tan_half_fov_x(self) -> float:
        # Square pixels: the horizontal extent follows the aspect ratio.
        return self.tan_half_fov_y * self.width / self.height

    @property
    def focal_x(self) -> float:
        """Focal length in pixels along x (3DGS: ``W / (2 tan(fov_x / 2))``)."""
        return self.width / (2.0 * self.tan_half_fov_x)

    @property
    def focal_y(self) -> float:
        return self.height / (2.0 * self.tan_half_fov_y)

    @property
    def principal_point(self) -> tuple[float, float]:
        """``(cx, cy)``: where the optical axis lands, with pixel centres at integers.

        The 3DGS rasterizer maps NDC to pixels by ``((ndc + 1) * S - 1) / 2``, i.e. ``cx = (W - 1) / 2``.
        """
        return (self.width - 1) * 0.5, (self.height - 1) * 0.5

    # -- extrinsics -----------------------------------------------------------------------------
    def rotation(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """World -> camera rotation ``[3, 3]``; its rows are the camera's x (right), y (down), z (forward) axes."""
        rows = self._axes()
        return torch.tensor(rows, dtype=dtype, device=device)

    def translation(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """``t [3]`` with ``x_cam = R x_world + t`` (so ``t = -R eye``)."""
        rows = self._axes()
        t = [-sum(r[i] * self.eye[i] for i in range(3)) for r in rows]
        return torch.tensor(t, dtype=dtype, device=device)

    def world_to_camera(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """The ``[4, 4]`` world -> camera matrix ``[[R, t], [0, 1]]`` (column-vector convention)."""
        m = torch.eye(4, dtype=dtype, device=device)
        m[:3, :3] = self.rotation(dtype, device)
        m[:3, 3] = self.translation(dtype, device)
        return m

    def projection(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """The ``[4, 4]`` view -> clip matrix of the 3DGS code base (column-vector convention).

        Clip w equals view z; after division x, y lie in [-1, 1] inside the frustum and z maps
        [near, far] to [0, 1].
        """
        n, f = float(self.near), float(self.far)
        p = torch.zeros(4, 4, dtype=dtype, device=device)
        p[0, 0] = 1.0 / self.tan_half_fov_x  # = 2n / (right - left) for a centred frustum
        p[1, 1] = 1.0 / self.tan_half_fov_y
        p[2, 2] = f / (f - n)
        p[2, 3] = -(f * n) / (f - n)
        p[3, 2] = 1.0
        return p

    def gaussian_splatting_matrices(self, dtype=torch.float32, device=None) -> GaussianSplattingMatrices:
        """The camera as the 3DGS CUDA rasterizer takes it (matrices transposed, row-vector convention)."""
        w2c = self.world_to_camera(torch.float64)
        full = self.projection(torch.float64) @ w2c
        return GaussianSplattingMatrices(
            viewmatrix=w2c.T.contiguous().to(dtype=dtype, device=device),
            projmatrix=full.T.contiguous().to(dtype=dtype, device=device),
            tanfovx=self.tan_half_fov_x,
            tanfovy=self.tan_half_fov_y,
            campos=torch.tensor(self.eye, dtype=dtype, device=device),
        )

    # -- helpers used by every backend ------------------------------------------------------------
    def to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """World points ``[N, 3]`` -> camera-frame points ``[N, 3]`` (differentiable)."""
        r = self.rotation(points.dtype, points.device)
        t = self.translation(points.dtype, points.device)
        return points @ r.T + t

    def project(self, points_cam: torch.Tensor) -> torch.Tensor:
        """Camera-frame points ``[N, 3]`` (z > 0) -> pixel coordinates ``[N, 2]`` (u right, v down)."""
        cx, cy = self.principal_point
        z = points_cam[:, 2]
        u = self.focal_x * points_cam[:, 0] / z + cx
        v = self.focal_y * points_cam[:, 1] / z + cy
        return torch.stack([u, v], dim=-1)

    def _axes(self) -> list[list[float]]:
        forward = _normalize([b - a for a, b in zip(self.eye, self.look_at)])
        right = _normalize(_cross(forward, self.up))
        # y down: forward x right points down in a right-handed frame (x right, y down, z forward).
        down = _cross(forward, right)
        return [right, down, forward]


def _cross(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _norm(a: Sequence[float]) -> float:
    return math.sqrt(sum(c * c for c in a))


def _normalize(a: Sequence[float]) -> list[float]:
    n = _norm(a)
    return [c / n for c in a]
