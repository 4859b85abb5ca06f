"""Image-quality figures for generated and predicted clips: PSNR and SSIM, in pure torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per clip.

    pred, target: [B, T, C, H, W] in [0, data_range]. Returns [B] (over all frames of each clip).
    """
    mse = (pred.float() - target.float()).square().flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, Gaussian 11x11 window, sigma 1.5) per clip.

    pred, target: [B, T, C, H, W]. Returns [B], the mean SSIM over frames, channels and pixels.
    The window shrinks to the frame size for small frames.
    """
    b, t, c, h, w = pred.shape
    win = min(window, h, w)
    if win % 2 == 0:
        win -= 1
    k = _gaussian_window(win, sigma, pred.device, torch.float32).expand(c, 1, win, win)
    x = pred.reshape(b * t, c, h, w).float()
    y = target.reshape(b * t, c, h, w).float()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x = F.conv2d(x, k, groups=c)
    mu_y = F.conv2d(y, k, groups=c)
    sxx = F.conv2d(x * x, k, groups=c) - mu_x**2
    syy = F.conv2d(y * y, k, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, k, groups=c) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.reshape(b, -1).mean(dim=1)
