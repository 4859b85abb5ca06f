"""``dreamcloth simulate`` writes what a person can open: mp4, PNGs, masks, meshes, npz, the scene."""

import numpy as np
import trimesh
from typer.testing import CliRunner

from dreamcloth.cli.app import app
from dreamcloth.cli.pipeline.scene import load_scene
from dreamcloth.cli.pipeline.video_io import read_video

from .scenes import write_drape


def test_simulate_writes_every_output(tmp_path):
    scene = write_drape(tmp_path, frames=4)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["simulate", "--scene", str(scene), "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    video = read_video(out / "video.mp4")
    assert video.frames.shape == (4, 48, 64, 3)
    assert len(list((out / "frames").glob("*.png"))) == 4 and len(list((out / "masks").glob("*.png"))) == 4
    meshes = sorted((out / "meshes").glob("sheet_*.obj"))
    assert len(meshes) == 4
    m = trimesh.load(meshes[-1], process=False)
    assert m.vertices.shape == (64, 3) and m.faces.shape == (98, 3)
    states = np.load(out / "states.npz")
    assert states["x"].shape[0] == 4 and np.isfinite(states["x"]).all()
    assert np.allclose(states["x"][-1, :64], m.vertices, atol=1e-6)
    again = load_scene(out / "scene.toml")
    assert again.objects[0].values == load_scene(scene).objects[0].values


def test_simulate_again_into_the_same_folder_keeps_only_its_own_frames(tmp_path):
    scene = write_drape(tmp_path, frames=4)
    out = tmp_path / "out"
    (out / "meshes").mkdir(parents=True)
    (out / "meshes" / "notes.txt").write_text("mine")  # not simulate's: left alone
    for frames in ("4", "2"):
        result = CliRunner().invoke(app, ["simulate", "--scene", str(scene), "--out", str(out), "--frames", frames])
        assert result.exit_code == 0, result.output
    assert len(list((out / "frames").glob("*.png"))) == 2 and len(list((out / "masks").glob("*.png"))) == 2
    assert sorted(p.name for p in (out / "meshes").iterdir()) == ["notes.txt", "sheet_0000.obj", "sheet_0001.obj"]


def test_simulate_bad_device_and_scene(tmp_path):
    code = CliRunner().invoke(app, ["simulate", "--scene", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")])
    assert code.exit_code == 2 and "none.toml does not exist" in code.output
    scene = write_drape(tmp_path, frames=4)
    code = CliRunner().invoke(app, ["simulate", "--scene", str(scene), "--device", "tpu", "--out", str(tmp_path / "o")])
    assert code.exit_code == 2 and "--device must be" in code.output


def test_simulate_steps_for_values_outside_the_fit_range(tmp_path):
    """A young_modulus 50x above the scene's fit range [20, 400] gets the time step it needs, not a NaN
    (on the MPM solver, whose explicit membrane bounds dt; the mesh solver's implicit one does not)."""
    from dreamcloth.cli.pipeline.simulation import build

    inside = build(load_scene(write_drape(tmp_path, "inside.toml", E=60.0, frames=2, solver="mpm")))
    stiff_scene = write_drape(tmp_path, "stiff.toml", E=2e4, frames=2, solver="mpm")
    stiff = build(load_scene(stiff_scene))
    assert stiff.bounds.young_modulus[1] == 2e4
    assert stiff.config.substeps_per_frame >= 5 * inside.config.substeps_per_frame
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["simulate", "--scene", str(stiff_scene), "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert np.isfinite(np.load(out / "states.npz")["x"]).all()


def test_a_scene_of_cloth_and_a_solid_simulates_with_its_bounds(tmp_path):
    """The solid's particles carry 0 for the cloth-only stiffnesses: simulate's check that the values
    lie in the bounds reads the cloth's particles only (a review caught it refusing every mixed scene)."""
    from dreamcloth import taichi_mpm as M
    from dreamcloth.cli.pipeline.simulation import build

    from .scenes import drape_text

    text = drape_text(frames=2) + (
        '\n[[object]]\nname = "block"\nkind = "solid"\nmesh = "box"\nsize = [0.1, 0.1, 0.1]\ncenter = [0.5, 0.2, 0.5]\n')
    scene = load_scene(write_drape(tmp_path, text=text))
    assert scene.settings.cloth_solver == "mpm"
    sim = build(scene)
    params = sim.params()
    assert float(params.shear_stiffness.min()) == 0.0  # the block's
    traj = M.simulate(sim.model, sim.state0, params, sim.config, 2, bounds=sim.bounds)
    assert np.isfinite(traj.x.numpy()).all()
