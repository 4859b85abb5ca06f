"""Gaussians from the simulation and a differentiable rasterizer (portable Taichi and CUDA 3DGS).

Public surface:

- ``Camera``: pinhole camera, and the one conversion to the 3DGS rasterizer's matrices;
- ``cloth_gaussians`` / ``cloth_sampling`` / ``solid_gaussians``: Gaussians from simulation state
  (``SILHOUETTE_ALPHA``: the alpha at which a render's silhouette is cut);
- ``rasterize`` -> ``RenderOutput`` (colour, alpha, depth), backends ``portable``, ``cuda``, ``auto``;
- ``two_sided_colors`` / ``front_facing``: two-sided cloth (each Gaussian shows the side facing the camera);
- ``project_gaussians``: the EWA projection used by the portable backend (exposed for diagnostics);
- ``write_video`` and friends (``video``): mp4/PNG output and comparison helpers.

Taichi is imported lazily: importing this package never starts a Taichi runtime.
"""

from .camera import Camera, GaussianSplattingMatrices
from .gaussians import (
    ClothGaussians,
    ClothSampling,
    SILHOUETTE_ALPHA,
    GaussianGeometry,
    cloth_gaussians,
    cloth_sampling,
    solid_gaussians,
)
from .projection import ProjectedGaussians, project_gaussians
from .rasterize import BACKENDS, RenderOutput, cuda_backend_available, rasterize
from .shading import TWO_SIDED_SHARPNESS, front_facing, two_sided_colors
from .video import difference, overlay, side_by_side, to_uint8_frames, write_png_frames, write_video

__all__ = [
    "BACKENDS",
    "Camera",
    "ClothGaussians",
    "ClothSampling",
    "GaussianGeometry",
    "GaussianSplattingMatrices",
    "ProjectedGaussians",
    "RenderOutput",
    "SILHOUETTE_ALPHA",
    "TWO_SIDED_SHARPNESS",
    "cloth_gaussians",
    "cloth_sampling",
    "cuda_backend_available",
    "difference",
    "front_facing",
    "overlay",
    "project_gaussians",
    "rasterize",
    "side_by_side",
    "solid_gaussians",
    "to_uint8_frames",
    "two_sided_colors",
    "write_png_frames",
    "write_video",
]
