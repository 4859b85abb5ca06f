import json

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from dreamcloth.cli.app import app
from dreamcloth.cli.pipeline.export import write_points as write_ply
from dreamcloth.cli.pipeline.video_io import read_video


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in lines[0], result.output


def test_non_watertight_mesh_is_a_one_line_error(tmp_path):
    mesh = trimesh.creation.box()
    open_box = trimesh.Trimesh(mesh.vertices, mesh.faces[:-2])  # one side missing
    assert not open_box.is_watertight
    path = tmp_path / "open.obj"
    open_box.export(path)
    result = CliRunner().invoke(app, ["morph", "--target", str(path), "--out", str(tmp_path / "out")])
    _one_line_error(result, "not watertight", "open.obj")
    assert not (tmp_path / "out").exists()


def test_target_outside_the_grid_is_a_one_line_error(tmp_path):
    path = tmp_path / "slab.stl"
    trimesh.creation.box((1.0, 0.2, 0.2)).export(path)  # a 1 m slab in a 1 m domain with walls
    args = ["morph", "--target", str(path), "--target-scale", "1.0", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    _one_line_error(result, "outside the simulation grid", "--target-scale")
    # scaled to the source's volume (the default) a long thin rod still does not fit
    rod = tmp_path / "rod.stl"
    trimesh.creation.cylinder(radius=0.01, height=1.0).export(rod)
    result = CliRunner().invoke(app, ["morph", "--target", str(rod), "--out", str(tmp_path / "out")])
    _one_line_error(result, "target shape extends outside the simulation grid")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--source", "cone"], "--source"),
        (["--target", "missing.obj"], "--target"),
        (["--resolution", "8"], "--resolution"),
        (["--optimizer", "sgd"], "--optimizer"),
        (["--loss", "l1"], "--loss"),
        (["--intervals", "0"], "--intervals"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, extra, message):
    result = CliRunner().invoke(app, ["morph", "--out", str(tmp_path / "out")] + extra)
    _one_line_error(result, message)


def test_write_ply_roundtrip(tmp_path):
    pts = np.random.default_rng(0).random((17, 3))
    write_ply(tmp_path / "p.ply", pts)
    cloud = trimesh.load(tmp_path / "p.ply")
    assert np.allclose(np.asarray(cloud.vertices), pts, atol=1e-6)


def test_morph_writes_video_plys_chamfer_and_plot(tmp_path):
    out = tmp_path / "run"
    args = ["morph", "--source", "sphere", "--target", "torus", "--out", str(out), "--resolution", "16", "--size", "0.3"]
    args += ["--intervals", "2", "--iterations", "2", "--width", "64", "--height", "48", "--fps", "12"]
    args += ["--backend", "portable"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    report = json.loads((out / "chamfer.json").read_text())
    assert len(report["intervals"]) == 2
    assert report["intervals"][-1]["squared"] < report["initial"]["squared"]
    assert report["ratio"] == pytest.approx(report["intervals"][-1]["squared"] / report["initial"]["squared"])
    plys = sorted((out / "frames").glob("frame_*.ply"))
    frames = 1 + 2 * 6  # the source, then 6 frames per interval (60 substeps, one frame every 10)
    assert len(plys) == frames
    first = np.asarray(trimesh.load(plys[0]).vertices)
    last = np.asarray(trimesh.load(plys[-1]).vertices)
    assert first.shape == last.shape == (report["particles"], 3)
    print("largest displacement", np.abs(last - first).max())
    assert np.abs(last - first).max() > 0.005  # the particles moved (a sixth of a grid cell and more)
    video = read_video(out / "morph.mp4")
    assert video.frames.shape == (frames, 48, 64, 3)
    assert np.abs(video.frames[-1].astype(float) - video.frames[0].astype(float)).mean() > 0.5
    assert (out / "loss.png").stat().st_size > 1000


def test_a_failed_run_is_a_one_line_error_with_exit_code_3(tmp_path, monkeypatch):
    import dreamcloth.cli.pipeline.morph_control as morph_module

    def failing(*args, **kwargs):
        raise FloatingPointError("the gradient of the morph objective is not finite")

    monkeypatch.setattr(morph_module, "morph", failing)
    args = ["morph", "--out", str(tmp_path / "out"), "--resolution", "16", "--size", "0.3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: the morph failed") and "not finite" in lines[0]
