"""``dreamcloth prior ...``: train the builtin video prior on a folder of videos and sample from it.

The CLI owns files: it decodes videos (``cli.pipeline.video_io.read_video``), hands tensors to
``dreamcloth.prior`` and writes what comes back (``render.video.write_video``).  Heavy imports
happen inside the commands so ``dreamcloth --help`` stays fast.
"""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import check_output
from .errors import CliError, report_errors

prior_app = typer.Typer(
    name="prior",
    help="The video diffusion prior: train the builtin model, sample from it.",
    no_args_is_help=True,
)

#: Containers ffmpeg reads that a training folder is searched for.
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif", ".mpg", ".mpeg")

Size = Annotated[str, typer.Option("--size", help="Frame size HxW (or one number for square), e.g. 64x64.")]


def parse_size(text: str) -> tuple[int, int]:
    """``"64"`` -> (64, 64); ``"48x64"`` -> (48, 64)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise CliError(f"bad --size {text!r}: use HxW, e.g. 64x64") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise CliError(f"bad --size {text!r}: use HxW, e.g. 64x64")
    return parts[0], parts[1]


def find_videos(data: str) -> list[Path]:
    """Video files named by ``data``: a folder (searched recursively) or a glob pattern."""
    path = Path(data)
    if any(ch in data for ch in "*?["):
        files = [Path(p) for p in sorted(glob.glob(data, recursive=True)) if Path(p).is_file()]
        if not files:
            raise CliError(f"--data pattern {data!r} matches no files")
        return files
    if not path.exists():
        raise CliError(f"--data folder {path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise CliError(f"--data folder {path} contains no videos ({', '.join(VIDEO_SUFFIXES)})")
    return files


def load_training_videos(files: list[Path], fps: float, size: tuple[int, int], frames: int):
    """Decode every file at ``fps`` and ``size``; each must have at least ``frames`` frames."""
    from .pipeline.video_io import read_video

    return [read_video(f, fps=fps, size=size, min_frames=frames).as_tensor() for f in files]


@prior_app.command("train")
@report_errors
def train_cmd(
    data: Annotated[str, typer.Option("--data", help="Folder of videos (searched recursively) or a glob pattern.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: model/, checkpoints/, logs/, samples/.")] = Path(
        "prior_run"
    ),
    frames: Annotated[int, typer.Option(help="Frames per training clip.")] = 8,
    size: Size = "64x64",
    fps: Annotated[float, typer.Option(help="Videos are resampled to this frame rate.")] = 12.0,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 20000,
    batch_size: Annotated[int, typer.Option(help="Clips per micro-batch and process.")] = 8,
    grad_accumulation: Annotated[int, typer.Option(help="Micro-batches per optimiser step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine decay).")] = 2e-4,
    precision: Annotated[str, typer.Option(help="Mixed precision: auto (none on CPU, where bf16 measured slower; bf16 or fp16 on GPU), no, bf16 or fp16.")] = "auto",
    base_channels: Annotated[int, typer.Option(help="U-Net width (48 gives about 3M parameters).")] = 48,
    checkpoint_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps.")] = 1000,
    sample_every: Annotated[int, typer.Option(help="Write sample mp4s every N steps.")] = 1000,
    sample_steps: Annotated[int, typer.Option(help="DDIM steps for the samples written during training.")] = 50,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of weights, batches and noise.")] = 0,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train the builtin prior on videos (works under ``accelerate launch`` too)."""
    import torch

    from dreamcloth.prior import TrainConfig, UNetConfig, VideoClips, train
    from dreamcloth.render.video import side_by_side, write_video

    hw = parse_size(size)
    if frames < 2:
        raise CliError("--frames must be at least 2")
    # the command line's own values first, named as options (before minutes of decoding and training)
    if not (fps > 0 and math.isfinite(fps)):
        raise CliError(f"--fps must be a positive number, got {fps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise CliError(f"--lr must be a positive number, got {lr}")
    for option, value in (("--steps", steps), ("--batch-size", batch_size), ("--grad-accumulation", grad_accumulation),
                          ("--checkpoint-every", checkpoint_every), ("--sample-every", sample_every), ("--sample-steps", sample_steps)):
        if value < 1:
            raise CliError(f"{option} must be >= 1, got {value}")
    try:
        unet_config = UNetConfig(base_channels=base_channels)
    except ValueError as exc:
        raise CliError(f"--base-channels: {exc}") from None
    check_output(out, folder=True)
    files = find_videos(data)
    videos = load_training_videos(files, fps, hw, frames)
    source = VideoClips(videos, frames, flip=flip)
    held = source.held_out(min(4, max(1, len(videos))), seed=seed + 1)
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        grad_accumulation=grad_accumulation,
        learning_rate=lr,
        mixed_precision=precision,  # type: ignore[arg-type]
        checkpoint_every=checkpoint_every,
        sample_every=sample_every,
        sample_steps=sample_steps,
        seed=seed,
    )
    samples_dir = out / "samples"

    def write_samples(step: int, clips: dict[str, torch.Tensor]) -> None:
        uncond = clips["unconditional"]
        write_video(side_by_side(list(uncond)), samples_dir / f"step_{step:07d}_unconditional.mp4", fps=fps)
        if "prediction" in clips:
            pairs = [c for t, p in zip(clips["truth"], clips["prediction"]) for c in (t, p)]
            write_video(side_by_side(pairs), samples_dir / f"step_{step:07d}_prediction.mp4", fps=fps)

    result = train(
        source,
        out,
        config,
        unet_config,
        resume=resume,
        fps=fps,
        on_sample=write_samples,
        sample_conditioning=held,
        progress=progress,
    )
    last = result.losses.get(result.final_step)
    if not result.is_main_process:  # under accelerate launch, report once
        return
    typer.echo(
        f"trained {result.num_parameters / 1e6:.2f}M-parameter prior on {len(files)} video(s) "
        f"in {result.num_processes} process(es): "
        f"steps {result.start_step}->{result.final_step}"
        + (f", final loss {last:.4f}" if last is not None else "")
        + f"; model in {result.model_dir}"
    )


