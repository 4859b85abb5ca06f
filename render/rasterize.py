"""One public ``rasterize`` with backends behind it: ``portable`` (Taichi), ``cuda`` (official 3DGS), ``auto``.

Both backends follow the conventions of the 3DGS CUDA rasterizer (Kerbl et al. 2023; see
``conventions.py``) so that they render the same image: EWA projection with a 0.3 px^2 low-pass,
16x16 tiles touched by the 3-sigma box, near cull at view z 0.2, depth-sorted front-to-back
compositing, alpha clamped at 0.99, contributions below 1/255 skipped, stop when transmittance
would drop below 1e-4.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from .camera import Camera

BACKENDS = ("auto", "portable", "cuda")


@dataclasses.dataclass(frozen=True)
class RenderOutput:
    """What ``rasterize`` returns (H, W from the camera).

    - ``color [3, H, W]``: composited colour, background included;
    - ``alpha [1, H, W]``: accumulated opacity ``1 - T_final`` (the silhouette);
    - ``depth [1, H, W]``: alpha-weighted view-space z, ``sum_j alpha_j T_j z_j`` - *not* divided by
      alpha, so it is 0 where nothing was drawn; ``expected_depth()`` divides;
    - ``backend``: which backend rendered it (``"portable"`` or ``"cuda"``).
    """

    color: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    backend: str

    def expected_depth(self, eps: float = 1e-6) -> torch.Tensor:
        """``depth / alpha`` ``[1, H, W]``: the mean view z of what was drawn (0 where alpha < eps)."""
        safe = torch.clamp(self.alpha, min=eps)
        return torch.where(self.alpha >= eps, self.depth / safe, torch.zeros_like(self.depth))


def cuda_backend_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether the ``cuda`` backend can run (for tensors on ``device``), and if not, why."""
    from . import _cuda

    return _cuda.availability(torch.device(device) if device is not None else None)


def rasterize(
    means: torch.Tensor,
    covariances: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    camera: Camera,
    background: torch.Tensor | Sequence[float] | None = None,
    backend: str = "auto",
) -> RenderOutput:
    """Render 3D Gaussians; differentiable with respect to every Gaussian input and the background.

    Args:
        means: ``[N, 3]`` centres in world coordinates.
        covariances: ``[N, 3, 3]`` world-frame covariances (m^2); only the symmetric part is used
            and the gradient is symmetric.
        colors: ``[N, 3]`` RGB (not clamped).
        opacities: ``[N]`` in [0, 1].
        camera: the view (see ``Camera`` for the pixel and frame conventions).
        background: ``[3]`` RGB behind everything (default black).
        backend: ``"portable"`` (Taichi, CPU or CUDA, float32 or float64), ``"cuda"`` (the official
            3DGS rasterizer; float32 CUDA tensors, needs ``diff_gaussian_rasterization``) or
            ``"auto"`` (``cuda`` when possible, else ``portable``).

    Returns:
        ``RenderOutput`` with ``color [3, H, W]``, ``alpha [1, H, W]``, ``depth [1, H, W]``.

    Raises:
        ValueError: bad shapes, dtypes, devices, non-finite values, unknown backend, or ``cuda``
            requested where it cannot run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if not isinstance(camera, Camera):
        raise ValueError(f"camera must be a dreamcloth.render.Camera, got {type(camera).__name__}")
    background = _check_inputs(means, covariances, colors, opacities, background)
    if backend == "auto":
        ok, _ = cuda_backend_available(means.device)
        backend = "cuda" if ok else "portable"
    if backend == "cuda":
        from . import _cuda

        ok, why = _cuda.availability(means.device)
        if not ok:
            raise ValueError(f"backend='cuda' cannot run: {why}")
        color, alpha, depth = _cuda.rasterize_cuda(means, covariances, colors, opacities, camera, background)
        return RenderOutput(color=color, alpha=alpha, depth=depth, backend="cuda")
    color, alpha, depth = _rasterize_portable(means, covariances, colors, opacities, camera, background)
    return RenderOutput(color=color, alpha=alpha, depth=depth, backend="portable")


def _rasterize_portable(means, covariances, colors, opacities, camera, background):
    from ._portable import CompositeFunction
    from .projection import bin_gaussians, project_gaussians

    projected = project_gaussians(means, covariances, camera)
    bins = bin_gaussians(projected, camera)
    # The depth channel composites view z like a colour, with a zero background.
    features = torch.cat([colors, projected.depth[:, None]], dim=-1)
    background4 = torch.cat([background, background.new_zeros(1)])
    image, final_t = CompositeFunction.apply(
        projected.mean2d, projected.conic, opacities, features, background4, bins, camera.height, camera.width
    )
    return image[:3], (1.0 - final_t)[None], image[3:4]


def _check_inputs(means, covariances, colors, opacities, background) -> torch.Tensor:
    tensors = {"means": means, "covariances": covariances, "colors": colors, "opacities": opacities}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    n = means.shape[0] if means.ndim == 2 else -1
    expected = {"means": (n, 3), "covariances": (n, 3, 3), "colors": (n, 3), "opacities": (n,)}
    for name, shape in expected.items():
        if n < 0 or tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{name} must have shape {_shape_text(shape)} with N = len(means); got {tuple(tensors[name].shape)}"
            )
    dtypes = {t.dtype for t in tensors.values()}
    devices = {t.device for t in tensors.values()}
    if len(dtypes) > 1 or len(devices) > 1:
        raise ValueError(
            "means, covariances, colors and opacities must share one dtype and device; got "
            + ", ".join(f"{k}: {t.dtype} on {t.device}" for k, t in tensors.items())
        )
    with torch.no_grad():
        for name, t in tensors.items():
            if t.numel() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or infinite values")
    if background is None:
        background = torch.zeros(3, dtype=means.dtype, device=means.device)
    elif not isinstance(background, torch.Tensor):
        background = torch.tensor([float(v) for v in background], dtype=means.dtype, device=means.device)
    else:
        background = background.to(dtype=means.dtype, device=means.device)
    if tuple(background.shape) != (3,):
        raise ValueError(f"background must have shape [3], got {tuple(background.shape)}")
    with torch.no_grad():
        if not bool(torch.isfinite(background).all()):
            raise ValueError(f"background contains NaN or infinite values: {background.tolist()}")
        if opacities.numel() and not bool(((opacities >= 0) & (opacities <= 1)).all()):
            raise ValueError(f"opacities must lie in [0, 1], got {float(opacities.min()):.4g}..{float(opacities.max()):.4g}")
    return background


def _shape_text(shape) -> str:
    return "[" + ", ".join("N" if i == 0 else str(s) for i, s in enumerate(shape)) + "]"
