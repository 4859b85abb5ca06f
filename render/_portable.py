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

Data layout: before the kernels run, each (tile, Gaussian) pair's data is gathered in torch into one
contiguous row ``[mx, my, a, b, c, opacity, skip_below, r, g, b, z]`` in (tile, depth) order, so the
inner loops stream through memory instead of chasing ids.  ``skip_below`` is a conservative bound
``log(1/255) - log(opacity) - 1e-3``: a power below it gives alpha < 1/255 even with rounding, so exp
is skipped without changing which Gaussians contribute.  The backward writes per-pair gradient
rows; torch's ``index_add_`` sums them per Gaussian.

Two loop orders give bit-identical results (each pixel sees the same Gaussians in the same order,
through the same ``_alpha``):

- CPU (few threads): one thread per tile, Gaussians outer, pixels inner - and only the pixels of
  the Gaussian's *alpha box* (where ``alpha >= 1/255`` is possible, from ``d^T conic d <=
  2 log(255 o)``, with a margin), so the work follows the area actually covered rather than
  tile area x list length.  Per-pixel state (T, sums, last contributor) lives in the output
  arrays; the backward sums each Gaussian's gradient over its pixels in registers: no atomics.
- GPU (many threads): one thread per pixel, Gaussians inner, atomic adds in the backward.

