"""The fit pipeline end to end on a tiny drape: outputs, no NaN, resume == uninterrupted, bad input."""

import json
import math

import pytest
from typer.testing import CliRunner

from dreamcloth.cli.app import app
from dreamcloth.cli.pipeline.fit import FitConfig
from dreamcloth.cli.pipeline.fit_video import fit_video
from dreamcloth.cli.pipeline.simulate import run_simulation

from .scenes import drape_text, write_drape


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fitdata")
    truth = write_drape(folder, "truth.toml", E=60.0, damping=0.3, frames=10)
    run_simulation(truth, folder / "sim")
    scene = write_drape(folder, "fit.toml", E=100.0, damping=0.3, frames=10)  # placeholder E: the fit ignores it
    return folder / "sim" / "video.mp4", scene, folder


CFG = FitConfig(iterations=6, appearance_steps=30, horizon_start=6, starts=2)


@pytest.mark.slow
def test_fit_writes_reports_and_resume_matches(tiny_video, tmp_path, monkeypatch):
    video, scene, _ = tiny_video
    full_outcome = fit_video(video, scene, tmp_path / "full", CFG, identify=True)
    full = full_outcome.doc
    for name in ("params.json", "fit.mp4", "loss.png", "params.png", "checkpoint.pt"):
        assert (tmp_path / "full" / name).is_file(), name
    doc = json.loads((tmp_path / "full" / "params.json").read_text())
    (p,) = doc["parameters"]
    assert p["name"] == "young_modulus" and 20.0 <= p["value"] <= 400.0 and math.isfinite(p["value"])
    assert "young_modulus" in doc["identifiability"]["parameters"]
    assert 1 <= doc["iterations"] <= CFG.iterations  # the polish may converge before the last
    assert len(json.loads((tmp_path / "full" / "params.json").read_text())["parameters"]) == 1

    # killed after 3 iterations, then resumed: the same result as the uninterrupted run
    stopped = fit_video(video, scene, tmp_path / "split", CFG, identify=False, stop_after=3)
    assert stopped.stopped_at == 3 and stopped.doc is None
    assert not (tmp_path / "split" / "params.json").exists()
    resumed = fit_video(video, scene, tmp_path / "split", CFG, identify=False, resume=True).doc
    a, b = full["parameters"][0]["value"], resumed["parameters"][0]["value"]
    print(f"uninterrupted {a!r}, resumed {b!r}")
    assert a == b
    assert full["loss"] == resumed["loss"]

    # the probes', the polish's and the identifiability analysis' rollouts in two worker processes
    # (cli/pipeline/rollouts.py): the same values to the last bit
    from dreamcloth.cli.pipeline import rollouts

    pooled_rollouts = []
    losses_in_workers = rollouts.LossPool.losses

    def counted(self, problem, us, horizon):
        out = losses_in_workers(self, problem, us, horizon)
        assert self.workers == 2  # the workers computed them
        pooled_rollouts.extend(out)
        return out

    monkeypatch.setattr(rollouts.LossPool, "losses", counted)
    reports = []
    rendered_in_worker = rollouts.LossPool.rendered

    def report(self, problem, u, frames):
        reports.append(rendered_in_worker(self, problem, u, frames))
        return reports[-1]

    monkeypatch.setattr(rollouts.LossPool, "rendered", report)
    pooled_outcome = fit_video(video, scene, tmp_path / "pooled", CFG, identify=True, workers=2)
    pooled = pooled_outcome.doc
    assert len(pooled_rollouts) >= CFG.starts + 2  # the probes and at least one polish model
    assert len(reports) == 1  # asked once; whether a worker had it depends on where the polish ended
    for key in ("mask_iou_last_frame", "psnr_mean"):  # fit.mp4's rollout, wherever it ran
        assert pooled[key] == full[key], key
    assert pooled["parameters"] == full["parameters"] and pooled["loss"] == full["loss"]
    assert pooled["identifiability"] == full["identifiability"]
    losses = lambda outcome: [(h["loss"], h["evaluations"]) for h in outcome.result.history]  # noqa: E731
    assert losses(pooled_outcome) == losses(full_outcome)


