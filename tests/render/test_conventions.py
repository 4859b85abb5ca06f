"""One test per convention of the 3DGS CUDA rasterizer, on scenes built so that the answer is known.

Every image-level test runs on both the portable backend and the dense reference.
"""

import math

import pytest
import torch

from dreamcloth.render import Camera, project_gaussians, rasterize
from dreamcloth.render._torch_ref import render_reference
from dreamcloth.render.conventions import ALPHA_MIN, TILE
from dreamcloth.render.projection import bin_gaussians, tile_grid

from .conftest import pixel_centre_ray

F64 = torch.float64
TINY = 1e-12  # a point-like Gaussian: its footprint is the 0.3 px^2 low-pass alone


def _portable(*args):
    return rasterize(*args, backend="portable")


RENDERERS = pytest.mark.parametrize("render", [_portable, render_reference], ids=["portable", "reference"])


def _camera(width=32, height=32):
    return Camera(eye=(0.0, 0.0, 4.0), look_at=(0.0, 0.0, 0.0), width=width, height=height, fov_y_deg=40.0)


def _points(camera, pixels_and_depths, variance=TINY):
    means = torch.stack([pixel_centre_ray(camera, u, v, d) for u, v, d in pixels_and_depths])
    cov = torch.eye(3, dtype=F64).repeat(len(pixels_and_depths), 1, 1) * variance
    return means, cov


@RENDERERS
def test_low_pass_adds_0_3_pixel_variance(render):
    camera = _camera()
    means, cov = _points(camera, [(10, 12, 2.0)])
    projected = project_gaussians(means, cov, camera)
    # A point-like Gaussian projects to the low-pass filter alone: variance 0.3 px^2.
    assert torch.allclose(projected.conic, torch.tensor([[1 / 0.3, 0.0, 1 / 0.3]], dtype=F64), rtol=1e-9)
    # Radius from the largest eigenvalue with the discriminant floored at 0.1: ceil(3 sqrt(0.3 + sqrt(0.1))).
    assert projected.radius.item() == math.ceil(3 * math.sqrt(0.3 + math.sqrt(0.1))) == 3
    o = 0.5
    out = render(means, cov, torch.ones(1, 3, dtype=F64), torch.tensor([o], dtype=F64), camera)
    alpha = out.alpha[0]
    assert alpha[12, 10].item() == pytest.approx(o)
    assert alpha[12, 11].item() == pytest.approx(o * math.exp(-0.5 / 0.3))
    assert alpha[13, 11].item() == pytest.approx(o * math.exp(-1.0 / 0.3))
    # Two pixels away o * exp(-2 / 0.3) = 6e-4 < 1/255: nothing.
    assert alpha[12, 12].item() == 0.0


@RENDERERS
def test_near_cull_at_view_z_0_2(render):
    camera = _camera()
    for depth, drawn in ((0.199, False), (0.201, True)):
        means, cov = _points(camera, [(16, 16, depth)], variance=1e-8)
        projected = project_gaussians(means, cov, camera)
        assert bool(projected.visible.item()) == drawn
        out = render(means, cov, torch.ones(1, 3, dtype=F64), torch.tensor([0.8], dtype=F64), camera)
        assert (out.alpha.max().item() > 0.5) == drawn, depth


@RENDERERS
def test_alpha_clamped_at_0_99_with_zero_gradient_when_clamped(render):
    camera = _camera()
    means, cov = _points(camera, [(8, 8, 2.0)])
    bg = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    color = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    for o, expect_alpha, expect_grad in ((1.0, 0.99, 0.0), (0.5, 0.5, 1.0)):
        opacity = torch.tensor([o], dtype=F64, requires_grad=True)
        out = render(means, cov, color, opacity, camera, bg)
        assert out.alpha[0, 8, 8].item() == pytest.approx(expect_alpha, abs=1e-12)
        assert out.color[:, 8, 8].tolist() == pytest.approx([expect_alpha, 0.0, 1 - expect_alpha], abs=1e-12)
        (grad,) = torch.autograd.grad(out.alpha[0, 8, 8], opacity)
        # d alpha / d opacity = exp(0) = 1 below the clamp, 0 where min(0.99, .) is active.
        assert grad.item() == pytest.approx(expect_grad, abs=1e-12)


