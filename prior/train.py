"""Training the builtin prior with accelerate.

Mixed precision (bf16 autocast where the device has it), gradient accumulation, clipping, EMA
weights (diffusers' ``EMAModel``), min-SNR-gamma loss weighting (Hang et al. 2023, "Efficient
Diffusion Training via Min-SNR Weighting Strategy"), checkpoints with resume, TensorBoard logs, a
rich progress bar, and sample clips handed to a callback (the CLI writes them as mp4).  Runs as
one process or many under ``accelerate launch``.

Determinism: a step's batch, noise, timesteps and conditioning masks come from a generator seeded
by (seed, step, process, micro-batch), never from a data loader's hidden state, so a run resumed
from a checkpoint reproduces the losses of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Callable, Literal

import torch

from .builtin import save_builtin_model, training_scheduler
from .conditioning import Conditioning, MaskSamplingConfig, loss_frames, sample_given_masks
from .data import ClipSource
from .sampling import SampleConfig, sample_clips
from .unet import VideoUNet


def resolve_precision(requested: str, device_type: str, bf16_supported: bool = True) -> str:
    """The mixed precision that ``"auto"`` means on ``device_type``.

    CPU: none.  ``dreamcloth bench --section prior`` measured a bf16-autocast training step of the
    builtin U-Net at 1.2x the fp32 step on a 2-core x86 CPU without AMX (4.3 vs 3.5 s): autocast
    adds casts, and such CPUs have no bf16 arithmetic to win them back.  CUDA: bf16 where the GPU
    has it (Ampere and later: fp32's range, no loss scaling), else fp16 with accelerate's scaler.
    """
    if requested != "auto":
        return requested
    if device_type == "cuda":
        return "bf16" if bf16_supported else "fp16"
    return "no"


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of a new :class:`VideoUNet` (the clip geometry comes from the data)."""

    base_channels: int = 48
    channel_mults: tuple[int, ...] = (1, 2, 2)
    layers_per_level: int = 2
    attention_levels: tuple[bool, ...] = (False, True, True)
    attention_heads: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        if self.base_channels < 1 or self.attention_heads < 1 or self.layers_per_level < 1:
            raise ValueError(f"base_channels, attention_heads and layers_per_level must be >= 1, got "
                             f"{self.base_channels}, {self.attention_heads}, {self.layers_per_level}")
        if len(self.channel_mults) != len(self.attention_levels) or min(self.channel_mults, default=1) < 1:
            raise ValueError(f"channel_mults {self.channel_mults} must be >= 1, one per attention_levels entry {self.attention_levels}")
        for level, (mult, attend) in enumerate(zip(self.channel_mults, self.attention_levels)):
            if attend and (self.base_channels * mult) % self.attention_heads:
                raise ValueError(f"base_channels {self.base_channels}: level {level} has {self.base_channels * mult} channels with "
                                 f"attention, not divisible by its {self.attention_heads} heads; use a multiple of "
                                 f"{self.attention_heads // math.gcd(self.attention_heads, mult)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyper-parameters.

    batch_size is per process and per micro-batch; the effective batch is
    batch_size * grad_accumulation * processes.  steps counts optimiser steps.
    """

    steps: int = 20000
    batch_size: int = 8
    grad_accumulation: int = 1
    learning_rate: float = 2e-4
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    #: "auto": the fastest measured for the device (see :func:`resolve_precision`)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    ema_decay: float = 0.999
    min_snr_gamma: float | None = 5.0
    num_train_timesteps: int = 1000
    masks: MaskSamplingConfig = MaskSamplingConfig()
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    sample_every: int = 1000
    sample_steps: int = 50
    log_every: int = 10
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accumulation", "checkpoint_every", "sample_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run produced: the final model directory and the losses of the steps it ran.

    losses: {step: loss} for the optimiser steps run by this call (averaged over processes and
    micro-batches); start_step: the step it resumed from (0 for a fresh run).
    """

    model_dir: Path
    losses: dict[int, float]
    start_step: int
    final_step: int
    num_parameters: int
    num_processes: int
    is_main_process: bool = True


SampleCallback = Callable[[int, dict[str, torch.Tensor]], None]


def _step_generator(seed: int, step: int, process: int, micro: int) -> torch.Generator:
    # A distinct, reproducible stream for every (step, process, micro-batch).
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + process) * 101 + micro)


