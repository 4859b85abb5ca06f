"""The optional fit stages: a video prior (score distillation), the initial-velocity stage, and the
dt halving that follows a NaN."""

import dataclasses
import math

import pytest
import torch

from dreamcloth import taichi_mpm as M
from dreamcloth.cli.pipeline import fit as Fm
from dreamcloth.cli.pipeline.scene import load_scene
from dreamcloth.cli.pipeline.simulate import run_simulation
from dreamcloth.prior import VideoUNet, save_builtin_model, training_scheduler

from .scenes import write_drape

CFG = Fm.FitConfig(iterations=2, appearance_steps=10, horizon_start=4, starts=1, polish_iterations=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stages")
    truth = write_drape(folder, "truth.toml", frames=6)
    run_simulation(truth, folder / "sim")
    scene = load_scene(write_drape(folder, "fit.toml", E=100.0, frames=6))
    return scene, Fm.load_target(folder / "sim" / "video.mp4", scene), folder


def test_prior_adds_a_score_distillation_term(data, tmp_path):
    from dreamcloth.cli.pipeline.fit_video import load_prior

    scene, target, _ = data
    torch.manual_seed(0)
    unet = VideoUNet(base_channels=8, channel_mults=(1, 2), layers_per_level=1, attention_levels=(False, True),
                     attention_heads=2, num_frames=4, sample_size=(8, 8))
    save_builtin_model(unet, training_scheduler(), tmp_path / "prior")
    plain = Fm.run_fit(scene, target, tmp_path / "plain", CFG, log=lambda m: None)
    cfg = dataclasses.replace(CFG, w_sds=0.01)
    with_prior = Fm.run_fit(scene, target, tmp_path / "prior_fit", cfg, prior=load_prior(str(tmp_path / "prior"), "cpu"), log=lambda m: None)
    a, b = plain.history[0]["loss"], with_prior.history[0]["loss"]
    print(f"first-iteration loss without prior {a:.5f}, with prior {b:.5f}")
    assert math.isfinite(b) and b != a
    assert all(math.isfinite(v) for v in with_prior.values.values())
    with pytest.raises(ValueError, match="neither a builtin prior"):
        load_prior(str(tmp_path), "cpu")


def test_initial_velocity_stage(data, tmp_path):
    scene, target, _ = data
    cfg = dataclasses.replace(CFG, fit_velocity=True, velocity_steps=3, velocity_frames=4)
    result = Fm.run_fit(scene, target, tmp_path / "v", cfg, log=lambda m: None)
    v0 = result.state.v0
    assert v0.shape == (3,) and torch.isfinite(v0).all() and v0.abs().max() > 0


def test_nan_halves_dt_and_retries(data, tmp_path, monkeypatch):
    scene, target, _ = data
    real = M.simulate
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first material-stage rollout (the first call is the start probe)
            raise M.SimulationError("simulation produced NaN/inf at substep 7 (during frame 1)", substep=7, frame=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(M, "simulate", flaky)
    logs = []
    result = Fm.run_fit(scene, target, tmp_path / "nan", CFG, log=logs.append)
    base = result.problem.sim.config.substeps_per_frame
    assert any("halving dt" in e for e in result.state.events)
    assert result.state.substeps == base and base % 2 == 0
    assert any("halving dt" in m for m in logs)
    assert all(math.isfinite(v) for v in result.values.values())


def test_the_lbfgs_polish_line_searches_to_the_minimum(data, tmp_path, monkeypatch):
    """The polish on a known smooth loss (a quadratic in u, in place of the rollout): it must reach the
    minimum.  L-BFGS's first trial step moves u by 1 (t = 1 / |g|_1), past the minimum 0.3 away.
    With torch's default max_eval for max_iter=1 the line search had no evaluation left to spend: t
    fell back to 0 and the fit reported convergence at its first polish iteration, loss unchanged."""
    scene, target, _ = data

    def quadratic(self, u, horizon, v0=None):
        curv = torch.logspace(1, 2, u.numel(), dtype=torch.float64)
        return 0.5 * (curv * (u + 0.3) ** 2).sum() + 0.1

    monkeypatch.setattr(Fm.FitProblem, "loss", quadratic)
    cfg = dataclasses.replace(CFG, iterations=8, polish_iterations=8)
    result = Fm.run_fit(scene, target, tmp_path / "polish", cfg, log=lambda m: None)
    first = result.history[0]["loss"]
    print("polish losses", [round(h["loss"], 6) for h in result.history], "evaluations", [h["evaluations"] for h in result.history])
    assert all(h["optimizer"] == "lbfgs" for h in result.history)
    assert max(h["evaluations"] for h in result.history) > 1  # a line search ran
    assert result.loss - 0.1 < 1e-4 * (first - 0.1)
    assert result.loss <= min(h["loss"] for h in result.history)  # the best point evaluated is the result