@RENDERERS
def test_contributions_below_1_over_255_are_skipped(render):
    camera = _camera()
    means, cov = _points(camera, [(8, 8, 2.0)])
    bg = torch.tensor([0.3, 0.3, 0.3], dtype=F64)
    for o in (0.999 / 255, 1.001 / 255):
        opacity = torch.tensor([o], dtype=F64, requires_grad=True)
        out = render(means, cov, torch.ones(1, 3, dtype=F64), opacity, camera, bg)
        drawn = o >= 1.0 / 255.0  # literal: the convention itself is under test
        assert out.alpha[0, 8, 8].item() == pytest.approx(o if drawn else 0.0, abs=1e-15)
        # Neighbours fall below the threshold (o * exp(-0.5/0.3) < 1/255): not drawn at all.
        assert out.alpha[0, 8, 9].item() == 0.0
        if not drawn:
            assert torch.equal(out.color, bg[:, None, None].expand_as(out.color))
        (grad,) = torch.autograd.grad(out.alpha.sum(), opacity)
        assert grad.item() == pytest.approx(1.0 if drawn else 0.0)


@RENDERERS
@pytest.mark.parametrize("last_opacity, last_drawn", [(0.25, False), (0.15, True)])
def test_compositing_stops_before_transmittance_drops_below_1e_4(render, last_opacity, last_drawn):
    camera = _camera()
    # Point-like Gaussians on one pixel, front to back: three with alpha 0.95 take T from 1 to
    # 0.05, 0.0025, 1.25e-4; a fourth with alpha 0.25 would take it to 9.4e-5 < 1e-4 (stop, not
    # drawn), one with alpha 0.15 to 1.06e-4 (drawn).  A fifth behind is never reached or drawn.
    means, cov = _points(camera, [(8, 8, d) for d in (1.0, 2.0, 3.0, 4.0, 5.0)])
    colors = torch.tensor(
        [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 1.0]], dtype=F64, requires_grad=True
    )
    opac = torch.tensor([0.95, 0.95, 0.95, last_opacity, 0.95], dtype=F64)
    bg = torch.tensor([0.5, 0.5, 0.5], dtype=F64)
    out = render(means, cov, colors, opac, camera, bg)
    t = [1.0, 0.05, 0.0025, 1.25e-4]
    w = [0.95 * ti for ti in t[:3]] + [last_opacity * t[3] if last_drawn else 0.0, 0.0]
    t_final = t[3] * (1 - last_opacity) if last_drawn else t[3]
    expect = (torch.tensor(w, dtype=F64) @ colors.detach() + t_final * bg).tolist()
    assert out.color[:, 8, 8].tolist() == pytest.approx(expect, abs=1e-12)
    assert out.alpha[0, 8, 8].item() == pytest.approx(1 - t_final, abs=1e-12)
    (grad,) = torch.autograd.grad(out.color[:, 8, 8].sum(), colors)
    assert grad.flatten().tolist() == pytest.approx([wi for wi in w for _ in range(3)], abs=1e-12)


@RENDERERS
@pytest.mark.parametrize("centre_x, touches_second_tile", [(0.5, False), (1.5, True)])
def test_gaussian_drawn_only_in_tiles_its_3_sigma_box_touches(render, centre_x, touches_second_tile):
    camera = _camera(width=48, height=16)  # three 16x16 tiles side by side
    means, _ = _points(camera, [(centre_x, 8, 2.0)])
    # A world covariance whose image is exactly 24.7 px^2 (25 with the low-pass), so the radius is
    # ceil(3 sqrt(25 + sqrt(0.1))) = 16 and the box ends at pixel 0.5 + 16 (or 1.5 + 16).
    cov = _covariance_with_image(camera, means[0], 24.7 * torch.eye(2, dtype=F64))[None]
    projected = project_gaussians(means, cov, camera)
    assert projected.radius.item() == 16
    assert projected.tile_max[0, 0].item() == (2 if touches_second_tile else 1)
    o = 0.9
    out = render(means, cov, torch.ones(1, 3, dtype=F64), torch.tensor([o], dtype=F64), camera)
    # Pixel 16 (first column of the second tile) lies outside the 3-sigma box's reach when the
    # centre is at 0.5, yet its unclipped alpha would be visible: only the tile rule removes it.
    a, b, c = projected.conic[0].tolist()
    mx, my = projected.mean2d[0].tolist()
    dx, dy = mx - 16, my - 8
    unclipped = o * math.exp(-0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy)
    assert unclipped > ALPHA_MIN
    assert out.alpha[0, 8, 15].item() > ALPHA_MIN
    if touches_second_tile:
        assert out.alpha[0, 8, 16].item() == pytest.approx(unclipped, rel=1e-9)
    else:
        assert (out.alpha[0, :, TILE:] == 0).all()


