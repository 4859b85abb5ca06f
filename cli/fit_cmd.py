"""``dreamcloth fit`` and ``dreamcloth predict``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DEMO_SCENE, DEMO_TRUTH, DEMO_VIDEO, DeviceOption, progress_bar, resolve_device, torch_threads
from .errors import CliError, report_errors


def _load_prior(spec: str | None, device):
    """``--prior DIR``: a trained builtin prior or a diffusers model directory, as an SDS loss on clips."""
    if spec is None:
        return None
    from dreamcloth.prior import load_prior  # noqa: PLC0415 - the prior is optional and heavy

    prior = load_prior(spec, device=device)

    def sds(clip):  # clip: [T, 3, H, W] in [0, 1] -> scalar surrogate loss
        return prior.sds(clip[None]).loss

    return sds


def _fit_config(iterations: int, lr: float, fit_velocity: bool, prior_weight: float, seed: int, horizon_start: int):
    from .fit import FitConfig

    return FitConfig(iterations=iterations, lr=lr, fit_velocity=fit_velocity, w_sds=prior_weight, seed=seed, horizon_start=horizon_start)


def do_fit(video: Path, scene_path: Path, out: Path, cfg, masks: Path | None = None, device: str = "cpu",
           resume: bool = False, prior: str | None = None, identify: bool = True, truth: dict | None = None,
           frames: int | None = None, quiet: bool = False, stop_after: int | None = None) -> dict:
    """The whole fit with reports; returns the params.json document."""
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

        result = Fm.run_fit(scene, target, out, cfg, torch.float32, dev, resume=resume, prior=_load_prior(prior, dev),
                            on_iteration=on_iteration, log=lambda m: bar.console.print(m), stop_after=stop_after)
        if stop_after is not None and result.state.iteration < cfg.iterations:
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
    for n in notes:
        console.print(f"[yellow]note:[/] {n}")
    console.print(f"wrote {out}/params.json, fit.mp4 (video | fit | difference), loss.png, params.png, checkpoint.pt")
    return doc


def _print_table(console, doc: dict, truth: dict | None) -> None:
    from rich.table import Table

    t = Table(title="recovered material parameters")
    for c in ("parameter", "fitted", "range", "initial", "identifiable") + (("true", "error") if truth else ()):
        t.add_column(c)
    for p in doc["parameters"]:
        row = [p["name"], f"{p['value']:.4g}", f"[{p['range'][0]:g}, {p['range'][1]:g}]", f"{p['initial']:.4g}",
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
