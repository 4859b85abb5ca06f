"""The fit's rollout workers (cli/pipeline/rollouts.py): how many, the same values as this process
to the last bit, and a worker that dies leaves its rollouts to this process."""

import math

import pytest
import torch

from dreamcloth.cli.pipeline import fit as Fm
from dreamcloth.cli.pipeline import rollouts
from dreamcloth.cli.pipeline.devices import torch_threads
from dreamcloth.cli.pipeline.scene import load_scene
from dreamcloth.cli.pipeline.simulate import run_simulation
from dreamcloth.cli.pipeline.simulation import SceneRenderer, build

from .scenes import write_drape


def test_the_number_of_workers(monkeypatch):
    monkeypatch.delenv(rollouts.ENV, raising=False)
    monkeypatch.setattr(rollouts, "usable_cores", lambda: 16)
    assert rollouts.resolve_workers(None, "cpu") == rollouts.MAX_WORKERS
    assert rollouts.resolve_workers(3, "cpu") == 3
    assert rollouts.resolve_workers(None, "cuda:0") == 1  # one device: no side-by-side rollouts
    monkeypatch.setenv(rollouts.ENV, "2")
    assert rollouts.resolve_workers(None, "cpu") == 2
    assert rollouts.resolve_workers(1, "cpu") == 1  # the option wins over the variable
    monkeypatch.setenv(rollouts.ENV, "two")
    with pytest.raises(ValueError, match="DREAMCLOTH_WORKERS='two' is not a whole number"):
        rollouts.resolve_workers(None, "cpu")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        rollouts.resolve_workers(0, "cpu")


def test_a_worker_whose_pool_closed_during_its_rollout_ends_quietly(monkeypatch):
    """``LossPool.close`` while a worker still rolls out (the fit's speculative report render at its
    end): the worker's answer finds the connection closed, and it ends without a traceback."""
    import pickle
    import socket
    import threading
    from multiprocessing.connection import Connection

    closed = threading.Event()

    def slow_rollout(problem, *task):
        closed.wait(5)
        return ("ok", 1.0)

    monkeypatch.setattr(rollouts, "_problem", lambda data: None)
    monkeypatch.setattr(rollouts, "_run", slow_rollout)
    ours, theirs = socket.socketpair()
    errors = []

    def worker():
        try:
            rollouts._serve(theirs.detach())
        except BaseException as exc:  # noqa: BLE001 - what the test looks for
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    conn = Connection(ours.detach())
    conn.send_bytes(b"problem")
    conn.send_bytes(pickle.dumps(("loss",)))
    conn.close()
    closed.set()
    t.join(10)
    assert not t.is_alive() and errors == []


def test_workers_give_this_process_values_and_a_dead_one_leaves_them_here(tmp_path):
    truth = write_drape(tmp_path, "truth.toml", E=60.0, frames=5)
    run_simulation(truth, tmp_path / "sim")
    scene = load_scene(write_drape(tmp_path, "fit.toml", E=100.0, frames=5))
    target = Fm.load_target(tmp_path / "sim" / "video.mp4", scene)
    cfg = Fm.FitConfig(appearance_steps=5)
    sim = build(scene)
    renderer = SceneRenderer(sim)
    appearance = Fm.fit_appearance(sim, renderer, target, cfg, lambda m: None)
    problem = Fm.FitProblem(sim, renderer, target, Fm.ParamSpace(scene), cfg, appearance)
    us = [torch.tensor([a], dtype=torch.float64) for a in (-1.0, 0.0, 0.7)]
    # one torch thread, as the fit runs (fit_video) and the workers do: a float32 reduction's order
    # depends on the thread count
    with torch_threads(1):
        here = [problem.loss_or_error(u, 5) for u in us]
        assert all(isinstance(v, float) and math.isfinite(v) for v in here)
        logs = []
        pool = rollouts.LossPool(scene, target, cfg, torch.float32, "cpu", 2, logs.append)
        try:
            assert pool.losses(problem, us, 5) == here  # bit for bit
            # the report's rollout, rendered by a worker while this process works on: the same bits
            pool.report_frames = 5
            pool.speculate(problem, us[1])
            assert pool.losses(problem, us[:1], 5) == here[:1]  # the other worker takes it meanwhile
            color, alpha = problem.rendered_rollout(us[1], 5)
            assert pool.rendered(problem, us[2], 5) is None  # not the point it rendered
            got = pool.rendered(problem, us[1], 5)
            assert got is not None and torch.equal(got[0], color) and torch.equal(got[1], alpha)
            pool._procs[0].kill()
            pool._procs[0].wait()
            assert pool.losses(problem, us, 5) == here  # the rest in this process
            assert pool.workers == 0 and any("rollout worker stopped" in m for m in logs)
        finally:
            pool.close()
