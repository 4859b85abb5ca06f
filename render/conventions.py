"""The numerical conventions of the 3DGS CUDA rasterizer (Kerbl et al. 2023), shared by every backend.

Values are those of graphdeco-inria/diff-gaussian-rasterization (``forward.cu``, ``auxiliary.h``,
``config.h``), so that the portable backend and the dense reference render the same image as it.
"""

from __future__ import annotations

#: Gaussians whose centre has view-space z <= this are culled (``in_frustum`` in ``auxiliary.h``).
NEAR_CULL = 0.2

#: Screen-space low-pass filter: this variance (pixels^2) is added to the diagonal of every
#: projected 2D covariance, so that every Gaussian is at least about one pixel wide (EWA splatting,
#: Zwicker et al. 2002, the "reconstruction kernel * low-pass" convolution; ``computeCov2D``).
LOW_PASS_VARIANCE = 0.3

#: The Jacobian of the perspective projection is evaluated at the centre clamped to 1.3x the
#: half field of view, which keeps the local affine approximation of EWA sane for Gaussians far
#: outside the frustum (``computeCov2D``).  The centre itself is not clamped.
JACOBIAN_FOV_CLAMP = 1.3

#: Image tiles are TILE x TILE pixels (``BLOCK_X = BLOCK_Y = 16`` in ``config.h``); a Gaussian is
#: composited only in tiles that its bounding square of radius ``ceil(3 sqrt(lambda_max))`` touches.
TILE = 16
SIGMA_EXTENT = 3.0
#: Floor on the eigenvalue discriminant when computing the radius (``max(0.1, mid^2 - det)``).
RADIUS_DISCRIMINANT_FLOOR = 0.1

#: Opacity times Gaussian falloff is clamped to this (3DGS paper, appendix: numerical stability).
ALPHA_MAX = 0.99
#: Contributions with alpha below this are skipped (they are invisible in an 8-bit image).
ALPHA_MIN = 1.0 / 255.0
#: Front-to-back compositing stops before a Gaussian would push transmittance below this.
TRANSMITTANCE_MIN = 1e-4