def _covariance_with_image(camera, mean, cov2d):
    """A (numerically PD) world covariance whose EWA image at ``mean`` is ``cov2d`` (before the low-pass)."""
    rot = camera.rotation(F64)
    x, y, z = camera.to_camera(mean[None])[0].tolist()
    fx, fy = camera.focal_x, camera.focal_y
    jac = torch.tensor([[fx / z, 0.0, -fx * x / z**2], [0.0, fy / z, -fy * y / z**2]], dtype=F64)
    m = jac @ rot  # [2, 3], full row rank
    m_pinv = torch.linalg.pinv(m)
    ray = torch.linalg.svd(m).Vh[-1]  # the null direction of m: along the viewing ray
    return m_pinv @ cov2d @ m_pinv.T + 1e-10 * torch.outer(ray, ray)


def test_tile_lists_are_depth_sorted_with_ties_by_index():
    camera = _camera(width=40, height=20)  # 3 x 2 tiles, the last ones partial
    assert tile_grid(camera) == (3, 2)
    depths = [3.0, 1.0, 2.0, 1.0]
    # Wide enough (>= 7 px sigma even at depth 3) to touch every tile.
    means, cov = _points(camera, [(20, 10, d) for d in depths], variance=0.6)
    projected = project_gaussians(means, cov, camera)
    bins = bin_gaussians(projected, camera)
    assert bins.ranges.shape == (6, 2)
    assert bins.num_pairs == 4 * 6
    for tile in range(6):
        start, end = bins.ranges[tile].tolist()
        ids = bins.point_list[start:end].tolist()
        # Front to back; the two at depth 1 keep their input order (1 before 3).
        assert ids == [1, 3, 2, 0], (tile, ids)


@RENDERERS
def test_front_to_back_order_does_not_depend_on_input_order(render):
    camera = _camera()
    means, cov = _points(camera, [(8, 8, 2.0), (8, 8, 3.0)])
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    opac = torch.tensor([0.6, 0.6], dtype=F64)
    bg = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    near_first = render(means, cov, colors, opac, camera, bg)
    swapped = render(means.flip(0), cov, colors.flip(0), opac, camera, bg)
    assert torch.allclose(near_first.color, swapped.color, atol=1e-15)
    # Red (near) over blue (far) over green background.
    assert near_first.color[:, 8, 8].tolist() == pytest.approx([0.6, 0.16, 0.24])
    # Depth is alpha-weighted view z: 0.6 * 2 + 0.4 * 0.6 * 3.
    assert near_first.depth[0, 8, 8].item() == pytest.approx(0.6 * 2.0 + 0.24 * 3.0)


def test_jacobian_evaluated_at_centre_clamped_to_1_3_fov():
    camera = _camera()
    depth = 2.0
    tan_x = camera.tan_half_fov_x
    # Far right of the frustum: x/z = 2 tan(fov_x/2), beyond the 1.3 clamp.
    cam_point = torch.tensor([2.0 * tan_x * depth, 0.0, depth], dtype=F64)
    rot = camera.rotation(F64)
    means = (cam_point @ rot + torch.tensor(camera.eye, dtype=F64))[None]
    cov = torch.diag(torch.tensor([0.01, 0.02, 0.03], dtype=F64))[None]
    projected = project_gaussians(means, cov, camera)
    fx, fy = camera.focal_x, camera.focal_y
    tx = 1.3 * tan_x * depth  # clamped for the Jacobian only
    jac = torch.tensor([[fx / depth, 0.0, -fx * tx / depth**2], [0.0, fy / depth, 0.0]], dtype=F64)
    cov2 = jac @ rot @ cov[0] @ rot.T @ jac.T + 0.3 * torch.eye(2, dtype=F64)
    inv = torch.linalg.inv(cov2)
    assert projected.conic[0].tolist() == pytest.approx([inv[0, 0].item(), inv[0, 1].item(), inv[1, 1].item()])
    # The centre itself is projected without the clamp.
    assert projected.mean2d[0, 0].item() == pytest.approx(fx * 2.0 * tan_x + camera.principal_point[0])
