"""``dreamcloth fit`` and ``dreamcloth predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DEMO_SCENE, DEMO_TRUTH, DEMO_VIDEO, DeviceOption, bar_progress, progress_bar
from .errors import CliError, report_errors
from .pipeline.errors import not_a_file

WorkersOption = Annotated[Optional[int], typer.Option(
    "--workers", min=1, help="Processes for the fit's independent rollouts (starting points, polish); "
    "default: $DREAMCLOTH_WORKERS, else one per core. Same results for any number.")]


def _fit_config(iterations: int, lr: float, fit_velocity: bool, prior_weight: float, seed: int, horizon_start: int):
    from .pipeline.fit import FitConfig

    return FitConfig(iterations=iterations, lr=lr, fit_velocity=fit_velocity, w_sds=prior_weight, seed=seed, horizon_start=horizon_start)


def _run_fit(video: Path, scene: Path, out: Path, cfg, masks: Path | None, device: str, resume: bool, prior: str | None,
             identify: bool, truth: dict | None, workers: int | None = None, on_inputs_checked=None) -> None:
    """The fit with its progress bar, then the table of recovered values."""
    from rich.console import Console

    from .pipeline.fit_video import fit_video

    console = Console()
    with progress_bar() as bar:
        outcome = fit_video(video, scene, out, cfg, masks, device, resume=resume, prior=prior, identify=identify, truth=truth,
                            progress=bar_progress(bar), log=bar.console.print, workers=workers, on_inputs_checked=on_inputs_checked)
    doc = outcome.doc
    _print_table(console, doc, truth)
    for n in doc["notes"]:  # the physics notes and any value stopped by its range's edge
        console.print(f"[yellow]note:[/] {n}")
    console.print(f"wrote {out}/params.json, fit.mp4 (video | fit | difference), loss.png, params.png, checkpoint.pt")


def _print_table(console, doc: dict, truth: dict | None) -> None:
    from rich.table import Table

    t = Table(title="recovered material parameters")
    for c in ("parameter", "fitted", "range", "initial", "identifiable") + (("true", "error") if truth else ()):
        t.add_column(c)
    for p in doc["parameters"]:
        edge = p.get("at_range_edge")
        if edge and p.get("at_physical_limit"):
            flag = f" [yellow](at its physical limit {p['range'][0 if edge == 'low' else 1]:g})[/]"
        else:
            flag = f" [yellow](at {'bottom' if edge == 'low' else 'top'} of range)[/]" if edge else ""
        value = f"{p['value']:.4g}" + flag
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
    scene: Annotated[Optional[Path], typer.Option("--scene", help="Scene file with \\[object.fit] ranges. Default: the demo's.")] = None,
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
    workers: WorkersOption = None,
) -> None:
    """Estimate material parameters from a video: params.json, fit.mp4, loss.png, params.png, checkpoint.pt."""
    truth = None
    if resume is not None:
        ckpt = resume / "checkpoint.pt"
        if not ckpt.is_file():
            raise CliError(f"--resume {resume}: no checkpoint.pt there")
        meta = _read_fit_args(resume / "fit_args.json")
        video, scene, masks, out = Path(meta["video"]), Path(meta["scene"]), (Path(meta["masks"]) if meta["masks"] else None), resume
        cfg_args = meta["config"]
        truth = meta.get("truth")
        prior, prior_weight = meta.get("prior"), cfg_args["prior_weight"]
        record = None
    else:
        if video is None and scene is None:
            video, scene = DEMO_VIDEO, DEMO_SCENE
            truth = json.loads(DEMO_TRUTH.read_text())
        elif video is None or scene is None:
            raise CliError("give both --video and --scene (or neither, to fit the bundled demo)")
        if not video.is_file():
            raise FileNotFoundError(f"video {video} {not_a_file(video)}")
        cfg_args = dict(iterations=iterations, lr=lr, fit_velocity=fit_velocity, prior_weight=prior_weight if prior else 0.0,
                        seed=seed, horizon_start=horizon_start)
        args = {"video": str(video.resolve()), "scene": str(scene.resolve()), "masks": str(masks.resolve()) if masks else None,
                "config": cfg_args, "prior": prior, "truth": truth}

        def record() -> None:  # once the inputs are known good: a failed start leaves an earlier fit's folder as it was
            out.mkdir(parents=True, exist_ok=True)
            (out / "fit_args.json").write_text(json.dumps(args, indent=2))
    cfg = _fit_config(**cfg_args)
    _run_fit(video, scene, out, cfg, masks, device, resume is not None, prior, identify, truth, workers, on_inputs_checked=record)


def _read_fit_args(path: Path) -> dict:
    """``fit_args.json`` of a fit folder (what ``--resume`` re-runs), or a CliError naming what is wrong with it."""
    if not path.is_file():
        raise CliError(f"--resume: {path} is missing (the folder holds no fit started by `dreamcloth fit`)")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"--resume: {path} is not valid JSON ({exc})") from None
    missing = [k for k in ("video", "scene", "masks", "config") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CliError(f"--resume: {path} lacks {', '.join(missing)}; it was not written by `dreamcloth fit`")
    config_keys = ("iterations", "lr", "fit_velocity", "prior_weight", "seed", "horizon_start")
    config = meta["config"]
    if not isinstance(config, dict) or sorted(config) != sorted(config_keys):
        raise CliError(f"--resume: {path}: config must hold exactly {', '.join(config_keys)}")
    if any(isinstance(v, bool) != (k == "fit_velocity") or not isinstance(v, (int, float)) for k, v in config.items()):
        raise CliError(f"--resume: {path}: config values must be numbers (fit_velocity true/false), got {config}")
    for key in ("video", "scene"):
        if not isinstance(meta[key], str):
            raise CliError(f"--resume: {path}: {key} must be a path, got {meta[key]!r}")
    return meta


def _print_prediction(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    scores, context = report["per_frame"], report["context"]
    if scores:
        t = Table(title=f"prediction: frames {context}..{context + len(scores) - 1} (not seen by the fit)")
        for col in ("frame", "mask IoU", "PSNR (dB)"):
            t.add_column(col)
        for s in scores:
            t.add_row(str(s["frame"]), f"{s['mask_iou']:.3f}", f"{s['psnr']:.2f}")
        console.print(t)
    else:
        console.print("the video has no frames after the context: nothing to score (predicted frames written)")
    check = report.get("time_step_check")
    if check and "error" in check:
        console.print(f"time step check: no figure ({check['error']})")
    elif check:
        agree = f"mean IoU {check['mean_mask_iou']:.3f}, worst {check['worst_mask_iou']:.3f} at frame {check['worst_frame']}"
        if check["sensitive"]:
            console.print(f"[yellow]sensitive motion[/]: the prediction at half the time step agrees with it only to {agree} "
                          f"(below {check['threshold']}); folds and buckling make any frame-by-frame prediction unreliable")
        else:
            console.print(f"time step check: the prediction at half the time step agrees with it to {agree}")
    console.print(f"wrote {out}/predicted.mp4, predicted_frames/, predicted_masks/, prediction.json")


@report_errors
def predict(
    video: Annotated[Path, typer.Option("--video", help="Video whose first frames are fitted.")],
    scene: Annotated[Path, typer.Option("--scene", help="Scene file with \\[object.fit] ranges.")],
    context: Annotated[int, typer.Option(help="Frames the fit sees.")] = 11,
    horizon: Annotated[int, typer.Option(help="Frames predicted after the context.")] = 11,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/predict"),
    masks: Annotated[Optional[Path], typer.Option("--masks", help="Foreground mask video.")] = None,
    iterations: Annotated[int, typer.Option(help="Material-stage iterations.")] = 30,
    lr: Annotated[float, typer.Option(help="Adam step in normalised parameter space.")] = 0.2,
    seed: int = 0,
    device: DeviceOption = "cpu",
    workers: WorkersOption = None,
    time_step_check: Annotated[bool, typer.Option(help="Simulate the prediction again at half the time step and say how "
                                                       "well the two agree (a motion that folds is sensitive).")] = True,
) -> None:
    """Fit on the first --context frames, simulate --horizon more; mask IoU and PSNR on the frames the fit did not see."""
    if not video.is_file():
        raise FileNotFoundError(f"video {video} {not_a_file(video)}")
    from .pipeline.predict import predict_video

    if context < 3:  # before the fit's settings, whose first horizon is taken from it
        raise CliError(f"--context must be at least 3 frames, got {context}")
    cfg = _fit_config(iterations, lr, False, 0.0, seed, min(6, context))
    with progress_bar() as bar:
        prediction = predict_video(video, scene, out, context, horizon, cfg, masks, device, progress=bar_progress(bar),
                                   log=bar.console.print, workers=workers, time_step_check=time_step_check)
    _print_prediction(prediction.report, out)
