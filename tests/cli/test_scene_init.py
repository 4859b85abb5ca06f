"""``dreamcloth scene init`` (issue 14): camera and cloth from the first frame of a video.

Frame 0 is a flat cloth drawn by dreamcloth's renderer from a random camera (elevation 15-70 deg,
distance 1-3 m, fov 30-60 deg) and a random cloth size, yaw and placement, written as an H.264 video; the
written scene's camera, seen from the cloth, must match the true one.  A rectangle's silhouette
is symmetric, so the comparison allows its half-turn (a quarter-turn for a square).
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dreamcloth import render as R
from dreamcloth import taichi_mpm as M
from dreamcloth.cli.app import app
from dreamcloth.cli.pipeline.scene import load_scene
from dreamcloth.cli.pipeline.scene_init import init_scene, render_flat_cloth

CLOTH = np.array([0.8, 0.3, 0.2])


def random_view(rng, width=320, height=240):
    """A cloth (size, centre, yaw) and a camera that sees all of it."""
    while True:
        w = rng.uniform(0.3, 1.0)
        size = (w, w) if rng.random() < 0.3 else (w, w / rng.uniform(1.25, 2.0))
        el, az = math.radians(rng.uniform(15, 70)), rng.uniform(0, 2 * math.pi)
        d, fov = rng.uniform(1, 3), rng.uniform(30, 60)
        centre = np.array([rng.uniform(-0.2, 0.2), rng.uniform(0, 0.3), rng.uniform(-0.2, 0.2)])
        yaw = rng.uniform(0, 180)
        eye = centre + d * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        cam = R.Camera(eye=tuple(eye), look_at=tuple(centre + rng.uniform(-0.1, 0.1, 3)), fov_y_deg=fov, width=width, height=height)
        v, f = M.grid_mesh(9, 9, size, tuple(centre), (0, yaw, 0))
        v = torch.as_tensor(v, dtype=torch.float32)
        px = cam.project(cam.to_camera(v))
        if (px[:, 0] > 4).all() and (px[:, 0] < width - 5).all() and (px[:, 1] > 4).all() and (px[:, 1] < height - 5).all():
            return size, centre, yaw, cam, v, torch.as_tensor(f)


def write_frames(path, vertices_per_frame, faces, cam):
    """The cloth (plain colour) over a white background, one frame per vertex set, as an mp4."""
    frames = []
    with torch.no_grad():
        for v in vertices_per_frame:
            a = render_flat_cloth(v, faces, cam).numpy()[..., None]
            frames.append((1 - a) + a * CLOTH)
    R.write_video(np.stack(frames), path, fps=24)
    return path


def in_cloth_frame(point, centre, yaw_deg):
    """``point`` relative to the cloth's centre, in the cloth's own axes (its yaw undone)."""
    a = math.radians(-yaw_deg)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    return ry @ (np.asarray(point, dtype=np.float64) - centre)


def camera_errors(scene, size, centre, yaw, cam):
    """(eye position error / distance, viewing-direction error in degrees), over the rectangle's symmetries."""
    c = scene.camera
    got_centre = np.asarray(scene.objects[0].center)
    eye_true = in_cloth_frame(cam.eye, centre, yaw)
    fwd_true = in_cloth_frame(np.asarray(cam.look_at) - np.asarray(cam.eye) + centre, centre, yaw)
    eye = np.asarray(c.eye) - got_centre
    fwd = np.asarray(c.look_at) - np.asarray(c.eye)
    best = None
    turns = (0, 1, 2, 3) if abs(size[0] - size[1]) < 1e-9 else (0, 2)
    for k in turns:
        a = k * math.pi / 2
        ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        e, f = ry @ eye, ry @ fwd
        pos = np.linalg.norm(e - eye_true) / np.linalg.norm(eye_true)
        ang = math.degrees(math.acos(np.clip(f @ fwd_true / np.linalg.norm(f) / np.linalg.norm(fwd_true), -1, 1)))
        if best is None or pos < best[0]:
            best = (pos, ang)
    return best


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scene_init_recovers_random_cameras(tmp_path, seed):
    rng = np.random.default_rng(seed)
    size, centre, yaw, cam, v, f = random_view(rng)
    video = write_frames(tmp_path / "clip.mp4", [v, v], f, cam)
    result = init_scene(video, size, tmp_path / "scene.toml", fov_y_deg=cam.fov_y_deg, height=0.2)
    scene = load_scene(result.scene_path)
    pos, ang = camera_errors(scene, size, centre, yaw, cam)
    assert pos < 0.03 and ang < 2.0, f"camera position error {pos:.2%} of the distance, direction error {ang:.2f} deg"
    assert scene.camera.fov_y_deg == pytest.approx(cam.fov_y_deg, abs=1e-4)
    assert scene.objects[0].center[1] == pytest.approx(0.05 + 0.2)  # height above the ground plane
    assert result.estimate.silhouette_iou > 0.97