def _latest_checkpoint(folder: Path) -> Path | None:
    ckpts = sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return ckpts[-1] if ckpts else None


def diffusion_loss(
    model: torch.nn.Module,
    scheduler,
    clips: torch.Tensor,
    given: torch.Tensor,
    generator: torch.Generator,
    min_snr_gamma: float | None,
) -> torch.Tensor:
    """Masked-conditional denoising loss of one batch (a scalar).

    clips: [B, T, 3, H, W] in [0, 1]; given: [B, T] bool.  The noise is predicted on the frames
    that are not given (all frames when all are given); per-clip weights are min-SNR-gamma for
    epsilon prediction, min(SNR, gamma) / SNR.
    """
    from diffusers.training_utils import compute_snr

    x0 = clips * 2 - 1
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    pred = model(noisy, t, x0, given.to(x0.device))
    per_frame = (pred.float() - noise).square().mean(dim=(2, 3, 4))  # [B, T]
    fw = loss_frames(given.to(x0.device))
    per_clip = (per_frame * fw).sum(dim=1) / fw.sum(dim=1)
    if min_snr_gamma is not None:
        snr = compute_snr(scheduler, t)
        per_clip = per_clip * (snr.clamp(max=min_snr_gamma) / snr).to(per_clip)
    return per_clip.mean()


