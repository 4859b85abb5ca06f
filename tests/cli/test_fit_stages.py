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


def test_the_newton_polish_ends_at_the_minimum_and_leaves_its_model(data, tmp_path, monkeypatch):
    """The polish on a known loss in place of the rollout: a bowl in natural coordinates, off the
    start, with a ripple below the 2% scale. It must end within its resolution (a quarter of the
    stencil's step) of the bowl's minimum, report that point, and leave its last model, whose
    Hessian the identifiability analysis then reads without new rollouts."""
    from dreamcloth.cli.pipeline import polish as P

    scene, target, _ = data
    space = Fm.ParamSpace(scene)
    lo, hi = space.natural_box()
    zstar = lo + 0.35 * (hi - lo)
    curv = torch.logspace(0, 1, space.size, dtype=torch.float64)
    calls = {"n": 0}

    def bowl(self, u, horizon, v0=None):
        calls["n"] += 1
        d = space.natural(u) - zstar
        return 0.5 * (curv * d**2).sum() + 2e-6 * torch.sin(2 * math.pi * d.sum() / 2e-3) + 0.1

    monkeypatch.setattr(Fm.FitProblem, "loss", bowl)
    cfg = dataclasses.replace(CFG, iterations=8, polish_iterations=8)
    result = Fm.run_fit(scene, target, tmp_path / "polish", cfg, log=lambda m: None)
    print("polish losses", [round(h["loss"], 6) for h in result.history], "evaluations", [h["evaluations"] for h in result.history])
    assert all(h["optimizer"] == "newton" for h in result.history)
    assert result.state.converged and len(result.history) < 8
    z = space.natural(result.state.best["u"])
    assert float((z - zstar).abs().max()) < P.MIN_STEP * P.REL_STEP
    assert result.loss == result.history[-1]["loss"] == min(h["loss"] for h in result.history)
    model = result.state.model
    assert torch.allclose(torch.diagonal(model.H), curv, rtol=0.05)
    before = calls["n"]
    rep = Fm.identifiability(result.problem, result.state.best["u"], space.names(scene), model=model)
    assert calls["n"] == before  # no rollout: the model was centred within a step of this point
    assert rep["hessian"] == model.H.tolist()


def _bowl_loss(space, zstar, calls, fail_at=None):
    """A bowl in natural coordinates in place of the rollout, 1e-3 higher per doubling of the
    substeps (a loss that depends on dt, as a rollout's does); raises SimulationError at call ``fail_at``."""

    def loss(self, u, horizon, v0=None):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise M.SimulationError("simulation produced NaN/inf at substep 3 (during frame 1)", substep=3, frame=1)
        d = space.natural(u) - zstar
        dt_term = 1e-3 * math.log2(self.sim.config.substeps_per_frame)
        return 0.5 * (d**2).sum() + 0.1 + dt_term

    return loss


def test_a_fit_resumed_at_the_hand_over_to_the_polish_ends_where_an_uninterrupted_one_does(data, tmp_path, monkeypatch):
    """Stopped right after the last Adam iteration, the checkpoint holds Adam's state; the resumed
    fit must still start its polish from the best point measured (not Adam's last iterate), as the
    uninterrupted one does, and end on the same values."""
    scene, target, _ = data
    space = Fm.ParamSpace(scene)
    lo, hi = space.natural_box()
    monkeypatch.setattr(Fm.FitProblem, "loss", _bowl_loss(space, lo + 0.3 * (hi - lo), {"n": 0}))
    cfg = dataclasses.replace(CFG, iterations=8, polish_iterations=5, starts=2)
    full = Fm.run_fit(scene, target, tmp_path / "full", cfg, log=lambda m: None)
    assert [h["optimizer"] for h in full.history][:4] == ["adam"] * 3 + ["newton"]
    adam_full_horizon = [h["loss"] for h in full.history if h["optimizer"] == "adam" and h["horizon"] == target.frames.shape[0]]
    assert full.history[3]["loss"] <= min(adam_full_horizon)  # the polish began at the best point, and only went down
    Fm.run_fit(scene, target, tmp_path / "split", cfg, log=lambda m: None, stop_after=3)
    resumed = Fm.run_fit(scene, target, tmp_path / "split", cfg, log=lambda m: None, resume=True)
    assert resumed.values == full.values and resumed.loss == full.loss
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_after_dt_is_halved_the_loss_to_beat_is_measured_again(data, tmp_path, monkeypatch):
    """The best probed start is the loss to beat; when a NaN halves dt, its loss is measured again
    with the new dt, so that the result's loss is the loss of its values at the dt the fit ended with."""
    scene, target, _ = data
    space = Fm.ParamSpace(scene)
    zstar = space.natural(torch.zeros(space.size, dtype=torch.float64)) + 0.001  # the start (the middle) is nearly the minimum
    calls = {"n": 0}
    loss = _bowl_loss(space, zstar, calls, fail_at=2)  # call 1 probes the start, call 2 is Adam's first
    monkeypatch.setattr(Fm.FitProblem, "loss", loss)
    result = Fm.run_fit(scene, target, tmp_path / "halved", CFG, log=lambda m: None)
    assert any("halving dt" in e for e in result.state.events)
    assert torch.equal(result.state.best["u"], torch.zeros(space.size, dtype=torch.float64))  # Adam's steps overshoot: the start stays best
    at_end = float(loss(result.problem, result.state.best["u"], target.frames.shape[0]))
    assert result.loss == pytest.approx(at_end, abs=1e-12)