@pytest.mark.parametrize("seed", [101, 102])
def test_scene_init_estimates_the_field_of_view(tmp_path, seed):
    """Without ``--fov`` the field of view is fitted with the pose to the edges' sub-pixel positions
    (``fit_edges``).  With a Levenberg-Marquardt step on the rendered cloth after it (removed 2026-12-04),
    of 12 random views (``default_rng(100 + i)``) all came within
    0.71 deg, 1.45% of the distance and 0.08 deg of direction; seed 101 (a small cloth seen from
    2.85 m) was the worst fov, -0.71 deg (3.05 deg with the search over pose-refined renderings this
    replaced), seed 102 (a 52 px cloth) -0.30 deg (+6.15 deg before)."""
    rng = np.random.default_rng(seed)
    size, centre, yaw, cam, v, f = random_view(rng)
    video = write_frames(tmp_path / "clip.mp4", [v, v], f, cam)
    result = init_scene(video, size, tmp_path / "scene.toml", height=0.2)
    assert not result.estimate.fov_given
    assert abs(result.estimate.camera.fov_y_deg - cam.fov_y_deg) < 2.0
    pos, ang = camera_errors(load_scene(result.scene_path), size, centre, yaw, cam)
    assert pos < 0.03 and ang < 2.0, f"camera position error {pos:.2%} of the distance, direction error {ang:.2f} deg"
    assert result.estimate.silhouette_iou > 0.97


