"""The portable backend: torch preprocessing + Taichi tile compositing with a hand-written backward.

Forward (per pixel, front to back over its tile's depth-sorted Gaussians; Kerbl et al. 2023 eq. 3):

    alpha_j = min(0.99, o_j exp(power_j)),  power_j = -1/2 d^T conic_j d,  d = mean2d_j - pixel
    skip j if power_j > 0 or alpha_j < 1/255; stop before T would drop below 1e-4
    out = sum_j f_j alpha_j T_j + T_final * background,   T_j = prod_{k<j} (1 - alpha_k)

with features ``f = (r, g, b, view z)`` and background ``(bg, 0)``, so the fourth channel is the
alpha-weighted depth.  Alpha is ``1 - T_final``.

Backward walks each pixel's contributors back to front, recovering ``T_j = T_{j+1} / (1 - alpha_j)``
and keeping ``R_j``, the upstream-weighted sum of everything behind ``j`` (background and the
``T_final`` gradient included), so that

    dL/df_j     = alpha_j T_j g
    dL/dalpha_j = T_j (f_j . g) - R_j / (1 - alpha_j)

and the chain rule through ``alpha = o exp(power)`` gives opacity, mean2d and conic gradients.  The
loop over a tile's Gaussians is dynamic, which is exactly where Taichi's reverse-mode autodiff gave
wrong gradients (DESIGN.md section 2): hence the hand-written adjoint.

Kernels take torch tensors directly (zero-copy ndarray arguments, no Taichi fields that a later
``ti.reset()`` would invalidate) and are instantiated per dtype (float32 and float64): every
constant is built with the kernel's dtype, so ``default_fp`` does not matter.
"""

# No ``from __future__ import annotations``: Taichi reads the kernel annotations as objects.
import taichi as ti
import torch

from . import _runtime
from .conventions import ALPHA_MAX, ALPHA_MIN, TILE, TRANSMITTANCE_MIN
from .projection import TileBins

#: Features composited per Gaussian: red, green, blue, view-space z.
NUM_FEATURES = 4


@ti.func
def _falloff(mx, my, a, b, c, px, py, dt: ti.template()):
    """``(dx, dy, power)`` of a Gaussian at pixel centre ``(px, py)``."""
    dx = mx - px
    dy = my - py
    power = dt(-0.5) * (a * dx * dx + c * dy * dy) - b * dx * dy
    return dx, dy, power


