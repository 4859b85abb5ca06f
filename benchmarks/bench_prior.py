"""Prior section of ``dreamcloth bench``: SDS step and training step times; hidden-law accuracy.

Speed: one SDS step (noise, frozen U-Net forward, surrogate backward to the clip) of the builtin
prior at its default size (about 3M parameters) for 8 frames at 64x64 and 16 frames at 128x128, and
one training step at 8x64x64 in fp32 and in bf16 autocast (the bf16 figure is reported as a ratio
to fp32 measured in the same run).

Accuracy (full run only): the wave-law experiment of ``tests/prior/test_hidden_law.py`` - train a
small prior on travelling waves whose speed follows their wavelength, then report where its
denoising error is lowest, how close SDS alone brings a wrong speed from both sides, and
past-frame prediction PSNR against copying the last frame.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from .common import Measurement

SECTION = "prior"


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sds_step_time(prior, frames: int, size: int, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    clip = torch.rand(1, frames, 3, size, size, requires_grad=True)

    def step():
        result = prior.sds(clip, generator=gen)
        result.loss.backward()
        clip.grad = None

    return _median_time(step, repeats)


def _train_step_time(mixed_precision: str, frames: int, size: int, batch: int, repeats: int) -> float:
    from dreamcloth.prior import MaskSamplingConfig, VideoUNet, diffusion_loss, sample_given_masks, training_scheduler

    torch.manual_seed(0)
    model = VideoUNet(num_frames=frames, sample_size=(size, size))
    sched = training_scheduler()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    clips = torch.rand(batch, frames, 3, size, size)
    given = sample_given_masks(MaskSamplingConfig(), batch, frames, gen)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_precision == "bf16")

    def step():
        with autocast:
            loss = diffusion_loss(model, sched, clips, given, gen, 5.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _median_time(step, repeats)


def _wave_law_accuracy() -> list[Measurement]:
    from dreamcloth.prior import BuiltinPrior, SampleConfig, SDSConfig, WaveClips, WaveLaw, predict_frames, score_prediction, train

    from .wave_law import denoising_errors, sds_speed_history, wave_training

    law = WaveLaw(frames=8, height=8, width=16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg, unet = wave_training()
        result = train(WaveClips(law), tmp, cfg, unet, progress=False)
        train_s = time.perf_counter() - t0
        rows.append(Measurement(SECTION, "wave prior: training time (1000 steps)", train_s, "s",
                                note=f"{result.num_parameters / 1e3:.0f}k params, 8x8x16 clips, batch 24"))
        prior = BuiltinPrior.from_pretrained(result.model_dir, config=SDSConfig(t_min=0.02, t_max=0.5))
        scales = [0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2]
        errors = denoising_errors(prior, law, 8.0, scales)
        best = scales[min(range(len(scales)), key=errors.__getitem__)]
        curve = ", ".join(f"{s:g}:{e:.4f}" for s, e in zip(scales, errors))
        rows.append(Measurement(SECTION, "wave prior: speed of lowest denoising error", best, "x lawful",
                                note=f"error by speed/lawful {curve}"))
        for start in (0.75, 1.3):
            hist = sds_speed_history(prior, law, 8.0, start)
            est = sum(hist[-50:]) / 50
            rows.append(Measurement(SECTION, f"wave prior: SDS speed error from {start:g}x", 100 * abs(est - 1), "%",
                                    note=f"estimate {est:.4f}x lawful after 150 SDS steps"))
        held = WaveClips(law).sample(16, torch.Generator().manual_seed(999))
        pred = predict_frames(prior.model, prior.scheduler, held, 4, SampleConfig(steps=50))
        score = score_prediction(pred, held, 4)
        rows.append(Measurement(SECTION, "wave prior: prediction PSNR (4 given -> 4 predicted)", score.psnr, "dB",
                                note=f"SSIM {score.ssim:.3f}; copy-last {score.copy_last_psnr:.2f} dB / {score.copy_last_ssim:.3f}",
                                ratio_to="copy last frame", ratio=score.psnr / score.copy_last_psnr))
    return rows


def run(quick: bool = False) -> list[Measurement]:
    """Speed of the builtin prior (and, unless quick, the wave-law accuracy experiment, ~3 min).

    Runs single-threaded: on the shared 2-core machine two OpenMP threads spin against other
    processes (a training step measured 0.55 s with 2 threads vs 0.13 s with 1 under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(before)


def _run(quick: bool) -> list[Measurement]:
    from dreamcloth.prior import BuiltinPrior, RuntimeConfig, VideoUNet, training_scheduler
    from dreamcloth.prior.runtime import Runtime

    torch.manual_seed(0)
    repeats = 2 if quick else 5
    rows = []
    sizes = [(8, 64)] if quick else [(8, 64), (16, 128)]
    for frames, size in sizes:
        model = VideoUNet(num_frames=frames, sample_size=(size, size))
        params = sum(p.numel() for p in model.parameters())
        prior = BuiltinPrior(model, training_scheduler(), Runtime.resolve(RuntimeConfig(device="cpu")))
        t = _sds_step_time(prior, frames, size, repeats)
        rows.append(Measurement(SECTION, f"SDS step, builtin {frames}x{size}x{size}", 1e3 * t, "ms",
                                note=f"{params / 1e6:.1f}M params, batch 1, {torch.get_num_threads()} threads"))
    batch = 2
    fp32 = _train_step_time("no", 8, 64, batch, repeats)
    rows.append(Measurement(SECTION, "training step 8x64x64 fp32", 1e3 * fp32, "ms", note=f"batch {batch}, AdamW"))
    if not quick:
        bf16 = _train_step_time("bf16", 8, 64, batch, repeats)
        rows.append(Measurement(SECTION, "training step 8x64x64 bf16 autocast", 1e3 * bf16, "ms", note=f"batch {batch}",
                                ratio_to="fp32", ratio=bf16 / fp32))
        rows.extend(_wave_law_accuracy())
    return rows
