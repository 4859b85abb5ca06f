import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dreamcloth.cli.app import app
from dreamcloth.cli.pipeline.sheet import deform_sheet, sheet_mesh
from dreamcloth.cli.pipeline.video_io import read_video


@pytest.mark.parametrize("motion", ["wave", "fold"])
def test_render_sheet_writes_a_readable_moving_video(tmp_path, motion):
    out = tmp_path / f"{motion}.mp4"
    args = ["render", "sheet", "--out", str(out), "--motion", motion, "--frames", "6", "--fps", "12"]
    args += ["--width", "64", "--height", "48", "--resolution", "8", "--backend", "portable"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    video = read_video(out)
    assert video.frames.shape == (6, 48, 64, 3)
    assert video.fps == pytest.approx(12)
    frames = video.frames.astype(np.float64)
    background = frames[:, 0, 0].mean(0)  # the top-left corner shows the background
    cloth = np.abs(frames - background).max(-1) > 40
    # The sheet covers a good part of the picture but not all of it...
    assert 0.05 < cloth.mean() < 0.9
    # ...and it moves.
    assert np.abs(frames[-1] - frames[0]).mean() > 1.0


def test_fold_bends_without_stretching():
    # The fold integrates a unit tangent: the length of a line across the fold stays 1.
    vertices, _, uv = sheet_mesh(12)
    assert torch.allclose(deform_sheet(uv, 0.0, "fold"), vertices, atol=1e-6)
    u = torch.linspace(0.0, 1.0, 4001)
    line_uv = torch.stack([u, torch.full_like(u, 0.5)], -1)
    bent = deform_sheet(line_uv, 0.7, "fold")
    length = (bent[1:] - bent[:-1]).norm(dim=-1).sum().item()
    assert length == pytest.approx(1.0, abs=2e-3)
    assert bent[:, 1].max() > 0.1  # it did fold up
    assert torch.equal(bent[:, 2], line_uv[:, 1] - 0.5)  # folding about a line of constant z


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--frames", "0"], "--frames"),
        (["--per-triangle", "3"], "--per-triangle"),
        (["--motion", "spin"], "--motion"),
        (["--width", "8"], "--width"),
        (["--backend", "opengl"], "--backend"),
        (["--out", "sheet.txt"], "--out"),
    ],
)
def test_render_sheet_bad_input_is_one_line_error(tmp_path, extra, message):
    args = ["render", "sheet", "--out", str(tmp_path / "s.mp4"), "--frames", "2", "--width", "32", "--height", "32"]
    result = CliRunner().invoke(app, args + extra)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not (tmp_path / "s.mp4").exists()


def test_render_help_lists_sheet():
    result = CliRunner().invoke(app, ["render", "--help"])
    assert result.exit_code == 0
    assert "sheet" in result.output