def test_scene_init_from_an_anti_aliased_mask_video_over_a_textured_background(tmp_path):
    """``--masks`` with grey edge levels: the levels are the coverage the edge fit needs for the fov.
    Seed 102's view with a blocky random background, where a colour cut fails: thresholded to a
    binary mask the fov came out 6-7 deg off (16% in position); with the levels within 0.1 deg."""
    rng = np.random.default_rng(102)
    size, centre, yaw, cam, v, f = random_view(rng)
    g = np.random.default_rng(2)
    background = np.clip(0.5 + 0.3 * g.standard_normal((cam.height // 8, cam.width // 8, 3)), 0, 1).repeat(8, 0).repeat(8, 1)
    with torch.no_grad():
        a = render_flat_cloth(v, f, cam).numpy()[..., None]
    frame = (1 - a) * background + a * CLOTH
    R.write_video(np.stack([frame, frame]), tmp_path / "clip.mp4", fps=24)
    R.write_video(np.repeat(np.stack([a, a]), 3, -1), tmp_path / "masks.mp4", fps=24)
    result = init_scene(tmp_path / "clip.mp4", size, tmp_path / "scene.toml", masks_path=tmp_path / "masks.mp4")
    fov_err = result.estimate.camera.fov_y_deg - cam.fov_y_deg
    pos, ang = camera_errors(load_scene(result.scene_path), size, centre, yaw, cam)
    print(f"fov {fov_err:+.2f} deg, camera {pos:.2%} of the distance, direction {ang:.2f} deg")
    # the goals: fov within 2 deg, the camera within 3% of its distance and 2 deg of direction.
    # These masks are the estimator's own 9x9-mesh rendering, which the Levenberg-Marquardt step on the
    # rendered cloth (removed 2026-12-04, see scene_init.rendered_iou) fitted exactly: it gave 1.26%
    # here; the edge fit alone -0.78 deg and 2.28%.  Masks drawn from a 31x31 mesh (crisp, like a
    # camera's anti-aliasing): +2.63 deg with that step, +1.60 deg and 3.51% without (over the goal).
    assert abs(fov_err) < 2.0
    assert pos < 0.03 and ang < 2.0, f"camera position error {pos:.2%} of the distance, direction error {ang:.2f} deg"


def test_scene_init_on_a_video_that_dreamcloth_simulate_rendered(tmp_path):
    """The issue's own case: frame 0 of ``dreamcloth simulate``'s video of the bundled demo scene (a 12x12
    mesh with a dark checker that reaches the cloth's border, not the estimator's 9x9 plain model) seen
    from a random camera (``default_rng(308)`` in elevation 15-70 deg, distance 1-3 m, fov 30-60 deg),
    320x240 H.264, fov estimated.  With the Levenberg-Marquardt step on the rendered cloth (removed
    2026-12-04) this view was 7.1% and -2.8 deg off, and 4 of 12 such views missed the goals; with the
    edge fit alone it gives 1.3% and -0.4 deg, and all 12 were within 2.4% and 1.0 deg."""
    from dreamcloth.cli.pipeline.demo import DEMO_SCENE

    cam = R.Camera(eye=(0.0789379, 2.86801, -1.00791), look_at=(0.545046, 0.557386, 0.588639), fov_y_deg=45.0846,
                   width=320, height=240)
    text = Path(DEMO_SCENE).read_text()
    camera = (f"[camera]\nwidth = {cam.width}\nheight = {cam.height}\nfov_y_deg = {cam.fov_y_deg}\n"
              f"eye = {list(cam.eye)}\nlook_at = {list(cam.look_at)}\nbackground = [1.0, 1.0, 1.0]\n")
    start, end = text.index("[camera]"), text.index("[[object]]")
    (tmp_path / "view.toml").write_text(text[:start] + camera + "\n" + text[end:])
    r = CliRunner().invoke(app, ["simulate", "--scene", str(tmp_path / "view.toml"), "--out", str(tmp_path / "sim"),
                                 "--frames", "2"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    result = init_scene(tmp_path / "sim" / "video.mp4", (0.6, 0.6), tmp_path / "scene.toml", height=0.2)
    scene = load_scene(tmp_path / "view.toml")
    cloth = scene.objects[0]
    fov_err = result.estimate.camera.fov_y_deg - cam.fov_y_deg
    pos, ang = camera_errors(load_scene(result.scene_path), (0.6, 0.6), np.asarray(cloth.center), cloth.rotation_deg[1], cam)
    print(f"fov {fov_err:+.2f} deg, camera {pos:.2%} of the distance, direction {ang:.2f} deg")
    assert abs(fov_err) < 2.0
    assert pos < 0.03 and ang < 2.0, f"camera position error {pos:.2%} of the distance, direction error {ang:.2f} deg"


def test_scene_init_cli_writes_a_scene_that_checks(tmp_path):
    rng = np.random.default_rng(1)
    size, centre, yaw, cam, v, f = random_view(rng, 160, 120)
    video = write_frames(tmp_path / "clip.mp4", [v, v, v], f, cam)
    out = tmp_path / "s" / "scene.toml"
    r = CliRunner().invoke(app, ["scene", "init", "--video", str(video), "--cloth-size", f"{size[0]}x{size[1]}", "--fov",
                                 str(cam.fov_y_deg), "--out", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert out.is_file() and out.with_suffix(".png").is_file()
    import imageio.v3 as iio

    assert iio.imread(out.with_suffix(".png")).shape == (360, 480, 3)  # enlarged 3x to be looked at
    scene = load_scene(out)
    assert scene.settings.frames == 3 and scene.camera.width == 128 and scene.camera.height == 96
    assert [c.kind for c in scene.colliders] == ["plane"]
    assert set(scene.objects[0].fit) >= {"young_modulus", "bending_stiffness"}
    r = CliRunner().invoke(app, ["scene", "check", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output


def _init(tmp_path, video, size_text, *extra):
    return CliRunner().invoke(app, ["scene", "init", "--video", str(video), "--cloth-size", size_text, "--out",
                                    str(tmp_path / "bad.toml"), *extra])


def test_scene_init_bad_input(tmp_path):
    rng = np.random.default_rng(2)
    size, centre, yaw, cam, v, f = random_view(rng, 160, 120)
    # No cloth at all: a white video.
    blank = R.write_video(np.ones((2, 120, 160, 3)), tmp_path / "blank.mp4", fps=24)
    r = _init(tmp_path, blank, "0.5x0.5")
    assert r.exit_code != 0 and "no cloth-like region" in r.output
    # A cloth that is not flat in frame 0: a fold across it.
    bent = v.clone()
    rel = bent - bent.mean(0)
    bent[:, 1] += 0.6 * rel.abs().max(1).values * torch.sign(rel[:, 0]) * (rel[:, 0].abs() > 0.1 * size[0])
    crumpled = write_frames(tmp_path / "crumpled.mp4", [bent, bent], f, cam)
    r = _init(tmp_path, crumpled, f"{size[0]}x{size[1]}", "--fov", str(cam.fov_y_deg))
    assert r.exit_code != 0 and r.output.startswith("error:") and ("flat" in r.output or "contradicts" in r.output)
    # A size whose aspect the image contradicts.
    video = write_frames(tmp_path / "clip.mp4", [v, v], f, cam)
    r = _init(tmp_path, video, f"{size[0] * 2.5}x{size[1]}", "--fov", str(cam.fov_y_deg))
    assert r.exit_code != 0 and r.output.startswith("error:")
    # Unusable options.
    r = _init(tmp_path, video, "half a metre")
    assert r.exit_code != 0 and "--cloth-size" in r.output
    assert not (tmp_path / "bad.toml").exists()