@ti.kernel
def _composite_forward(
    ranges: ti.types.ndarray(dtype=ti.i32, ndim=2),
    point_list: ti.types.ndarray(dtype=ti.i32, ndim=1),
    mean2d: ti.types.ndarray(ndim=2),
    conic: ti.types.ndarray(ndim=2),
    opacity: ti.types.ndarray(ndim=1),
    features: ti.types.ndarray(ndim=2),
    background: ti.types.ndarray(ndim=1),
    out: ti.types.ndarray(ndim=3),
    final_t: ti.types.ndarray(ndim=2),
    n_contrib: ti.types.ndarray(dtype=ti.i32, ndim=2),
    tiles_x: ti.i32,
    dt: ti.template(),
):
    height = out.shape[1]
    width = out.shape[2]
    for py, px in ti.ndrange(height, width):
        tile = (py // TILE) * tiles_x + px // TILE
        start = ranges[tile, 0]
        end = ranges[tile, 1]
        pxf = ti.cast(px, dt)
        pyf = ti.cast(py, dt)
        t = dt(1.0)
        acc = ti.Vector([dt(0.0), dt(0.0), dt(0.0), dt(0.0)])
        last = start
        for k in range(start, end):
            g = point_list[k]
            dx, dy, power = _falloff(mean2d[g, 0], mean2d[g, 1], conic[g, 0], conic[g, 1], conic[g, 2], pxf, pyf, dt)
            if power <= dt(0.0):
                alpha = ti.min(dt(ALPHA_MAX), opacity[g] * ti.exp(power))
                if alpha >= dt(ALPHA_MIN):
                    test_t = t * (dt(1.0) - alpha)
                    if test_t < dt(TRANSMITTANCE_MIN):
                        break
                    for ch in ti.static(range(NUM_FEATURES)):
                        acc[ch] += features[g, ch] * alpha * t
                    t = test_t
                    last = k + 1
        for ch in ti.static(range(NUM_FEATURES)):
            out[ch, py, px] = acc[ch] + t * background[ch]
        final_t[py, px] = t
        n_contrib[py, px] = last


@ti.kernel
def _composite_backward(
    ranges: ti.types.ndarray(dtype=ti.i32, ndim=2),
    point_list: ti.types.ndarray(dtype=ti.i32, ndim=1),
    mean2d: ti.types.ndarray(ndim=2),
    conic: ti.types.ndarray(ndim=2),
    opacity: ti.types.ndarray(ndim=1),
    features: ti.types.ndarray(ndim=2),
    background: ti.types.ndarray(ndim=1),
    final_t: ti.types.ndarray(ndim=2),
    n_contrib: ti.types.ndarray(dtype=ti.i32, ndim=2),
    grad_out: ti.types.ndarray(ndim=3),
    grad_final_t: ti.types.ndarray(ndim=2),
    grad_mean2d: ti.types.ndarray(ndim=2),
    grad_conic: ti.types.ndarray(ndim=2),
    grad_opacity: ti.types.ndarray(ndim=1),
    grad_features: ti.types.ndarray(ndim=2),
    tiles_x: ti.i32,
    dt: ti.template(),
):
    height = grad_out.shape[1]
    width = grad_out.shape[2]
    for py, px in ti.ndrange(height, width):
        tile = (py // TILE) * tiles_x + px // TILE
        start = ranges[tile, 0]
        last = n_contrib[py, px]
        pxf = ti.cast(px, dt)
        pyf = ti.cast(py, dt)
        g = ti.Vector([grad_out[0, py, px], grad_out[1, py, px], grad_out[2, py, px], grad_out[3, py, px]])
        t = final_t[py, px]
        # Everything behind the current Gaussian, weighted by the upstream gradient: so far only
        # the background (times T_final) and alpha's own dependence on T_final.
        behind = t * grad_final_t[py, px]
        for ch in ti.static(range(NUM_FEATURES)):
            behind += t * background[ch] * g[ch]
        for i in range(last - start):
            k = last - 1 - i
            gid = point_list[k]
            dx, dy, power = _falloff(
                mean2d[gid, 0], mean2d[gid, 1], conic[gid, 0], conic[gid, 1], conic[gid, 2], pxf, pyf, dt
            )
            if power <= dt(0.0):
                falloff = ti.exp(power)
                raw = opacity[gid] * falloff
                alpha = ti.min(dt(ALPHA_MAX), raw)
                # The same skip test as the forward pass: only contributors are undone.
                if alpha >= dt(ALPHA_MIN):
                    one_minus = dt(1.0) - alpha
                    t = t / one_minus
                    weight = alpha * t
                    f_dot_g = dt(0.0)
                    for ch in ti.static(range(NUM_FEATURES)):
                        f_dot_g += features[gid, ch] * g[ch]
                        grad_features[gid, ch] += weight * g[ch]
                    dl_dalpha = t * f_dot_g - behind / one_minus
                    behind += f_dot_g * weight
                    # alpha = min(0.99, raw): no gradient through the clamp (the CUDA rasterizer
                    # passes one anyway; the exact derivative is zero there).
                    if raw <= dt(ALPHA_MAX):
                        grad_opacity[gid] += falloff * dl_dalpha
                        dl_dpower = raw * dl_dalpha
                        a = conic[gid, 0]
                        b = conic[gid, 1]
                        c = conic[gid, 2]
                        grad_mean2d[gid, 0] += -dl_dpower * (a * dx + b * dy)
                        grad_mean2d[gid, 1] += -dl_dpower * (c * dy + b * dx)
                        grad_conic[gid, 0] += dt(-0.5) * dl_dpower * dx * dx
                        grad_conic[gid, 1] += -dl_dpower * dx * dy
                        grad_conic[gid, 2] += dt(-0.5) * dl_dpower * dy * dy


def _taichi_dtype(dtype: torch.dtype):
    if dtype == torch.float32:
        return ti.f32
    if dtype == torch.float64:
        return ti.f64
    raise ValueError(f"the portable rasterizer supports float32 and float64, got {dtype}")


class CompositeFunction(torch.autograd.Function):
    """Tile compositing as an autograd op: ``(mean2d, conic, opacity, features, background) -> (image, T_final)``.

    Shapes: ``mean2d [N, 2]``, ``conic [N, 3]``, ``opacity [N]``, ``features [N, 4]``, ``background [4]``
    -> ``image [4, H, W]`` (background included) and ``T_final [H, W]``.
    """

    @staticmethod
    def forward(ctx, mean2d, conic, opacity, features, background, bins: TileBins, height: int, width: int):
        dtype, device = mean2d.dtype, mean2d.device
        kernel_device = _runtime.ensure_runtime(device)
        tdt = _taichi_dtype(dtype)
        args = [t.detach().to(kernel_device).contiguous() for t in (mean2d, conic, opacity, features, background)]
        ranges = bins.ranges.to(kernel_device)
        point_list = bins.point_list.to(kernel_device)
        out = torch.empty(NUM_FEATURES, height, width, dtype=dtype, device=kernel_device)
        final_t = torch.empty(height, width, dtype=dtype, device=kernel_device)
        n_contrib = torch.empty(height, width, dtype=torch.int32, device=kernel_device)
        _composite_forward(ranges, point_list, *args, out, final_t, n_contrib, bins.tiles_x, tdt)
        _runtime.synchronize(kernel_device)
        ctx.save_for_backward(*args, final_t, n_contrib, ranges, point_list)
        ctx.tiles_x = bins.tiles_x
        ctx.input_device = device
        return out.to(device), final_t.to(device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_final_t):
        mean2d, conic, opacity, features, background, final_t, n_contrib, ranges, point_list = ctx.saved_tensors
        # final_t is also an output: unpacked it carries autograd history that Taichi must not see.
        final_t = final_t.detach()
        kernel_device = final_t.device
        dtype = final_t.dtype
        if grad_out is None:
            grad_out = torch.zeros(NUM_FEATURES, *final_t.shape, dtype=dtype, device=kernel_device)
        if grad_final_t is None:
            grad_final_t = torch.zeros_like(final_t)
        grad_out = grad_out.to(kernel_device, dtype).contiguous()
        grad_final_t = grad_final_t.to(kernel_device, dtype).contiguous()
        # Taichi never clears gradient buffers: fresh zeros every call.
        g_mean2d = torch.zeros_like(mean2d)
        g_conic = torch.zeros_like(conic)
        g_opacity = torch.zeros_like(opacity)
        g_features = torch.zeros_like(features)
        _composite_backward(
            ranges,
            point_list,
            mean2d,
            conic,
            opacity,
            features,
            background,
            final_t,
            n_contrib,
            grad_out,
            grad_final_t,
            g_mean2d,
            g_conic,
            g_opacity,
            g_features,
            ctx.tiles_x,
            _taichi_dtype(dtype),
        )
        _runtime.synchronize(kernel_device)
        g_background = (final_t[None] * grad_out).sum(dim=(1, 2))
        dev = ctx.input_device
        return (
            g_mean2d.to(dev),
            g_conic.to(dev),
            g_opacity.to(dev),
            g_features.to(dev),
            g_background.to(dev),
            None,
            None,
            None,
        )
