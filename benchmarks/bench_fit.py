"""The time of one fit iteration (full horizon: simulate, render every frame, loss, backward) on the bundled demo."""

from __future__ import annotations

import time

import torch

from .common import Measurement

SECTION = "fit"


def run(quick: bool = False) -> list[Measurement]:
    from dreamcloth.cli.pipeline import fit as Fm
    from dreamcloth.cli.pipeline.demo import DEMO_SCENE, DEMO_VIDEO
    from dreamcloth.cli.pipeline.scene import load_scene
    from dreamcloth.cli.pipeline.simulation import SceneRenderer, build

    torch.set_num_threads(1)
    scene = load_scene(DEMO_SCENE)
    cfg = Fm.FitConfig(appearance_steps=5 if quick else 80)
    target = Fm.load_target(DEMO_VIDEO, scene)
    sim = build(scene)
    renderer = SceneRenderer(sim)
    space = Fm.ParamSpace(scene)
    appearance = Fm.fit_appearance(sim, renderer, target, cfg, log=lambda m: None)
    problem = Fm.FitProblem(sim, renderer, target, space, cfg, appearance)
    frames = 4 if quick else target.frames.shape[0]
    u = torch.zeros(space.size, dtype=torch.float64, requires_grad=True)

    def iteration():
        t = time.perf_counter()
        loss = problem.loss(u, frames)
        loss.backward()
        return time.perf_counter() - t

    iteration()  # compile
    times = [iteration() for _ in range(1 if quick else 3)]
    substeps = (frames - 1) * sim.config.substeps_per_frame
    return [Measurement(SECTION, "fit iteration (demo, full horizon)", min(times), "s",
                        f"{frames} frames, {substeps} substeps, {sim.model.num_particles} particles, "
                        f"{renderer.num_gaussians} Gaussians at {scene.camera.width}x{scene.camera.height}")]
