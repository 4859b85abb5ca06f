"""Fit a video end to end: the fit stages of ``fit.py`` plus identifiability and the reports.

``fit_video`` is what ``dreamcloth fit`` runs (and ``fit-batch``'s jobs and the accuracy
benchmark): it returns a :class:`FitOutcome` and writes params.json, fit.mp4, loss.png, params.png
and checkpoint.pt; the command draws the progress and prints the table.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from .devices import resolve_device, torch_threads
from .progress import Progress, silent
from .rollouts import loss_pool
from .scene import Scene, load_scene


def load_prior(spec: str | None, device, seed: int = 0):
    """``--prior DIR``: a builtin prior trained by ``dreamcloth prior train`` (its ``model/`` folder) or a
    diffusers video pipeline folder (``unet/`` or ``transformer/``), as a score-distillation loss on a
    rendered clip ``[T, 3, H, W]``.  Noise levels and noise come from a seeded generator."""
    if spec is None:
        return None
    import itertools

    import torch

    from dreamcloth.prior import BuiltinPrior, RuntimeConfig
    from dreamcloth.prior.pretrained import load_pretrained_prior

    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--prior {path}: no such folder")
    runtime = RuntimeConfig(device=str(device))
    if (path / "unet" / "config.json").is_file() or (path / "transformer" / "config.json").is_file():
        prior = load_pretrained_prior(path, runtime=runtime)
    elif (path / "config.json").is_file():
        prior = BuiltinPrior.from_pretrained(path, runtime=runtime)
    else:
        raise ValueError(f"--prior {path}: neither a builtin prior (config.json) nor a diffusers pipeline (unet/ or transformer/)")
    generator = torch.Generator().manual_seed(seed)
    steps = itertools.count()

    def sds(clip):
        return prior.sds(clip[None].float(), step=next(steps), generator=generator).loss

    return sds


@dataclasses.dataclass
class FitOutcome:
    """What a fit ended with.

    ``doc``: the params.json document (None when ``stopped_at`` is set: the fit was stopped with its
    checkpoint, as a killed process would leave it); ``result``: the fit's FitResult (its problem
    re-renders the fitted motion)."""

    doc: dict | None
    result: object
    stopped_at: int | None = None
    rendered: tuple | None = None  # (color, alpha) of the fit's last rollout, ``report_frames`` long

    @property
    def fitted_u(self):
        """The fitted point in the normalised coordinates of the fit's ParamSpace."""
        st = self.result.state
        return st.best["u"] if st.best is not None else st.u


def fit_video(video: Path, scene: Path | Scene, out: Path, cfg, masks: Path | None = None, device: str = "cpu",
              resume: bool = False, prior: str | None = None, identify: bool = True, truth: dict | None = None,
              frames: int | None = None, stop_after: int | None = None, target=None, progress: Progress = silent,
              log: Callable[[str], None] = lambda message: None, workers: int | None = None,
              report_frames: int | None = None, on_inputs_checked: Callable[[], None] | None = None) -> FitOutcome:
    """The whole fit with its reports into ``out``.

    ``scene``: a scene file or an already parsed Scene; ``target``: the video's frames and masks
    when the caller has them already (else decoded from ``video``/``masks``, the first ``frames``);
    ``truth``: true values drawn into params.png; ``stop_after``: end after that many material
    iterations, as a crash would (``resume`` continues).  ``progress`` reports the stage ``fit``
    (iterations), ``log`` the fit's events.  ``workers``: rollout processes for the probes, the
    polish and the identifiability analysis (``rollouts.resolve_workers``; None: its default);
    ``report_frames``: the fit.mp4 rollout goes on to this many frames, and the outcome's
    ``rendered`` holds them all (``predict``'s prediction).  ``on_inputs_checked``: called once the
    scene, the video and the camera are known good, before anything is written into ``out`` (``dreamcloth
    fit`` records its arguments there then, so that bad input leaves an earlier fit's folder alone).
    """
    import torch

    from . import fit as Fm
    from .report import plot_curves, write_fit_video, write_params_json

    dev = resolve_device(device)
    scene = scene if isinstance(scene, Scene) else load_scene(scene)
    target = target if target is not None else Fm.load_target(video, scene, masks, frames)
    space = Fm.ParamSpace(scene)
    names = space.names(scene)
    t_start = time.perf_counter()
    progress("fit", 0, cfg.iterations, "appearance")
    report_total = max(report_frames or 0, int(target.frames.shape[0]))
    with torch_threads(1), loss_pool(scene, target, cfg, torch.float32, dev, workers, log) as pool:
        if pool is not None:
            pool.report_frames = report_total
        def on_iteration(rec):
            vals = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, rec["values"].values()))
            progress("fit", rec["iteration"] + 1, cfg.iterations, f"loss {rec['loss']:.4f} h={rec['horizon']} {vals}")

        result = Fm.run_fit(scene, target, out, cfg, torch.float32, dev, resume=resume, prior=load_prior(prior, dev, cfg.seed),
                            on_iteration=on_iteration, log=log, stop_after=stop_after, pool=pool,
                            on_inputs_checked=on_inputs_checked)
        total = cfg.iterations
        if result.state.converged:  # the polish stopped early: the bar ends where the fit did
            total = result.state.iteration
            progress("fit", result.state.iteration, total, None)
        if stop_after is not None and result.state.iteration < cfg.iterations and not result.state.converged:
            return FitOutcome(None, result, stopped_at=result.state.iteration)
        outcome = FitOutcome(None, result)
        ident = None
        if identify and space.size > 0:
            progress("fit", result.state.iteration, total, "identifiability (curvature at the optimum)")
            ident = Fm.identifiability(result.problem, outcome.fitted_u, names, model=result.state.model)
        progress("fit", result.state.iteration, total, "report")
        ready = pool.rendered(result.problem, outcome.fitted_u, report_total) if pool is not None else None
        metrics = write_fit_video(out, result.problem, outcome.fitted_u, scene.settings.fps, report_total, ready)
        outcome.rendered = (metrics.pop("color"), metrics.pop("alpha"))
    notes = Fm.physics_notes(scene, space)
    extra = {
        "video": str(video), "scene": str(scene.path), "frames": int(target.frames.shape[0]),
        "substeps_per_frame": result.state.substeps, "seconds": round(time.perf_counter() - t_start, 1),
        "mask_iou_last_frame": metrics["mask_iou"][-1], "psnr_mean": float(sum(metrics["psnr"]) / len(metrics["psnr"])),
    }
    outcome.doc = write_params_json(out / "params.json", scene, space, result, ident, notes, extra)
    plot_curves(out, scene, space, result.history, truth)
    return outcome