Kernels take torch tensors directly (zero-copy ndarray arguments, no Taichi fields that a later
``ti.reset()`` would invalidate) and are instantiated per dtype (float32 and float64): every
constant is built with the kernel's dtype, so ``default_fp`` does not matter.
"""

# No ``from __future__ import annotations``: Taichi reads the kernel annotations as objects.
import math

import taichi as ti
import torch

from . import _runtime
from .conventions import ALPHA_MAX, ALPHA_MIN, TILE, TRANSMITTANCE_MIN
from .projection import TileBins

#: Features composited per Gaussian: red, green, blue, view-space z.
NUM_FEATURES = 4
#: Columns of the packed per-pair rows (see the module docstring).
_MX, _MY, _A, _B, _C, _O, _SKIP, _F0 = range(8)
PAIR_COLUMNS = _F0 + NUM_FEATURES
#: Columns of the per-pair gradient rows: mean2d (2), conic (3), opacity, features (4).
_G_MEAN, _G_CONIC, _G_OPACITY, _G_FEATURES = 0, 2, 5, 6
GRAD_COLUMNS = _G_FEATURES + NUM_FEATURES
#: Safety margin (relative, in log space) of the exp-free tests; far above float32 rounding.
_SKIP_MARGIN = 1e-3


@ti.func
def _tile_pixels(tile, tiles_x, height, width):
    """Pixel rows ``[y0, y1)`` and columns ``[x0, x1)`` of ``tile`` (row-major over ``tiles_x`` columns).

    The tile loops run one task per tile: threads pick tiles dynamically, so a thread preempted by
    another process (or by torch's spinning OpenMP workers) does not hold the whole kernel up."""
    y0 = (tile // tiles_x) * TILE
    x0 = (tile % tiles_x) * TILE
    return y0, x0, ti.min(y0 + TILE, height), ti.min(x0 + TILE, width)


@ti.func
def _alpha(pairs: ti.template(), k, pxf, pyf, dt: ti.template()):
    """``(alpha, raw, falloff, dx, dy)`` of pair ``k`` at pixel centre ``(pxf, pyf)``; alpha = 0 if skipped.

    Every kernel calls this one function, so all of them agree on who contributes.
    """
    dx = pairs[k, _MX] - pxf
    dy = pairs[k, _MY] - pyf
    power = dt(-0.5) * (pairs[k, _A] * dx * dx + pairs[k, _C] * dy * dy) - pairs[k, _B] * dx * dy
    alpha = dt(0.0)
    raw = dt(0.0)
    falloff = dt(0.0)
    # power > 0 only for an indefinite conic (the CUDA rasterizer skips those too); power below
    # skip_below means alpha < 1/255 for sure, without evaluating exp.
    if power <= dt(0.0) and power >= pairs[k, _SKIP]:
        falloff = ti.exp(power)
        raw = pairs[k, _O] * falloff
        a = ti.min(dt(ALPHA_MAX), raw)
        if a >= dt(ALPHA_MIN):
            alpha = a
    return alpha, raw, falloff, dx, dy


@ti.func
def _alpha_grads(alpha, raw, falloff, dx, dy, dl_dalpha, pairs: ti.template(), k, dt: ti.template()):
    """Gradient ``[mean2d (2), conic (3), opacity]`` from ``dL/dalpha`` through ``alpha = min(0.99, o exp(power))``."""
    out = ti.Vector([dt(0.0)] * 6)
    # The exact derivative is zero where the clamp is active (the CUDA rasterizer passes one anyway).
    if raw <= dt(ALPHA_MAX):
        dl_dpower = raw * dl_dalpha
        a = pairs[k, _A]
        b = pairs[k, _B]
        c = pairs[k, _C]
        out[0] = -dl_dpower * (a * dx + b * dy)
        out[1] = -dl_dpower * (c * dy + b * dx)
        out[2] = dt(-0.5) * dl_dpower * dx * dx
        out[3] = -dl_dpower * dx * dy
        out[4] = dt(-0.5) * dl_dpower * dy * dy
        out[5] = falloff * dl_dalpha
    return out


# --------------------------------------------------------------------------------------------
# CPU: one thread per tile, Gaussians outer, pixels of the Gaussian's alpha box inner.
# --------------------------------------------------------------------------------------------


@ti.kernel
def _forward_by_tile(
    ranges: ti.types.ndarray(dtype=ti.i32, ndim=2),
    pairs: ti.types.ndarray(ndim=2),
    boxes: ti.types.ndarray(dtype=ti.i32, ndim=2),
    background: ti.types.ndarray(ndim=1),
    out: ti.types.ndarray(ndim=3),
    final_t: ti.types.ndarray(ndim=2),
    n_contrib: ti.types.ndarray(dtype=ti.i32, ndim=2),
    done: ti.types.ndarray(dtype=ti.i32, ndim=2),
    tiles_x: ti.i32,
    dt: ti.template(),
):
    height = out.shape[1]
    width = out.shape[2]
    tiles_y = (height + TILE - 1) // TILE
    ti.loop_config(block_dim=1)  # one task per tile (see _tile_pixels)
    for tile in range(tiles_x * tiles_y):
        y0, x0, y1, x1 = _tile_pixels(tile, tiles_x, height, width)
        start = ranges[tile, 0]
        end = ranges[tile, 1]
        for py in range(y0, y1):
            for px in range(x0, x1):
                final_t[py, px] = dt(1.0)
                n_contrib[py, px] = start
                done[py, px] = 0
                for ch in ti.static(range(NUM_FEATURES)):
                    out[ch, py, px] = dt(0.0)
        remaining = (y1 - y0) * (x1 - x0)
        for k in range(start, end):
            if remaining == 0:
                break
            for py in range(ti.max(boxes[k, 2], y0), ti.min(boxes[k, 3] + 1, y1)):
                for px in range(ti.max(boxes[k, 0], x0), ti.min(boxes[k, 1] + 1, x1)):
                    if done[py, px] == 0:
                        alpha, _raw, _falloff, _dx, _dy = _alpha(pairs, k, ti.cast(px, dt), ti.cast(py, dt), dt)
                        if alpha > dt(0.0):
                            t = final_t[py, px]
                            test_t = t * (dt(1.0) - alpha)
                            # Stop before transmittance would fall below 1e-4; this one is not drawn.
                            if test_t < dt(TRANSMITTANCE_MIN):
                                done[py, px] = 1
                                remaining -= 1
                            else:
                                for ch in ti.static(range(NUM_FEATURES)):
                                    out[ch, py, px] += pairs[k, _F0 + ch] * alpha * t
                                final_t[py, px] = test_t
                                n_contrib[py, px] = k + 1
        for py in range(y0, y1):
            for px in range(x0, x1):
                for ch in ti.static(range(NUM_FEATURES)):
                    out[ch, py, px] += final_t[py, px] * background[ch]


@ti.kernel
def _backward_by_tile(
    ranges: ti.types.ndarray(dtype=ti.i32, ndim=2),
    pairs: ti.types.ndarray(ndim=2),
    boxes: ti.types.ndarray(dtype=ti.i32, ndim=2),
    background: ti.types.ndarray(ndim=1),
    final_t: ti.types.ndarray(ndim=2),
    n_contrib: ti.types.ndarray(dtype=ti.i32, ndim=2),
    grad_out: ti.types.ndarray(ndim=3),
    grad_final_t: ti.types.ndarray(ndim=2),
    t_state: ti.types.ndarray(ndim=2),
    behind: ti.types.ndarray(ndim=2),
    grads: ti.types.ndarray(ndim=2),
    tiles_x: ti.i32,
    dt: ti.template(),
):
    height = final_t.shape[0]
    width = final_t.shape[1]
    tiles_y = (height + TILE - 1) // TILE
    ti.loop_config(block_dim=1)  # one task per tile (see _tile_pixels)
    for tile in range(tiles_x * tiles_y):
        y0, x0, y1, x1 = _tile_pixels(tile, tiles_x, height, width)
        start = ranges[tile, 0]
        last = start
        for py in range(y0, y1):
            for px in range(x0, x1):
                t = final_t[py, px]
                t_state[py, px] = t
                # What lies behind the last contributor, weighted by the upstream gradient: the
                # background (times T_final) and alpha's own dependence on T_final.
                r = t * grad_final_t[py, px]
                for ch in ti.static(range(NUM_FEATURES)):
                    r += t * background[ch] * grad_out[ch, py, px]
                behind[py, px] = r
                last = ti.max(last, n_contrib[py, px])
        for i in range(last - start):
            k = last - 1 - i
            acc = ti.Vector([dt(0.0)] * GRAD_COLUMNS)
            for py in range(ti.max(boxes[k, 2], y0), ti.min(boxes[k, 3] + 1, y1)):
                for px in range(ti.max(boxes[k, 0], x0), ti.min(boxes[k, 1] + 1, x1)):
                    if k < n_contrib[py, px]:
                        alpha, raw, falloff, dx, dy = _alpha(pairs, k, ti.cast(px, dt), ti.cast(py, dt), dt)
                        if alpha > dt(0.0):
                            one_minus = dt(1.0) - alpha
                            t = t_state[py, px] / one_minus
                            weight = alpha * t
                            f_dot_g = dt(0.0)
                            for ch in ti.static(range(NUM_FEATURES)):
                                g = grad_out[ch, py, px]
                                f_dot_g += pairs[k, _F0 + ch] * g
                                acc[_G_FEATURES + ch] += weight * g
                            dl_dalpha = t * f_dot_g - behind[py, px] / one_minus
                            behind[py, px] += f_dot_g * weight
                            t_state[py, px] = t
                            geo = _alpha_grads(alpha, raw, falloff, dx, dy, dl_dalpha, pairs, k, dt)
                            for j in ti.static(range(6)):
                                acc[j] += geo[j]
            for j in ti.static(range(GRAD_COLUMNS)):
                grads[k, j] = acc[j]


# --------------------------------------------------------------------------------------------
# GPU: one thread per pixel, Gaussians inner; atomics in the backward.
# --------------------------------------------------------------------------------------------


@ti.kernel
def _forward_by_pixel(
    ranges: ti.types.ndarray(dtype=ti.i32, ndim=2),
    pairs: ti.types.ndarray(ndim=2),
    background: ti.types.ndarray(ndim=1),
    out: ti.types.ndarray(ndim=3),
    final_t: ti.types.ndarray(ndim=2),
    n_contrib: ti.types.ndarray(dtype=ti.i32, ndim=2),
    tiles_x: ti.i32,
    dt: ti.template(),
):
    for py, px in ti.ndrange(out.shape[1], out.shape[2]):
        tile = (py // TILE) * tiles_x + px // TILE
        start = ranges[tile, 0]
        end = ranges[tile, 1]
        pxf = ti.cast(px, dt)
        pyf = ti.cast(py, dt)
        t = dt(1.0)
        acc = ti.Vector([dt(0.0)] * NUM_FEATURES)
        last = start
        for k in range(start, end):
            alpha, _raw, _falloff, _dx, _dy = _alpha(pairs, k, pxf, pyf, dt)
            if alpha > dt(0.0):
                test_t = t * (dt(1.0) - alpha)
                if test_t < dt(TRANSMITTANCE_MIN):
                    break
                for ch in ti.static(range(NUM_FEATURES)):
                    acc[ch] += pairs[k, _F0 + ch] * alpha * t
                t = test_t
                last = k + 1
        for ch in ti.static(range(NUM_FEATURES)):
            out[ch, py, px] = acc[ch] + t * background[ch]
        final_t[py, px] = t
        n_contrib[py, px] = last


@ti.kernel
def _backward_by_pixel(
    ranges: ti.types.ndarray(dtype=ti.i32, ndim=2),
    pairs: ti.types.ndarray(ndim=2),
    background: ti.types.ndarray(ndim=1),
    final_t: ti.types.ndarray(ndim=2),
    n_contrib: ti.types.ndarray(dtype=ti.i32, ndim=2),
    grad_out: ti.types.ndarray(ndim=3),
    grad_final_t: ti.types.ndarray(ndim=2),
    grads: ti.types.ndarray(ndim=2),
    tiles_x: ti.i32,
    dt: ti.template(),
):
    for py, px in ti.ndrange(final_t.shape[0], final_t.shape[1]):
        tile = (py // TILE) * tiles_x + px // TILE
        start = ranges[tile, 0]
        last = n_contrib[py, px]
        pxf = ti.cast(px, dt)
        pyf = ti.cast(py, dt)
        g = ti.Vector([grad_out[ch, py, px] for ch in ti.static(range(NUM_FEATURES))])
        t = final_t[py, px]
        behind = t * grad_final_t[py, px]
        for ch in ti.static(range(NUM_FEATURES)):
            behind += t * background[ch] * g[ch]
        for i in range(last - start):
            k = last - 1 - i
            alpha, raw, falloff, dx, dy = _alpha(pairs, k, pxf, pyf, dt)
            if alpha > dt(0.0):
                one_minus = dt(1.0) - alpha
                t = t / one_minus
                weight = alpha * t
                f_dot_g = dt(0.0)
                for ch in ti.static(range(NUM_FEATURES)):
                    f_dot_g += pairs[k, _F0 + ch] * g[ch]
                    ti.atomic_add(grads[k, _G_FEATURES + ch], weight * g[ch])
                dl_dalpha = t * f_dot_g - behind / one_minus
                behind += f_dot_g * weight
                geo = _alpha_grads(alpha, raw, falloff, dx, dy, dl_dalpha, pairs, k, dt)
                for j in ti.static(range(6)):
                    ti.atomic_add(grads[k, j], geo[j])


# --------------------------------------------------------------------------------------------
# torch side
# --------------------------------------------------------------------------------------------


def _taichi_dtype(dtype: torch.dtype):
    if dtype == torch.float32:
        return ti.f32
    if dtype == torch.float64:
        return ti.f64
    raise ValueError(f"the portable rasterizer supports float32 and float64, got {dtype}")


def _pack_pairs(mean2d, conic, opacity, features, point_list) -> torch.Tensor:
    """Per-pair rows ``[M, PAIR_COLUMNS]`` in (tile, depth) order (see the module docstring)."""
    with torch.no_grad():
        skip_below = (math.log(ALPHA_MIN) - _SKIP_MARGIN) - torch.log(opacity)  # +inf for opacity 0
        per_gaussian = torch.cat([mean2d, conic, opacity[:, None], skip_below[:, None], features], dim=-1)
        return per_gaussian[point_list.long()].contiguous()


def _alpha_boxes(mean2d, conic, opacity, point_list, height: int, width: int) -> torch.Tensor:
    """Per-pair inclusive pixel boxes ``[M, 4]`` (x_min, x_max, y_min, y_max) outside which alpha < 1/255.

    ``o exp(-q/2) >= 1/255`` needs ``q = d^T conic d <= 2 log(255 o) = Q``; the ellipse ``q <= Q``
    spans ``|dx| <= sqrt(Q Sigma_xx)``, ``|dy| <= sqrt(Q Sigma_yy)`` with ``Sigma = conic^-1``.  Q is
    inflated by a relative 1e-3 and the box by 0.01 px, far beyond rounding.  An indefinite conic
    (only from invalid covariances) gets the whole image, as the tile test alone would.
    """
    with torch.no_grad():
        a, b, c = conic[:, 0], conic[:, 1], conic[:, 2]
        det = a * c - b * b
        positive = (a > 0) & (c > 0) & (det > 0)
        q = 2.0 * (math.log(1.0 / ALPHA_MIN) + torch.log(opacity)) * (1.0 + _SKIP_MARGIN)
        safe_det = torch.where(positive, det, torch.ones_like(det))
        q_pos = torch.clamp(q, min=0.0)
        ex = torch.sqrt(q_pos * c / safe_det) + 0.01
        ey = torch.sqrt(q_pos * a / safe_det) + 0.01
        lo = torch.tensor([-1.0, -1.0], dtype=mean2d.dtype, device=mean2d.device)
        hi = torch.tensor([float(width), float(height)], dtype=mean2d.dtype, device=mean2d.device)
        ext = torch.stack([ex, ey], dim=-1)
        box_min = torch.clamp(torch.ceil(mean2d - ext), min=lo, max=hi)
        box_max = torch.clamp(torch.floor(mean2d + ext), min=lo, max=hi)
        full_min = torch.zeros_like(box_min)
        full_max = (hi - 1.0).expand_as(box_max)
        box_min = torch.where(positive[:, None], box_min, full_min)
        box_max = torch.where(positive[:, None], box_max, full_max)
        # Never drawn (opacity < 1/255, with the margin): an empty box.
        never = (q < -_SKIP_MARGIN)[:, None]
        box_min = torch.where(never, torch.ones_like(box_min), box_min)
        box_max = torch.where(never, torch.zeros_like(box_max), box_max)
        boxes = torch.stack([box_min[:, 0], box_max[:, 0], box_min[:, 1], box_max[:, 1]], dim=-1)
        boxes = torch.nan_to_num(boxes, nan=0.0).to(torch.int32)
        return boxes[point_list.long()].contiguous()


class CompositeFunction(torch.autograd.Function):
    """Tile compositing as an autograd op: ``(mean2d, conic, opacity, features, background) -> (image, T_final)``.

    Shapes: ``mean2d [N, 2]``, ``conic [N, 3]``, ``opacity [N]``, ``features [N, 4]``, ``background [4]``
    -> ``image [4, H, W]`` (background included) and ``T_final [H, W]``.  ``loop_order`` is ``"tile"``
    (CPU kernels), ``"pixel"`` (GPU kernels) or ``"auto"`` (by the runtime's arch); tests force each.
    """

    @staticmethod
    def forward(
        ctx, mean2d, conic, opacity, features, background, bins: TileBins, height: int, width: int,
        loop_order: str = "auto",
    ):
        dtype, device = mean2d.dtype, mean2d.device
        kernel_device = _runtime.ensure_runtime(device)
        tdt = _taichi_dtype(dtype)
        if loop_order not in ("auto", "tile", "pixel"):
            raise ValueError(f"loop_order must be 'auto', 'tile' or 'pixel', got {loop_order!r}")
        by_tile = loop_order == "tile" or (loop_order == "auto" and kernel_device.type == "cpu")
        point_list = bins.point_list.to(kernel_device)
        if bins.num_pairs == 0:
            # Nothing to draw; a dummy row keeps the kernels' arrays non-empty (no tile reads it).
            pairs = torch.zeros(1, PAIR_COLUMNS, dtype=dtype, device=kernel_device)
            boxes = torch.zeros(1, 4, dtype=torch.int32, device=kernel_device)
        else:
            inputs = [t.detach().to(kernel_device) for t in (mean2d, conic, opacity, features)]
            pairs = _pack_pairs(*inputs, point_list)
            boxes = _alpha_boxes(inputs[0], inputs[1], inputs[2], point_list, height, width) if by_tile else None
        ranges = bins.ranges.to(kernel_device)
        bg = background.detach().to(kernel_device).contiguous()
        out = torch.empty(NUM_FEATURES, height, width, dtype=dtype, device=kernel_device)
        final_t = torch.empty(height, width, dtype=dtype, device=kernel_device)
        n_contrib = torch.empty(height, width, dtype=torch.int32, device=kernel_device)
        if by_tile:
            done = torch.empty(height, width, dtype=torch.int32, device=kernel_device)
            _forward_by_tile(ranges, pairs, boxes, bg, out, final_t, n_contrib, done, bins.tiles_x, tdt)
        else:
            _forward_by_pixel(ranges, pairs, bg, out, final_t, n_contrib, bins.tiles_x, tdt)
        _runtime.synchronize(kernel_device)
        ctx.save_for_backward(pairs, boxes, bg, final_t, n_contrib, ranges, point_list)
        ctx.tiles_x = bins.tiles_x
        ctx.num_pairs = bins.num_pairs
        ctx.num_gaussians = mean2d.shape[0]
        ctx.input_device = device
        return out.to(device), final_t.to(device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_final_t):
        pairs, boxes, bg, final_t, n_contrib, ranges, point_list = ctx.saved_tensors
        # final_t is also an output: unpacked it carries autograd history that Taichi must not see.
        final_t = final_t.detach()
        kernel_device = final_t.device
        dtype = final_t.dtype
        tdt = _taichi_dtype(dtype)
        if grad_out is None:
            grad_out = torch.zeros(NUM_FEATURES, *final_t.shape, dtype=dtype, device=kernel_device)
        if grad_final_t is None:
            grad_final_t = torch.zeros_like(final_t)
        grad_out = grad_out.to(kernel_device, dtype).contiguous()
        grad_final_t = grad_final_t.to(kernel_device, dtype).contiguous()
        per_gaussian = torch.zeros(ctx.num_gaussians, GRAD_COLUMNS, dtype=dtype, device=kernel_device)
        if ctx.num_pairs > 0:
            # Taichi never clears gradient buffers: fresh zeros every call.
            grads = torch.zeros(pairs.shape[0], GRAD_COLUMNS, dtype=dtype, device=kernel_device)
            if boxes is not None:
                t_state = torch.empty_like(final_t)
                behind = torch.empty_like(final_t)
                _backward_by_tile(
                    ranges, pairs, boxes, bg, final_t, n_contrib, grad_out, grad_final_t, t_state, behind,
                    grads, ctx.tiles_x, tdt,
                )
            else:
                _backward_by_pixel(
                    ranges, pairs, bg, final_t, n_contrib, grad_out, grad_final_t, grads, ctx.tiles_x, tdt
                )
            _runtime.synchronize(kernel_device)
            per_gaussian.index_add_(0, point_list.long(), grads)
        g_background = (final_t[None] * grad_out).sum(dim=(1, 2))
        dev = ctx.input_device
        per_gaussian = per_gaussian.to(dev)
        return (
            per_gaussian[:, _G_MEAN : _G_MEAN + 2],
            per_gaussian[:, _G_CONIC : _G_CONIC + 3],
            per_gaussian[:, _G_OPACITY],
            per_gaussian[:, _G_FEATURES:],
            g_background.to(dev),
            None,
            None,
            None,
            None,
        )