@prior_app.command("sample")
@report_errors
def sample_cmd(
    model: Annotated[Path, typer.Option("--model", help="A trained builtin prior (the model/ folder of a run).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the sampled clip(s) as mp4.")] = Path(
        "prior_sample.mp4"
    ),
    cond: Annotated[Optional[Path], typer.Option("--cond", help="Video whose frames condition the sample.")] = None,
    given: Annotated[
        Optional[str], typer.Option("--given", help="Frames of --cond that are given, e.g. 0-3 or 0,2,4 (inclusive).")
    ] = None,
    frames: Annotated[Optional[int], typer.Option(help="Clip length (default: the model's).")] = None,
    num: Annotated[int, typer.Option(help="Number of clips to draw.")] = 1,
    sampler: Annotated[str, typer.Option(help="ddim or ddpm.")] = "ddim",
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 50,
    eta: Annotated[float, typer.Option(help="DDIM stochasticity (0 = deterministic).")] = 0.0,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = off).")] = 1.0,
    strength: Annotated[
        float, typer.Option(help="Video-to-video (SDEdit): start from --cond noised to this level (1 = from noise).")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Draw clips from a builtin prior; with --cond, predict or re-imagine frames and score them."""
    import torch

    from dreamcloth.prior import Conditioning, SampleConfig, load_builtin_model, parse_given, psnr, sample_clips, ssim
    from dreamcloth.render.video import side_by_side, write_video

    from .pipeline.video_io import read_video

    if given is not None and cond is None:
        raise CliError("--given needs --cond (the video the given frames come from)")
    if strength < 1.0 and cond is None:
        raise CliError("--strength below 1 needs --cond (the video to start from)")
    if not 0.0 < strength <= 1.0:
        raise CliError("--strength must be in (0, 1]")
    if num < 1:
        raise CliError(f"--num must be >= 1, got {num}")
    if frames is not None and frames < 2:
        raise CliError(f"--frames must be at least 2, got {frames}")
    if steps < 1:
        raise CliError(f"--steps must be >= 1, got {steps}")
    if not (math.isfinite(eta) and 0.0 <= eta <= 1.0):
        raise CliError(f"--eta must be in [0, 1], got {eta}")
    if not (math.isfinite(guidance) and guidance >= 0.0):
        raise CliError(f"--guidance must be finite and >= 0 (1 = off), got {guidance}")
    if out.suffix.lower() not in (".mp4", ".mkv", ".mov"):
        raise CliError(f"--out {out}: the clip is written as a video; use a .mp4, .mkv or .mov name")
    check_output(out, folder=False)
    unet, scheduler = load_builtin_model(model)
    unet.eval()
    fps = float(unet.config.fps)
    length = frames or int(unet.config.num_frames)
    config = SampleConfig(sampler=sampler, steps=steps, eta=eta, guidance_scale=guidance, seed=seed)  # type: ignore[arg-type]
    conditioning = truth = present = None
    if cond is not None:
        video = read_video(cond, fps=fps, size=tuple(unet.config.sample_size), max_frames=length)
        clip = video.as_tensor()
        present = clip.shape[0]
        if present < length:  # frames past the end of the video: nothing to condition on or score against
            clip = torch.cat([clip, clip.new_zeros(length - present, *clip.shape[1:])])
        idx = parse_given(given, present) if given is not None else []
        truth = clip[None]
        conditioning = Conditioning.from_indices(truth, idx)
    with torch.no_grad():
        samples = sample_clips(
            unet,
            scheduler,
            num,
            conditioning,
            config,
            init=truth if strength < 1.0 else None,
            strength=strength,
            num_frames=length,
        )
    write_video(side_by_side(list(samples)), out, fps=fps)
    typer.echo(f"wrote {out}")
    if truth is not None:
        scored = torch.ones(length, dtype=torch.bool)
        scored[present:] = False
        scored[conditioning.given[0]] = False
        compare = out.with_name(out.stem + "_compare.mp4")
        write_video(side_by_side([truth[0]] + list(samples)), compare, fps=fps)
        report = {"given": conditioning.given[0].nonzero().flatten().tolist(), "scored_frames": scored.nonzero().flatten().tolist()}
        if scored.any():
            tgt = truth[:, scored].expand(num, -1, -1, -1, -1)
            gen = samples[:, scored]
            report["psnr"] = float(psnr(gen, tgt).mean())
            report["ssim"] = float(ssim(gen, tgt).mean())
            given_idx = report["given"]
            if given_idx and all(i < min(report["scored_frames"]) for i in given_idx):
                # Copy-last-given baseline, the floor for prediction.
                last = truth[:, given_idx[-1] : given_idx[-1] + 1].expand_as(truth[:, scored])
                report["copy_last_psnr"] = float(psnr(last, truth[:, scored]).mean())
                report["copy_last_ssim"] = float(ssim(last, truth[:, scored]).mean())
            msg = f"PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.3f} on {int(scored.sum())} frame(s)"
            if "copy_last_psnr" in report:
                msg += f" (copy last given frame: {report['copy_last_psnr']:.2f} dB, {report['copy_last_ssim']:.3f})"
            typer.echo(msg)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2))
        typer.echo(f"wrote {compare} and {out.with_suffix('.json')}")


@prior_app.command("make-data")
@report_errors
def make_data_cmd(
    scene: Annotated[Path, typer.Option("--scene", help="Scene file; its \\[object.fit] ranges are sampled.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the videos (read by `prior train --data`).")] = Path("prior_data"),
    count: Annotated[int, typer.Option(help="Number of videos.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the parameter sampling.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Write a training set: the scene simulated and rendered with parameters drawn from its fit ranges
    (log-uniform for stiffnesses and densities, uniform otherwise); clip_NNNN.mp4 plus params.jsonl."""
    from .common import bar_progress, progress_bar
    from .pipeline.training_data import make_training_videos

    check_output(out, folder=True)
    with progress_bar() as bar:
        make_training_videos(scene, out, count, seed, device, progress=bar_progress(bar))
