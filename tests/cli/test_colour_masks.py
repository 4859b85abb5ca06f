"""Cloth masks from a colour model learned on frame 0 (issue 14): a simulated drape composited over a
textured background with the sphere collider drawn in, so that the background-colour masks fail."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamcloth.benchmarks.accuracy import SCENARIOS, scene_text

#: the drape at 128x96, where the cloth covers ~1560 pixels and its one-pixel boundary band ~80: at
#: 96x72 the colour masks measured mean IoU 0.951 (min 0.936), at 128x96 0.960 (min 0.951)
DRAPE = dataclasses.replace(SCENARIOS["drape"], small=dict(frames=10, grid=16, n=8, width=128, height=96))


def textured_background(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """``[3, H, W]``: smooth random blobs of blues, greens, greys and a pale yellow, with a fine checker
    on top: a floor and a wall nobody painted one flat colour.  No orange or brown (the cloth's)."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor([[0.2, 0.35, 0.7], [0.25, 0.6, 0.35], [0.55, 0.55, 0.6], [0.85, 0.85, 0.6], [0.15, 0.2, 0.3],
                            [0.6, 0.75, 0.9]])
    coarse = palette[torch.randint(len(palette), (5, 7), generator=g)].permute(2, 0, 1)[None]
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = ((yy // 4 + xx // 4) % 2).float()
    return (smooth * (0.85 + 0.15 * checker)).clamp(0, 1)


def sphere_disc(camera, center, radius: float) -> torch.Tensor:
    """``[H, W]`` bool: pixels whose ray passes within ``radius`` of ``center`` (the sphere's outline)."""
    cx, cy = camera.principal_point
    yy, xx = torch.meshgrid(torch.arange(camera.height) + 0.5, torch.arange(camera.width) + 0.5, indexing="ij")
    rays_cam = torch.stack([(xx - cx) / camera.focal_x, (yy - cy) / camera.focal_y, torch.ones_like(xx)], -1)
    rot = camera.rotation(torch.float64)
    rays = rays_cam.double() @ rot  # camera -> world directions (rows of the world-to-camera rotation)
    rays = rays / rays.norm(dim=-1, keepdim=True)
    to_c = torch.tensor(center, dtype=torch.float64) - torch.tensor(camera.eye, dtype=torch.float64)
    along = rays @ to_c
    dist2 = to_c.dot(to_c) - along**2
    return (dist2 < radius**2) & (along > 0)


def colour_scene(text: str) -> str:
    """The scene with ``[camera] masks = "colour"``."""
    return text.replace("[camera]\n", '[camera]\nmasks = "colour"\n', 1)


def read_masks(folder: Path) -> torch.Tensor:
    """``dreamcloth simulate``'s masks/ PNGs as ``[T, 1, H, W]`` float 0/1."""
    import imageio.v3 as iio

    ms = [torch.from_numpy(np.asarray(iio.imread(p))).float() / 255 for p in sorted(folder.glob("mask_*.png"))]
    return torch.stack([m[..., 0] if m.ndim == 3 else m for m in ms])[:, None].gt(0.5).float()


def composite(sim_dir: Path, scene, background: torch.Tensor) -> torch.Tensor:
    """The simulated frames (rendered over white) re-composited over ``background [3, H, W]``, using
    each frame's rendered alpha: ``frame + (1 - alpha) (background - white)``.  ``[T, 3, H, W]``."""
    import imageio.v3 as iio

    from dreamcloth.cli.pipeline.simulation import SceneRenderer, build

    states = np.load(sim_dir / "states.npz")
    renderer = SceneRenderer(build(scene))
    frames = torch.stack([torch.from_numpy(np.asarray(iio.imread(p))).float().permute(2, 0, 1) / 255
                          for p in sorted((sim_dir / "frames").glob("frame_*.png"))])
    with torch.no_grad():
        alpha = torch.stack([renderer.render(torch.from_numpy(x), torch.from_numpy(f)).alpha
                             for x, f in zip(states["x"], states["F"])])
    return (frames + (1 - alpha) * (background[None] - 1)).clamp(0, 1)


@pytest.fixture(scope="module")
def drape_video(tmp_path_factory):
    """A drape simulated by ``dreamcloth simulate``, composited over a textured background with the
    sphere collider drawn as a grey disc behind the cloth and re-encoded as H.264.

    Returns ``(folder, true masks [T, 1, H, W], frames before encoding [T, 3, H, W])``; the folder
    holds ``colour.toml`` (the scene with ``masks = "colour"``), ``plain.toml`` and ``textured.mp4``."""
    from typer.testing import CliRunner

    from dreamcloth.cli.app import app
    from dreamcloth.cli.pipeline.scene import load_scene
    from dreamcloth.render import write_video

    folder = tmp_path_factory.mktemp("colour_masks")
    text = scene_text(DRAPE, "small", {"young_modulus": 60.0, "damping": 0.3}, with_fit=True)
    (folder / "plain.toml").write_text(text)
    (folder / "colour.toml").write_text(colour_scene(text))
    result = CliRunner().invoke(app, ["simulate", "--scene", str(folder / "plain.toml"), "--out", str(folder / "sim")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    scene = load_scene(folder / "plain.toml")
    c = scene.camera
    background = textured_background(c.height, c.width)
    sphere = next(col for col in scene.colliders if col.kind == "sphere")
    from dreamcloth.render import Camera

    camera = Camera(eye=c.eye, look_at=c.look_at, up=c.up, fov_y_deg=c.fov_y_deg, width=c.width, height=c.height)
    disc = sphere_disc(camera, sphere.params["center"], sphere.params["radius"])
    assert disc.sum() > 100  # the collider is in the picture
    background = torch.where(disc[None], torch.full((3, 1, 1), 0.5), background)
    frames = composite(folder / "sim", scene, background)
    write_video(frames.permute(0, 2, 3, 1).numpy(), folder / "textured.mp4", fps=scene.settings.fps)
    return folder, read_masks(folder / "sim" / "masks"), frames


def test_colour_masks_match_the_true_masks(drape_video):
    """Over a textured background with a drawn collider, after H.264: mean IoU >= 0.95 against the
    true masks, where the background-colour masks (the default) take the background for cloth."""
    from dreamcloth.cli.pipeline.fit import load_target
    from dreamcloth.cli.pipeline.losses import mask_iou
    from dreamcloth.cli.pipeline.scene import load_scene

    folder, truth, _ = drape_video
    target = load_target(folder / "textured.mp4", load_scene(folder / "colour.toml"))
    assert target.background is None  # the fit compares rendered alpha, not colour distance, with these masks
    assert target.masks.shape == truth.shape
    ious = [mask_iou(m, t) for m, t in zip(target.masks, truth)]
    assert np.mean(ious) >= 0.95 and min(ious) >= 0.93, ious

    old = load_target(folder / "textured.mp4", load_scene(folder / "plain.toml"))
    old_ious = [mask_iou(m, t) for m, t in zip(old.masks, truth)]
    assert np.mean(old_ious) < 0.3, old_ious


def test_colour_masks_survive_a_misplaced_scene(drape_video):
    """A scene placed by hand is off by a few pixels: the cloth region shifted by 3 pixels still
    teaches the model (the region is eroded before it does)."""
    from dreamcloth.cli.pipeline.colour_masks import colour_masks, scene_cloth_region
    from dreamcloth.cli.pipeline.losses import mask_iou
    from dreamcloth.cli.pipeline.scene import load_scene
    from dreamcloth.cli.pipeline.video_io import read_video

    folder, truth, _ = drape_video
    scene = load_scene(folder / "colour.toml")
    frames = read_video(folder / "textured.mp4").as_tensor()
    region = torch.roll(scene_cloth_region(scene), shifts=(3, -3), dims=(0, 1))
    masks = colour_masks(frames, region)
    assert np.mean([mask_iou(m, t) for m, t in zip(masks, truth)]) >= 0.94


def test_cloth_coloured_patches_elsewhere_are_not_cloth():
    """A patch of the cloth's colour that appears away from the cloth is dropped: only components
    that continue the previous frame's mask are kept."""
    from dreamcloth.cli.pipeline.colour_masks import colour_masks

    h, w, t = 48, 64, 4
    frames = torch.empty(t, 3, h, w)
    frames[:] = torch.tensor([0.2, 0.4, 0.8]).view(3, 1, 1)
    cloth = torch.zeros(t, h, w, dtype=torch.bool)
    for k in range(t):  # the cloth slides right by two pixels a frame
        cloth[k, 10:30, 8 + 2 * k : 28 + 2 * k] = True
    frames[:, :, 36:44, 50:60] = torch.tensor([0.9, 0.3, 0.2]).view(1, 3, 1, 1)  # the patch, from frame 0 on
    frames = torch.where(cloth[:, None], torch.tensor([0.9, 0.3, 0.2]).view(1, 3, 1, 1), frames)
    region = cloth[0]
    masks = colour_masks(frames, region)
    assert torch.equal(masks[:, 0].bool(), cloth)


def test_off_screen_or_inseparable_cloth_is_a_one_line_error(drape_video, tmp_path):
    from typer.testing import CliRunner

    from dreamcloth.cli.app import app
    from dreamcloth.cli.pipeline.colour_masks import colour_masks, scene_cloth_region
    from dreamcloth.cli.pipeline.scene import load_scene
    from dreamcloth.render import write_video

    folder, truth, frames = drape_video
    # the camera looks away from the cloth: nothing to learn its colours from
    away = (folder / "colour.toml").read_text().replace("look_at = [0.5, 0.45, 0.5]", "look_at = [0.5, 1.05, 3.0]")  # behind the camera
    assert "look_at = [0.5, 1.05, 3.0]" in away
    (tmp_path / "away.toml").write_text(away)
    run = CliRunner().invoke(app, ["fit", "--video", str(folder / "textured.mp4"), "--scene", str(tmp_path / "away.toml"),
                                   "--out", str(tmp_path / "fit")])
    assert run.exit_code == 2, run.output
    assert "the scene's cloth covers 0 pixels of frame 0" in run.output and len(run.output.strip().splitlines()) == 1

    # a background made of the cloth's own colours: the model cannot tell them apart
    scene = load_scene(folder / "colour.toml")
    cloth = truth[0, 0] > 0.5
    cloth_colours = frames[0][:, cloth].T
    h, w = cloth.shape
    g = torch.Generator().manual_seed(1)
    same = cloth_colours[torch.randint(len(cloth_colours), (h * w,), generator=g)].T.reshape(3, h, w)
    camouflaged = torch.where(truth[:, :1] > 0.5, frames, same[None])
    with pytest.raises(ValueError, match="not separable from the rest of frame 0"):
        colour_masks(camouflaged, scene_cloth_region(scene))
    write_video(camouflaged.permute(0, 2, 3, 1).numpy(), tmp_path / "camouflaged.mp4", fps=scene.settings.fps)
    run = CliRunner().invoke(app, ["fit", "--video", str(tmp_path / "camouflaged.mp4"), "--scene", str(folder / "colour.toml"),
                                   "--out", str(tmp_path / "fit")])
    assert run.exit_code == 2 and "error: the cloth's colours are not separable" in run.output, run.output
    assert len(run.output.strip().splitlines()) == 1


def test_scene_masks_key(tmp_path):
    from dreamcloth.cli.pipeline.scene import SceneError, load_scene, to_toml

    text = scene_text(DRAPE, "small", {"young_modulus": 60.0, "damping": 0.3}, with_fit=True)
    (tmp_path / "a.toml").write_text(text)
    assert load_scene(tmp_path / "a.toml").camera.masks == "background"  # the default stays
    (tmp_path / "b.toml").write_text(text.replace("[camera]\n", '[camera]\nmasks = "color"\n'))
    scene = load_scene(tmp_path / "b.toml")
    assert scene.camera.masks == "colour"
    (tmp_path / "c.toml").write_text(to_toml(scene))
    assert load_scene(tmp_path / "c.toml").camera.masks == "colour"
    (tmp_path / "d.toml").write_text(text.replace("[camera]\n", '[camera]\nmasks = "magic"\n'))
    with pytest.raises(SceneError, match="camera.masks = 'magic' is not one of background, colour"):
        load_scene(tmp_path / "d.toml")
