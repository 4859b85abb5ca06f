import math

import pytest
import torch

from dreamcloth.render import Camera

from .conftest import CAMERAS


def test_frame_is_right_down_forward():
    # Looking down -z with y up: camera x is world +x, camera y (down) is world -y, z forward is -z.
    cam = Camera(eye=(0, 0, 5), look_at=(0, 0, 0), up=(0, 1, 0), width=64, height=48)
    rot = cam.rotation(torch.float64)
    assert torch.allclose(rot, torch.tensor([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=torch.float64))
    cx, cy = cam.principal_point
    pts = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float64)
    uv = cam.project(cam.to_camera(pts))
    assert uv[0].tolist() == pytest.approx([cx, cy])  # on the optical axis: the image centre
    assert uv[1, 0] > cx and uv[1, 1] == pytest.approx(cy)  # world right -> image right
    assert uv[2, 1] < cy and uv[2, 0] == pytest.approx(cx)  # world up -> image up (smaller row)


@pytest.mark.parametrize("cam", CAMERAS)
def test_rotation_is_proper_and_translation_maps_eye_to_origin(cam):
    rot = cam.rotation(torch.float64)
    assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.linalg.det(rot).item() == pytest.approx(1.0)
    eye = torch.tensor([cam.eye], dtype=torch.float64)
    assert torch.allclose(cam.to_camera(eye), torch.zeros(1, 3, dtype=torch.float64), atol=1e-12)
    target = cam.to_camera(torch.tensor([cam.look_at], dtype=torch.float64))[0]
    assert target[:2].abs().max() < 1e-12 and target[2] > 0  # straight ahead


def test_intrinsics_square_pixels_and_principal_point():
    cam = Camera(eye=(0, 0, 1), look_at=(0, 0, 0), width=70, height=45, fov_y_deg=40)
    assert cam.tan_half_fov_y == pytest.approx(math.tan(math.radians(20)))
    assert cam.tan_half_fov_x == pytest.approx(cam.tan_half_fov_y * 70 / 45)
    assert cam.focal_x == pytest.approx(cam.focal_y)
    assert cam.focal_y == pytest.approx(45 / (2 * math.tan(math.radians(20))))
    assert cam.principal_point == (34.5, 22.0)


@pytest.mark.parametrize("cam", CAMERAS)
def test_3dgs_matrices_are_transposed_and_agree_with_pinhole(cam):
    mats = cam.gaussian_splatting_matrices(torch.float64)
    w2c = cam.world_to_camera(torch.float64)
    # Row-vector convention: the rasterizer multiplies p_row @ viewmatrix.
    assert torch.equal(mats.viewmatrix, w2c.T)
    assert torch.allclose(mats.projmatrix, (cam.projection(torch.float64) @ w2c).T)
    assert mats.viewmatrix[:3, 3].abs().max() == 0  # translation sits in the last row
    gen = torch.Generator().manual_seed(3)
    target = torch.tensor(cam.look_at, dtype=torch.float64)
    pts = target + torch.randn(50, 3, generator=gen, dtype=torch.float64) * 0.3
    hom = torch.cat([pts, torch.ones(50, 1, dtype=torch.float64)], -1)
    clip = hom @ mats.projmatrix
    ndc = clip[:, :3] / clip[:, 3:]
    # ndc2Pix of the CUDA rasterizer: ((ndc + 1) * S - 1) / 2.
    pix = ((ndc[:, :2] + 1) * torch.tensor([cam.width, cam.height], dtype=torch.float64) - 1) / 2
    assert torch.allclose(pix, cam.project(cam.to_camera(pts)), atol=1e-9)
    # Clip w is view z.
    assert torch.allclose(clip[:, 3], cam.to_camera(pts)[:, 2])
    assert mats.tanfovx == pytest.approx(cam.tan_half_fov_x)
    assert torch.equal(mats.campos, torch.tensor(cam.eye, dtype=torch.float64))


def test_projection_maps_near_and_far_to_zero_and_one():
    cam = Camera(eye=(0, 0, 0), look_at=(0, 0, 1), up=(0, -1, 0), near=0.5, far=20.0)
    proj = cam.projection(torch.float64)
    for z, expected in ((0.5, 0.0), (20.0, 1.0)):
        clip = proj @ torch.tensor([0.0, 0.0, z, 1.0], dtype=torch.float64)
        assert (clip[2] / clip[3]).item() == pytest.approx(expected, abs=1e-12)


def test_frustum_corner_projects_to_image_corner():
    cam = Camera(eye=(1, 2, 3), look_at=(0, 0, 0), width=40, height=30, fov_y_deg=50)
    z = 2.0
    corner_cam = torch.tensor([[cam.tan_half_fov_x * z, cam.tan_half_fov_y * z, z]], dtype=torch.float64)
    # The frustum's edge is the outer edge of the last pixel: centre coordinate W - 1/2.
    assert cam.project(corner_cam)[0].tolist() == pytest.approx([39.5, 29.5])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eye=(0, 0, 0), look_at=(0, 0, 0)), "coincide"),
        (dict(eye=(0, 1, 0), look_at=(0, 0, 0), up=(0, 1, 0)), "parallel"),
        (dict(eye=(0, 0, 1), look_at=(0, 0, 0), up=(0, 0, 0)), "parallel"),
        (dict(eye=(0, 0, 1), look_at=(0, 0, 0), fov_y_deg=180), "fov_y_deg"),
        (dict(eye=(0, 0, 1), look_at=(0, 0, 0), width=0), "width"),
        (dict(eye=(0, 0, 1), look_at=(0, 0, 0), height=2.5), "height"),
        (dict(eye=(0, 0, 1), look_at=(0, 0, 0), near=2.0, far=1.0), "near"),
        (dict(eye=(0, 0), look_at=(0, 0, 0)), "eye"),
        (dict(eye=(0, 0, float("nan")), look_at=(0, 0, 0)), "eye"),
    ],
)
def test_invalid_cameras_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Camera(**kwargs)