def train(
    source: ClipSource,
    output_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    unet: UNetConfig = UNetConfig(),
    resume: bool = False,
    fps: float = 12.0,
    on_sample: SampleCallback | None = None,
    sample_conditioning: torch.Tensor | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a builtin prior on clips from ``source`` and write it to ``output_dir/model``.

    output_dir gets ``checkpoints/step_N`` (accelerate state, resumable), ``logs`` (TensorBoard),
    ``model`` (EMA weights + scheduler, loadable by ``BuiltinPrior.from_pretrained``).
    resume: continue from the latest checkpoint (a ``ValueError`` if there is none).
    on_sample: called on the main process every ``sample_every`` steps with
    {"unconditional": [B,T,3,H,W], "prediction": [...], "truth": [...]} in [0, 1].
    sample_conditioning: [B, T, 3, H, W] clips whose first half conditions the prediction samples.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    out = Path(output_dir)
    ckpt_dir = out / "checkpoints"
    cuda = torch.cuda.is_available()
    precision = resolve_precision(config.mixed_precision, "cuda" if cuda else "cpu", cuda and torch.cuda.is_bf16_supported())
    accelerator = Accelerator(
        # Without a GPU, say so: only then does accelerate join torchrun's processes with gloo (MULTI_CPU)
        # instead of running each as an independent single process.
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        gradient_accumulation_steps=config.grad_accumulation,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    if accelerator.device.type == "cpu" and precision == "fp16":
        raise ValueError("fp16 mixed precision does not run on CPU (it silently stays fp32); use bf16 or no")
    # Same initial weights in every process: seed before building the model.
    torch.manual_seed(config.seed)
    model = VideoUNet(
        channels=3,
        base_channels=unet.base_channels,
        channel_mults=tuple(unet.channel_mults),
        layers_per_level=unet.layers_per_level,
        attention_levels=tuple(unet.attention_levels),
        attention_heads=unet.attention_heads,
        dropout=unet.dropout,
        num_frames=source.num_frames,
        sample_size=tuple(source.sample_size),
        fps=fps,
    )
    f = model.downsampling_factor
    if source.sample_size[0] % f or source.sample_size[1] % f:
        raise ValueError(f"frame size {source.sample_size} must be a multiple of {f} for this U-Net")
    num_parameters = sum(p.numel() for p in model.parameters())
    scheduler = training_scheduler(config.num_train_timesteps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(
        config.lr_schedule,
        optimizer,
        num_warmup_steps=config.warmup_steps * accelerator.num_processes,
        num_training_steps=config.steps * accelerator.num_processes,
    )
    ema = EMAModel(model.parameters(), decay=config.ema_decay, use_ema_warmup=True)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    accelerator.register_for_checkpointing(ema)

    start_step = 0
    if resume:
        latest = _latest_checkpoint(ckpt_dir)
        if latest is None:
            raise ValueError(f"--resume: no checkpoint under {ckpt_dir}")
        accelerator.load_state(str(latest))
        start_step = int(latest.name.split("_")[1])
    elif ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise ValueError(f"{out} already has checkpoints; pass --resume to continue or choose a new output folder")

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        hparams = {k: str(v) for k, v in {**dataclasses.asdict(config), **dataclasses.asdict(unet)}.items()}
        accelerator.init_trackers("prior", config=hparams)

    losses: dict[int, float] = {}
    bar = _progress(progress and accelerator.is_main_process, start_step, config.steps)
    model.train()
    step = start_step
    with bar:
        task = bar.add_task("training", total=config.steps, completed=start_step) if bar else None
        while step < config.steps:
            step_loss = torch.zeros((), device=accelerator.device)
            for micro in range(config.grad_accumulation):
                gen = _step_generator(config.seed, step, accelerator.process_index, micro)
                clips = source.sample(config.batch_size, gen).to(accelerator.device)
                given = sample_given_masks(config.masks, config.batch_size, clips.shape[1], gen)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        loss = diffusion_loss(model, scheduler, clips, given, gen, config.min_snr_gamma)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach().float() / config.grad_accumulation
            ema.step(accelerator.unwrap_model(model).parameters())
            step += 1
            mean_loss = float(accelerator.reduce(step_loss, reduction="mean"))
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"training loss became {mean_loss} at step {step}")
            losses[step] = mean_loss
            if step % config.log_every == 0 or step == config.steps:
                accelerator.log({"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=step)
            if bar:
                bar.update(task, completed=step, description=f"training  loss {mean_loss:.4f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                _checkpoint(accelerator, ckpt_dir, step, config.keep_checkpoints)
            if on_sample is not None and (step % config.sample_every == 0 or step == config.steps):
                if accelerator.is_main_process:
                    with _ema_weights(ema, accelerator.unwrap_model(model)):
                        on_sample(step, _samples(accelerator.unwrap_model(model), scheduler, config, sample_conditioning))
                accelerator.wait_for_everyone()

    model_dir = out / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        with _ema_weights(ema, final):
            save_builtin_model(final, scheduler, model_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(
        model_dir, losses, start_step, step, num_parameters, accelerator.num_processes, accelerator.is_main_process
    )


def _checkpoint(accelerator, ckpt_dir: Path, step: int, keep: int) -> None:
    accelerator.wait_for_everyone()
    accelerator.save_state(str(ckpt_dir / f"step_{step:07d}"))
    if accelerator.is_main_process:
        (ckpt_dir / f"step_{step:07d}" / "step.json").write_text(json.dumps({"step": step}))
        ckpts = sorted(ckpt_dir.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        for old in ckpts[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class _ema_weights:
    """Temporarily swap the EMA weights into ``model`` (restored on exit)."""

    def __init__(self, ema, model):
        self.ema, self.model = ema, model

    def __enter__(self):
        params = list(self.model.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.ema.restore(list(self.model.parameters()))
        self.model.train()
        return False


def _samples(model, scheduler, config: TrainConfig, conditioning_clips: torch.Tensor | None) -> dict[str, torch.Tensor]:
    cfg = SampleConfig(sampler="ddim", steps=config.sample_steps, seed=config.seed)
    out = {"unconditional": sample_clips(model, scheduler, 2, None, cfg)}
    if conditioning_clips is not None:
        truth = conditioning_clips.to(next(model.parameters()).device)
        k = max(1, truth.shape[1] // 2)
        cond = Conditioning.from_indices(truth, range(k))
        out["prediction"] = sample_clips(model, scheduler, truth.shape[0], cond, cfg)
        out["truth"] = truth.float()
    return out


def _progress(enabled: bool, start: int, total: int):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __bool__(self):
        return False