def _run(args):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_bad_inputs_are_one_line_errors(tiny_video, tmp_path):
    video, scene, folder = tiny_video
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01not a video" * 500)
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(video.read_bytes()[: len(video.read_bytes()) // 2])
    short = write_drape(tmp_path, "long.toml", frames=40)
    blind = write_drape(tmp_path, "blind.toml", text=drape_text().replace(
        "look_at = [0.5, 0.45, 0.5]", "look_at = [0.5, 3.0, -5.0]"))
    unknown = write_drape(tmp_path, "unknown.toml", text=drape_text().replace(
        "[object.fit]", "[object.fit]\nstiffness = [1.0, 2.0]"))
    inverted = write_drape(tmp_path, "inverted.toml", text=drape_text().replace(
        "young_modulus = [20.0, 400.0]", "young_modulus = [400.0, 20.0]"))
    wide = write_drape(tmp_path, "wide.toml", text=drape_text().replace("height = 48", "height = 16"))  # a 64x48 video
    cases = [
        (["--video", str(junk), "--scene", str(scene)], "junk.mp4"),
        (["--video", str(truncated), "--scene", str(scene)], "cut.mp4"),
        (["--video", str(video), "--scene", str(short)], "40 are needed"),
        (["--video", str(video), "--scene", str(blind)], "sees nothing"),
        (["--video", str(video), "--scene", str(unknown)], "object[0].fit.stiffness is not a parameter"),
        (["--video", str(video), "--scene", str(inverted)], "low > high"),
        (["--video", str(tmp_path / "missing.mp4"), "--scene", str(scene)], "missing.mp4 does not exist"),
        (["--video", str(video)], "give both --video and --scene"),
        (["--video", str(video), "--scene", str(wide)], "resizing would stretch it"),
    ]
    for args, expected in cases:
        code, out = _run(["fit", "--out", str(tmp_path / "o"), "--iterations", "1", *args])
        errors = [l for l in out.splitlines() if l.startswith("error:")]
        assert code != 0, (args, out)
        assert len(errors) == 1 and expected in errors[0], (args, out)
    assert not (tmp_path / "o" / "params.json").exists()
    assert not (tmp_path / "o" / "fit_args.json").exists()  # nothing is written before the inputs are known good
    code, out = _run(["predict", "--video", str(video), "--scene", str(scene), "--context", "0", "--out", str(tmp_path / "p")])
    assert code == 2 and "error: --context must be at least 3 frames, got 0" in out, out


def test_resume_from_a_damaged_folder_names_the_file(tmp_path):
    folder = tmp_path / "fit"
    folder.mkdir()
    ckpt, args = folder / "checkpoint.pt", folder / "fit_args.json"
    ckpt.write_bytes(b"")
    good = {"video": "v.mp4", "scene": "s.toml", "masks": None, "prior": None, "truth": None,
            "config": {"iterations": 2, "lr": 0.2, "fit_velocity": False, "prior_weight": 0.0, "seed": 0, "horizon_start": 6}}
    cases = [
        ("garbage", "fit_args.json is not valid JSON"),
        (json.dumps({"video": "x"}), "fit_args.json lacks scene, masks, config"),
        (json.dumps({**good, "config": {"lr": 0.2}}), "config must hold exactly iterations"),
        (json.dumps({**good, "config": {**good["config"], "lr": "fast"}}), "config values must be numbers"),
    ]
    for text, expected in cases:
        args.write_text(text)
        code, out = _run(["fit", "--resume", str(folder)])
        errors = [l for l in out.splitlines() if l.startswith("error:")]
        assert code == 2 and len(errors) == 1 and expected in errors[0], (text, out)
    args.unlink()
    code, out = _run(["fit", "--resume", str(folder)])
    assert code == 2 and "fit_args.json is missing" in out, out

    from dreamcloth.cli.pipeline.errors import InputError
    from dreamcloth.cli.pipeline.fit import load_checkpoint

    for data in (b"", b"\x80\x03not a pickle" * 20):
        ckpt.write_bytes(data)
        with pytest.raises(InputError, match="checkpoint.pt cannot be read as a fit checkpoint"):
            load_checkpoint(ckpt)


@pytest.mark.slow
def test_predict_reports_its_time_step_check(tiny_video, tmp_path):
    """``dreamcloth predict`` simulates its prediction again at half the time step and says how well
    the two agree (prediction.json and the terminal); the tiny drape is smooth, so it agrees."""
    video, scene, _ = tiny_video
    out = tmp_path / "predict"
    res = CliRunner().invoke(app, ["predict", "--video", str(video), "--scene", str(scene), "--context", "6", "--horizon", "4",
                                   "--iterations", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    check = json.loads((out / "prediction.json").read_text())["time_step_check"]
    assert check["against_substeps_per_frame"] == 2 * check["substeps_per_frame"]
    assert [f["frame"] for f in check["per_frame"]] == [6, 7, 8, 9]
    assert check["mean_mask_iou"] > 0.95 and not check["sensitive"]
    assert f"agrees with it to mean IoU {check['mean_mask_iou']:.3f}" in " ".join(res.output.split())
    # and without it: no second rollout, nothing reported
    res = CliRunner().invoke(app, ["predict", "--video", str(video), "--scene", str(scene), "--context", "6", "--horizon", "4",
                                   "--iterations", "1", "--out", str(tmp_path / "unchecked"), "--no-time-step-check"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "unchecked" / "prediction.json").read_text())["time_step_check"] is None
    assert "half the time step" not in res.output


def test_a_failed_time_step_check_leaves_the_prediction_standing():
    """A rollout at half the time step that fails (NaN) gives the check no figure, says why, and
    gives the fit's problem its own time step back."""
    import types

    import torch

    from dreamcloth import taichi_mpm as M
    from dreamcloth.cli.pipeline.predict import check_time_step

    sim = types.SimpleNamespace(config=types.SimpleNamespace(substeps_per_frame=7))

    def with_substeps(k):
        sim.config.substeps_per_frame = k

    def rollout(u, frames):
        assert sim.config.substeps_per_frame == 14
        raise M.SimulationError("NaN/inf at substep 3")

    problem = types.SimpleNamespace(sim=sim, with_substeps=with_substeps, rollout=rollout, render=None)
    check = check_time_step(problem, None, torch.ones(6, 1, 4, 4), 3, 6)
    assert check == {"substeps_per_frame": 7, "against_substeps_per_frame": 14, "error": "NaN/inf at substep 3", "sensitive": None}
    assert sim.config.substeps_per_frame == 7
