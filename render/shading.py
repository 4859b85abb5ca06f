"""Two-sided cloth: each Gaussian shows the colour of the side of its surface that faces the camera.

A sheet's Gaussians are flat, so which side the camera sees is the sign of ``n . (eye - mean)``.
A hard switch on that sign would have no gradient (and would flicker where the sheet is edge-on),
so the two colours are blended by ``w = sigmoid(sharpness * cos)``, with ``cos`` the cosine between
the normal and the direction to the camera: at the default sharpness 25 a Gaussian tilted more
than ~11 degrees away from edge-on shows 99% of one side, and the transition is smooth, so the
colours' gradient reaches the geometry.  Plain torch: it runs before either rasterizer backend.
"""

from __future__ import annotations

import torch

from .camera import Camera

#: Slope of the front/back blend in the cosine of the viewing angle (see the module docstring).
TWO_SIDED_SHARPNESS = 25.0


def front_facing(normals: torch.Tensor, means: torch.Tensor, camera: Camera, sharpness: float = TWO_SIDED_SHARPNESS) -> torch.Tensor:
    """How much each Gaussian shows its front: ``[N]`` in (0, 1), ``sigmoid(sharpness * cos)``.

    Args:
        normals: ``[N, 3]`` unit normals pointing out of the front side (``ClothGaussians.normals``).
        means: ``[N, 3]`` Gaussian centres.
        camera: the view; the camera centre is ``camera.eye``.
        sharpness: slope in the cosine (> 0); larger is sharper.
    """
    if not sharpness > 0:
        raise ValueError(f"sharpness must be positive, got {sharpness}")
    eye = torch.tensor(camera.eye, dtype=means.dtype, device=means.device)
    to_eye = eye - means
    # The floor only matters for a Gaussian at the camera centre, which the near cull hides anyway.
    dist = torch.sqrt(torch.clamp((to_eye * to_eye).sum(-1), min=torch.finfo(means.dtype).tiny))
    cos = (normals * to_eye).sum(-1) / dist
    return torch.sigmoid(sharpness * cos)


def two_sided_colors(
    front: torch.Tensor,
    back: torch.Tensor,
    normals: torch.Tensor,
    means: torch.Tensor,
    camera: Camera,
    sharpness: float = TWO_SIDED_SHARPNESS,
) -> torch.Tensor:
    """Per-Gaussian colours ``[N, C]`` as seen from ``camera``: ``w front + (1 - w) back``.

    ``front``/``back``: ``[N, C]`` (or broadcastable) colours of the two sides; ``w`` is
    ``front_facing(normals, means, camera, sharpness)``.  Differentiable in every tensor argument.
    """
    w = front_facing(normals, means, camera, sharpness)[:, None]
    return back + w * (front - back)
