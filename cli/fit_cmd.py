"""``dreamcloth fit`` and ``dreamcloth predict``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DEMO_SCENE, DEMO_TRUTH, DEMO_VIDEO, DeviceOption, progress_bar, resolve_device, torch_threads
from .errors import CliError, report_errors


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


def _fit_config(iterations: int, lr: float, fit_velocity: bool, prior_weight: float, seed: int, horizon_start: int):
    from .fit import FitConfig

    return FitConfig(iterations=iterations, lr=lr, fit_velocity=fit_velocity, w_sds=prior_weight, seed=seed, horizon_start=horizon_start)


def do_fit(video: Path, scene_path: Path, out: Path, cfg, masks: Path | None = None, device: str = "cpu",
           resume: bool = False, prior: str | None = None, identify: bool = True, truth: dict | None = None,
           frames: int | None = None, quiet: bool = False, stop_after: int | None = None, result_out: list | None = None) -> dict:
    """The whole fit with reports; returns the params.json document (and appends the FitResult to ``result_out``)."""
    import torch
    from rich.console import Console

    from . import fit as Fm
    from .report import plot_curves, write_fit_video, write_params_json
    from .scene import load_scene

    console = Console(quiet=quiet)
    dev = resolve_device(device)
    scene = load_scene(scene_path)
    target = Fm.load_target(video, scene, masks, frames)
    space = Fm.ParamSpace(scene)
    names = space.names(scene)
    t_start = time.perf_counter()
    with progress_bar() as bar, torch_threads(1):
        if quiet:
            bar.stop()
        task = bar.add_task("fit", total=cfg.iterations, status="appearance")

        def on_iteration(rec):
            vals = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, rec["values"].values()))
            bar.update(task, completed=rec["iteration"] + 1, status=f"loss {rec['loss']:.4f} h={rec['horizon']} {vals}")

        result = Fm.run_fit(scene, target, out, cfg, torch.float32, dev, resume=resume, prior=load_prior(prior, dev, cfg.seed),
                            on_iteration=on_iteration, log=(lambda m: None) if quiet else (lambda m: bar.console.print(m)),
                            stop_after=stop_after)
        if result.state.converged:  # the polish stopped early: the bar ends where the fit did
            bar.update(task, total=result.state.iteration, completed=result.state.iteration)
        if stop_after is not None and result.state.iteration < cfg.iterations and not result.state.converged:
            return {"stopped_at": result.state.iteration}
        u = result.state.best["u"] if result.state.best is not None else result.state.u
        ident = None
        if identify and space.size > 0:
            bar.update(task, status="identifiability (curvature at the optimum)")
            ident = Fm.identifiability(result.problem, u, names)
        bar.update(task, status="report")
        metrics = write_fit_video(out, result.problem, u, scene.settings.fps)
    notes = Fm.physics_notes(scene, space)
    extra = {
        "video": str(video), "scene": str(scene_path), "frames": int(target.frames.shape[0]),
        "substeps_per_frame": result.state.substeps, "seconds": round(time.perf_counter() - t_start, 1),
        "mask_iou_last_frame": metrics["mask_iou"][-1], "psnr_mean": float(sum(metrics["psnr"]) / len(metrics["psnr"])),
    }
    doc = write_params_json(out / "params.json", scene, space, result, ident, notes, extra)
    plot_curves(out, scene, space, result.history, truth)
    _print_table(console, doc, truth)
    for n in doc["notes"]:  # the physics notes and any value stopped by its range's edge
        console.print(f"[yellow]note:[/] {n}")
    console.print(f"wrote {out}/params.json, fit.mp4 (video | fit | difference), loss.png, params.png, checkpoint.pt")
    if result_out is not None:
        result_out.append(result)
    return doc


def _print_table(console, doc: dict, truth: dict | None) -> None:
    from rich.table import Table

    t = Table(title="recovered material parameters")
    for c in ("parameter", "fitted", "range", "initial", "identifiable") + (("true", "error") if truth else ()):
        t.add_column(c)
    for p in doc["parameters"]:
        edge = p.get("at_range_edge")
        value = f"{p['value']:.4g}" + (f" [yellow](at {'bottom' if edge == 'low' else 'top'} of range)[/]" if edge else "")
        row = [p["name"], value, f"[{p['range'][0]:g}, {p['range'][1]:g}]", f"{p['initial']:.4g}",
               {True: "yes", False: "[red]no[/]", None: "?"}[p.get("identifiable")]]
        if truth:
            tv = truth.get(p["name"])
            row += [f"{tv:.4g}" if tv is not None else "-", f"{100 * (p['value'] - tv) / tv:+.1f}%" if tv else "-"]
        t.add_row(*row)
    console.print(t)


@report_errors
def fit(
    video: Annotated[Optional[Path], typer.Option("--video", help="Video to fit (any ffmpeg format). Default: the bundled demo.")] = None,
    scene: Annotated[Optional[Path], typer.Option("--scene", help="Scene file with [object.fit] ranges. Default: the demo's.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/fit"),
    masks: Annotated[Optional[Path], typer.Option("--masks", help="Foreground mask video (default: from the background colour).")] = None,
    iterations: Annotated[int, typer.Option(help="Material-stage iterations.")] = 30,
    lr: Annotated[float, typer.Option(help="Adam step in normalised parameter space.")] = 0.2,
    horizon_start: Annotated[int, typer.Option(help="Frames used by the first iterations.")] = 6,
    fit_velocity: Annotated[bool, typer.Option("--fit-velocity", help="Also fit a global initial velocity on the first frames.")] = False,
    prior: Annotated[Optional[str], typer.Option("--prior", help="Video prior directory (builtin or diffusers) for score distillation.")] = None,
    prior_weight: Annotated[float, typer.Option(help="Weight of the score-distillation term.")] = 0.01,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the interrupted fit in this folder.")] = None,
    identify: Annotated[bool, typer.Option(help="Curvature analysis of which parameters the video determines.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the starting-point probe.")] = 0,
    device: DeviceOption = "cpu",
) -> None:
    """Estimate material parameters from a video: params.json, fit.mp4, loss.png, params.png, checkpoint.pt."""
    truth = None
    if resume is not None:
        ckpt = resume / "checkpoint.pt"
        if not ckpt.is_file():
            raise CliError(f"--resume {resume}: no checkpoint.pt there")
        meta = json.loads((resume / "fit_args.json").read_text())
        video, scene, masks, out = Path(meta["video"]), Path(meta["scene"]), (Path(meta["masks"]) if meta["masks"] else None), resume
        cfg_args = meta["config"]
        truth = meta.get("truth")
        prior, prior_weight = meta.get("prior"), cfg_args["prior_weight"]
    else:
        if video is None and scene is None:
            video, scene = DEMO_VIDEO, DEMO_SCENE
            truth = json.loads(DEMO_TRUTH.read_text())
        elif video is None or scene is None:
            raise CliError("give both --video and --scene (or neither, to fit the bundled demo)")
        if not video.is_file():
            raise FileNotFoundError(f"video {video} does not exist")
        cfg_args = dict(iterations=iterations, lr=lr, fit_velocity=fit_velocity, prior_weight=prior_weight if prior else 0.0,
                        seed=seed, horizon_start=horizon_start)
        out.mkdir(parents=True, exist_ok=True)
        (out / "fit_args.json").write_text(json.dumps({"video": str(video.resolve()), "scene": str(scene.resolve()),
                                                       "masks": str(masks.resolve()) if masks else None, "config": cfg_args,
                                                       "prior": prior, "truth": truth}, indent=2))
    cfg = _fit_config(**cfg_args)
    do_fit(video, scene, out, cfg, masks, device, resume=resume is not None, prior=prior, identify=identify, truth=truth)


def do_predict(video: Path, scene_path: Path, out: Path, context: int, horizon: int, cfg, masks: Path | None = None,
               device: str = "cpu", quiet: bool = False, resume: bool = False) -> dict:
    """Fit on the first ``context`` frames, simulate ``horizon`` more, and score them against the video.

    ``resume``: continue the fit from ``out``'s checkpoint (what ``dreamcloth fit-batch`` does with an interrupted job)."""
    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table

    from dreamcloth.render import SILHOUETTE_ALPHA, side_by_side, write_png_frames, write_video

    from .common import foreground_masks
    from .losses import mask_iou, psnr
    from .scene import load_scene
    from .video_io import read_video

    if context < 3:
        raise CliError(f"--context must be at least 3 frames, got {context}")
    if horizon < 1:
        raise CliError(f"--horizon must be at least 1 frame, got {horizon}")
    scene = load_scene(scene_path)
    results: list = []
    doc = do_fit(video, scene_path, out, cfg, masks, device, frames=context, quiet=quiet, identify=False, result_out=results,
                 resume=resume)
    problem = results[0].problem
    u = results[0].state.best["u"] if results[0].state.best is not None else results[0].state.u
    total = context + horizon
    with torch.no_grad(), torch_threads(1):
        traj = problem.rollout(u, total)
        color, alpha = problem.render(traj, range(total))
    color = color.clamp(0, 1).float().cpu()
    # the predicted silhouette is cut from the predicted image exactly as the video's are cut from
    # the video (colour distance to the background), so the IoU compares like with like
    cut_from_background = masks is None and scene.camera.masks == "background"
    pred_masks = foreground_masks(color, scene.camera.background) if cut_from_background else (alpha >= SILHOUETTE_ALPHA).float().cpu()
    write_video(color, out / "predicted.mp4", fps=scene.settings.fps)
    write_png_frames(color[context:], out / "predicted_frames")
    write_png_frames(pred_masks[context:, 0], out / "predicted_masks", prefix="mask")
    c = scene.camera
    full = read_video(video, fps=scene.settings.fps, size=(c.height, c.width))
    frames = full.as_tensor()
    if masks is not None:
        mv = read_video(masks, fps=scene.settings.fps, size=(c.height, c.width))
        true_masks = (mv.as_tensor().mean(1, keepdim=True) > 0.5).float()
    elif scene.camera.masks == "colour":
        from .colour_masks import colour_masks_for_scene

        true_masks = colour_masks_for_scene(frames, scene)
    else:
        true_masks = foreground_masks(frames, c.background)
    scores = []
    for t in range(context, min(total, frames.shape[0], true_masks.shape[0])):
        scores.append({"frame": t, "mask_iou": mask_iou(pred_masks[t], true_masks[t]), "psnr": psnr(color[t], frames[t])})
    if scores:
        n = len(scores)
        write_video(side_by_side([frames[context : context + n], color[context : context + n]]), out / "prediction_vs_video.mp4", fps=scene.settings.fps)
    report = {"context": context, "horizon": horizon, "frames_scored": len(scores), "per_frame": scores,
              "last_frame": scores[-1] if scores else None,
              "mean_mask_iou": float(np.mean([s["mask_iou"] for s in scores])) if scores else None,
              "fit": {p["name"]: p["value"] for p in doc["parameters"]}}
    (out / "prediction.json").write_text(json.dumps(report, indent=2))
    console = Console(quiet=quiet)
    if scores:
        t = Table(title=f"prediction: frames {context}..{context + len(scores) - 1} (not seen by the fit)")
        for col in ("frame", "mask IoU", "PSNR (dB)"):
            t.add_column(col)
        for s in scores:
            t.add_row(str(s["frame"]), f"{s['mask_iou']:.3f}", f"{s['psnr']:.2f}")
        console.print(t)
    else:
        console.print("the video has no frames after the context: nothing to score (predicted frames written)")
    console.print(f"wrote {out}/predicted.mp4, predicted_frames/, predicted_masks/, prediction.json")
    return report


@report_errors
def predict(
    video: Annotated[Path, typer.Option("--video", help="Video whose first frames are fitted.")],
    scene: Annotated[Path, typer.Option("--scene", help="Scene file with [object.fit] ranges.")],
    context: Annotated[int, typer.Option(help="Frames the fit sees.")] = 11,
    horizon: Annotated[int, typer.Option(help="Frames predicted after the context.")] = 11,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/predict"),
    masks: Annotated[Optional[Path], typer.Option("--masks", help="Foreground mask video.")] = None,
    iterations: Annotated[int, typer.Option(help="Material-stage iterations.")] = 30,
    lr: Annotated[float, typer.Option(help="Adam step in normalised parameter space.")] = 0.2,
    seed: int = 0,
    device: DeviceOption = "cpu",
) -> None:
    """Fit on the first --context frames, simulate --horizon more; mask IoU and PSNR on the frames the fit did not see."""
    if not video.is_file():
        raise FileNotFoundError(f"video {video} does not exist")
    cfg = _fit_config(iterations, lr, False, 0.0, seed, min(6, context))
    do_predict(video, scene, out, context, horizon, cfg, masks, device)
