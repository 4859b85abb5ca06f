"""Image losses of the fit: L1, D-SSIM and a soft-IoU silhouette term.

SSIM is written out here (a Gaussian-window SSIM, Wang et al. 2004, "Image quality assessment: from
error visibility to structural similarity", with their constants) rather than taken from a
metrics package: it is 15 lines of convolutions and keeps the dependency list short.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=8)
def _window(size: int, sigma: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    ax = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two image batches ``[B, 3, H, W]`` in [0, 1] (Gaussian window 11, sigma 1.5)."""
    w = _window(size, sigma, a.dtype, str(a.device))
    pad = size // 2

    def blur(x):
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), w, groups=3)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def soft_iou_loss(alpha: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - soft IoU of a rendered alpha and a target mask (both ``[B, 1, H, W]`` in [0, 1])."""
    inter = (alpha * mask).sum()
    union = (alpha + mask - alpha * mask).sum()
    return 1 - inter / (union + eps)


def soft_foreground(color: torch.Tensor, background: torch.Tensor, threshold: float = 0.08, width: float = 0.02) -> torch.Tensor:
    """A differentiable version of ``common.foreground_masks``: sigmoid of the colour distance to the
    background minus the same threshold.  ``color [B,3,H,W]`` -> ``[B,1,H,W]``.

    Rendered silhouettes must be cut the way the video's masks were: a rendered alpha compared with
    masks thresholded from colours counts faint edge pixels differently, and that bias moved fitted
    parameters by 10-20% here.
    """
    d = (color - background.view(1, 3, 1, 1)).abs().amax(dim=1, keepdim=True)
    return torch.sigmoid((d - threshold) / width)


def image_loss(color: torch.Tensor, alpha: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               w_dssim: float = 0.2, w_mask: float = 1.0) -> torch.Tensor:
    """L1 + w_dssim (1 - SSIM) / 2 + w_mask (1 - soft IoU) over a batch of frames ``[B, 3|1, H, W]``.

    ``alpha`` is the rendered silhouette as comparable with ``mask`` (see ``soft_foreground``)."""
    l1 = (color - target).abs().mean()
    dssim = (1 - ssim(color, target)) / 2
    return l1 + w_dssim * dssim + w_mask * soft_iou_loss(alpha, mask)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Jaccard index of two binary masks."""
    p, t = pred > 0.5, target > 0.5
    union = (p | t).sum()
    return float((p & t).sum()) / float(union) if union > 0 else 1.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of images in [0, 1]."""
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()
