"""The ``cuda`` backend: the official 3DGS rasterizer (graphdeco-inria/diff-gaussian-rasterization).

It is an optional extra - built from source, non-commercial licence - that is imported only when
asked for and never vendored.  Its Python wrapper differs by branch:

- ``main`` (2023): ``GaussianRasterizationSettings`` has 12 fields (image_height, image_width,
  tanfovx, tanfovy, bg, scale_modifier, viewmatrix, projmatrix, sh_degree, campos, prefiltered,
  debug) and the rasterizer returns ``(color, radii)``;
- ``dr_aa`` (what gaussian-splatting uses today): adds ``antialiasing`` and returns
  ``(color, radii, invdepths)``;
- forks drop or add fields (e.g. no ``debug``).

We fill the settings by field name (``_fields`` of the namedtuple) and take element 0 of the result,
so all of these work; a settings field we do not know is an error that names it.

The rasterizer has no alpha or (alpha-weighted) depth output, so a second pass renders the colours
``(1, z, 0)`` on black: its first channel is ``1 - T_final`` and its second ``sum_j w_j z_j``, the
same depth convention as the portable backend.  The background is composited in torch as
``C + T_final * bg`` (identical to what the rasterizer does internally) so that it gets a gradient.
"""

from __future__ import annotations

import torch

from .camera import Camera

_INSTALL_HINT = (
    "diff_gaussian_rasterization is not installed (build it from "
    "https://github.com/graphdeco-inria/diff-gaussian-rasterization; non-commercial licence)"
)


def _import():
    import diff_gaussian_rasterization

    return diff_gaussian_rasterization


def availability(device: torch.device | None = None) -> tuple[bool, str]:
    """``(True, "")`` if the CUDA rasterizer can render tensors on ``device``, else ``(False, reason)``."""
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    if device is not None and device.type != "cuda":
        return False, f"the tensors are on {device}, the CUDA rasterizer needs CUDA tensors"
    try:
        _import()
    except ImportError as exc:
        return False, f"{_INSTALL_HINT}: {exc}"
    return True, ""


def make_settings(module, camera: Camera, device: torch.device):
    """A ``GaussianRasterizationSettings`` for ``camera``, whichever branch of the package is installed."""
    cls = module.GaussianRasterizationSettings
    mats = camera.gaussian_splatting_matrices(torch.float32, device)
    known = {
        "image_height": camera.height,
        "image_width": camera.width,
        "tanfovx": mats.tanfovx,
        "tanfovy": mats.tanfovy,
        # Black: the background is composited in torch so that it receives a gradient.
        "bg": torch.zeros(3, dtype=torch.float32, device=device),
        "scale_modifier": 1.0,
        "viewmatrix": mats.viewmatrix,
        "projmatrix": mats.projmatrix,
        "sh_degree": 0,
        "campos": mats.campos,
        "prefiltered": False,
        "debug": False,
        # dr_aa's "Mip-Splatting"-style opacity compensation changes the image; off keeps the
        # conventions of the portable backend.
        "antialiasing": False,
    }
    fields = tuple(getattr(cls, "_fields", ()))
    unknown = [f for f in fields if f not in known]
    if not fields or unknown:
        raise RuntimeError(
            f"unsupported diff_gaussian_rasterization API: settings fields {fields}, unknown {unknown}"
        )
    return cls(**{f: known[f] for f in fields})


def _symmetric_upper(covariances: torch.Tensor) -> torch.Tensor:
    """``[N, 3, 3]`` -> the ``[N, 6]`` upper triangle (xx, xy, xz, yy, yz, zz) the rasterizer reads.

    The symmetric part is taken first, so an off-diagonal gradient (which the CUDA backward reports
    for the pair) is split evenly between the two entries, as in the portable backend.
    """
    sym = 0.5 * (covariances + covariances.transpose(-1, -2))
    rows = torch.tensor([0, 0, 0, 1, 1, 2], device=covariances.device)
    cols = torch.tensor([0, 1, 2, 1, 2, 2], device=covariances.device)
    return sym[:, rows, cols]


def rasterize_cuda(means, covariances, colors, opacities, camera: Camera, background):
    """Render with the CUDA rasterizer; shapes as ``rasterize``. Returns ``(color, alpha, depth)``."""
    module = _import()
    dtype = means.dtype
    device = means.device
    settings = make_settings(module, camera, device)
    rasterizer = module.GaussianRasterizer(raster_settings=settings)
    f32 = torch.float32
    means32 = means.to(f32).contiguous()
    cov6 = _symmetric_upper(covariances.to(f32)).contiguous()
    opac = opacities.to(f32).reshape(-1, 1).contiguous()
    # The 2D-means gradient holder of the 3DGS API (used there for densification); unused here.
    means2d = torch.zeros_like(means32)

    def one_pass(features: torch.Tensor) -> torch.Tensor:
        out = rasterizer(
            means3D=means32,
            means2D=means2d,
            opacities=opac,
            colors_precomp=features.contiguous(),
            cov3D_precomp=cov6,
        )
        return out[0] if isinstance(out, (tuple, list)) else out

    color = one_pass(colors.to(f32))
    view_z = camera.to_camera(means32)[:, 2]
    aux = one_pass(torch.stack([torch.ones_like(view_z), view_z, torch.zeros_like(view_z)], dim=-1))
    alpha = aux[0:1]
    depth = aux[1:2]
    color = color + (1.0 - alpha) * background.to(f32)[:, None, None]
    return color.to(dtype), alpha.to(dtype), depth.to(dtype)
