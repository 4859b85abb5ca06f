"""Rasterizer speed: the portable backend against the dense torch reference, in the same process.

Threads: the portable rows run with torch limited to one intra-op thread.  torch's OpenMP workers
spin-wait after each parallel op and starve Taichi's thread pool on small machines (DESIGN.md
section 2); on this 2-core machine, shared with other jobs, that made the portable backend several
times slower.  One row repeats the 10k measurement with torch's default thread count.  The dense
reference (pure torch) keeps the default.

Scene: N random anisotropic Gaussians in a 2 x 2 x 0.6 m slab seen from 3 m (45 degree field of
view), each about as wide as the mean spacing, opacities 0.5-1: on average several layers deep, a
harder case than a single cloth sheet.  Times are medians over repeats (the minimum is in the
note); "compile" is the first call minus a steady call.  Speed-ups are reference time / portable
time measured in this run.  Accuracy rows compare the float32 portable output and gradients with
the float64 reference on the same scene.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time

import torch

from dreamcloth.cli.pipeline.devices import torch_threads

from .common import Measurement

SECTION = "render"


def _scene(n: int, size: int, seed: int = 0, dtype=torch.float32):
    from dreamcloth.render import Camera

    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=gen) * torch.tensor([2.0, 2.0, 0.6]) - torch.tensor([1.0, 1.0, 0.3])
    spacing = 2.0 / math.sqrt(n)
    a = torch.randn(n, 3, 3, generator=gen) * 0.5 * spacing
    cov = a @ a.transpose(1, 2) + (0.05 * spacing) ** 2 * torch.eye(3)
    colors = torch.rand(n, 3, generator=gen)
    opacities = 0.5 + 0.5 * torch.rand(n, generator=gen)
    camera = Camera(eye=(0.0, 0.0, 3.0), look_at=(0.0, 0.0, 0.0), width=size, height=size, fov_y_deg=45.0)
    return [t.to(dtype).requires_grad_() for t in (means, cov, colors, opacities)], camera


def _loss_weights(camera, dtype):
    gen = torch.Generator().manual_seed(1)
    h, w = camera.height, camera.width
    return [torch.randn(s, generator=gen).to(dtype) for s in ((3, h, w), (1, h, w), (1, h, w))]


def _loss(out, weights):
    return (out.color * weights[0]).sum() + (out.alpha * weights[1]).sum() + (out.depth * weights[2]).sum()


def _time(fn, repeats: int) -> tuple[float, float]:
    """(median, min) wall time of ``fn`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def _ensure_cold_runtime() -> str:
    """Start Taichi with an empty offline cache if nobody has started it, so compile time is real."""
    from dreamcloth.render._runtime import taichi_initialised

    if taichi_initialised():
        return "Taichi already running (offline cache as configured)"
    import taichi as ti

    cache = tempfile.mkdtemp(prefix="dreamcloth-bench-ticache-")
    ti.init(arch=ti.cpu, default_fp=ti.f32, offline_cache=True, offline_cache_file_path=cache, log_level=ti.WARN)
    return "empty offline cache"


def run(quick: bool = False) -> list[Measurement]:
    """Portable forward and forward+backward at two sizes, the dense reference at the smaller one."""
    sizes = [(1_000, 64), (5_000, 128)] if quick else [(10_000, 128), (100_000, 256)]
    repeats = 3 if quick else 7
    cache_note = _ensure_cold_runtime()
    rows: list[Measurement] = []
    for i, (n, size) in enumerate(sizes):
        label = f"{n // 1000}k/{size}^2"
        scene, camera = _scene(n, size)
        weights = _loss_weights(camera, torch.float32)
        timing = _time_portable(scene, camera, weights, repeats)
        note = "torch threads 1"
        if i == 0:
            rows.append(
                Measurement(SECTION, "portable compile (first fwd+bwd - steady)", timing.compile, "s", note=cache_note)
            )
        if i > 0:
            fwd_note, fb_note = f"{note}; {timing.fwd_note}", f"{note}; {timing.fb_note}"
            rows.append(Measurement(SECTION, f"portable forward {label}", timing.fwd, "s", note=fwd_note))
            rows.append(Measurement(SECTION, f"portable fwd+bwd {label}", timing.fb, "s", note=fb_note))
            continue
        ref = _time_reference(scene, camera, weights)
        rows.append(
            Measurement(
                SECTION, f"portable forward {label}", timing.fwd, "s", ratio_to="dense reference",
                ratio=ref.fwd / timing.fwd, note=f"{note}; {timing.fwd_note}; ratio = reference time / portable time",
            )
        )
        rows.append(
            Measurement(
                SECTION, f"portable fwd+bwd {label}", timing.fb, "s", ratio_to="dense reference",
                ratio=ref.fb / timing.fb, note=f"{note}; {timing.fb_note}; goal < 0.1 s and >= 20x",
            )
        )
        default_threads = torch.get_num_threads()
        default_med, default_min = _time(_portable_step(scene, camera, weights), repeats)
        rows.append(
            Measurement(
                SECTION, f"portable fwd+bwd {label}, torch threads {default_threads}", default_med, "s",
                ratio_to="torch threads 1", ratio=timing.fb / default_med,
                note=f"min {default_min:.4f}; ratio = threads-1 time / this time",
            )
        )
        rows.append(Measurement(SECTION, f"dense reference forward {label}", ref.fwd, "s", note="one run"))
        rows.append(Measurement(SECTION, f"dense reference fwd+bwd {label}", ref.fb, "s", note="one run"))
        tile, pixel = _time_loop_orders(scene, camera, repeats)
        rows.append(
            Measurement(
                SECTION, f"compositing fwd+bwd {label}, tile-major (CPU kernels)", tile, "s",
                ratio_to="pixel-major (GPU kernels) on this CPU", ratio=pixel / tile,
                note="ratio = pixel-major time / tile-major time",
            )
        )
        rows.extend(_accuracy(scene, camera, weights, ref.output, ref.grads, label))
    return rows


@dataclasses.dataclass(frozen=True)
class _PortableTiming:
    compile: float
    fwd: float
    fwd_note: str
    fb: float
    fb_note: str


@dataclasses.dataclass(frozen=True)
class _ReferenceTiming:
    fwd: float
    fb: float
    output: object
    grads: tuple


def _portable_step(scene, camera, weights, backward: bool = True):
    from dreamcloth.render import rasterize

    def step():
        if backward:
            out = rasterize(*scene, camera, backend="portable")
            torch.autograd.grad(_loss(out, weights), scene)
        else:
            with torch.no_grad():
                rasterize(*scene, camera, backend="portable")

    return step


def _time_portable(scene, camera, weights, repeats: int) -> _PortableTiming:
    fb = _portable_step(scene, camera, weights)
    with torch_threads(1):
        t0 = time.perf_counter()
        fb()  # first call: Taichi compiles the float32 forward and backward kernels here
        first = time.perf_counter() - t0
        fwd_med, fwd_min = _time(_portable_step(scene, camera, weights, backward=False), repeats)
        fb_med, fb_min = _time(fb, repeats)
    return _PortableTiming(max(first - fb_med, 0.0), fwd_med, f"min {fwd_min:.4f}", fb_med, f"min {fb_min:.4f}")


def _time_reference(scene, camera, weights) -> _ReferenceTiming:
    """The dense reference once, same scene and loss, default torch threading."""
    from dreamcloth.render._torch_ref import render_reference

    t0 = time.perf_counter()
    with torch.no_grad():
        render_reference(*scene, camera)
    fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = render_reference(*scene, camera)
    grads = torch.autograd.grad(_loss(out, weights), scene)
    return _ReferenceTiming(fwd, time.perf_counter() - t0, out, grads)


def _time_loop_orders(scene, camera, repeats: int) -> tuple[float, float]:
    """Compositing alone, tile-major (the CPU kernels) vs pixel-major (the GPU kernels), on this CPU."""
    from dreamcloth.render._portable import CompositeFunction
    from dreamcloth.render.projection import bin_gaussians, project_gaussians

    projected = project_gaussians(scene[0].detach(), scene[1].detach(), camera)
    bins = bin_gaussians(projected, camera)
    features = torch.cat([scene[2].detach(), projected.depth[:, None]], -1)
    inputs = [projected.mean2d.detach(), projected.conic.detach(), scene[3].detach(), features]
    inputs = [t.clone().requires_grad_() for t in inputs]

    def composite(order):
        def step():
            image, final_t = CompositeFunction.apply(*inputs, torch.zeros(4), bins, camera.height, camera.width, order)
            torch.autograd.grad(image.sum() + final_t.sum(), inputs)

        return step

    with torch_threads(1):
        composite("pixel")()  # compile
        tile, _ = _time(composite("tile"), repeats)
        pixel, _ = _time(composite("pixel"), repeats)
    return tile, pixel


def _accuracy(scene, camera, weights, ref_out, ref_grads, label) -> list[Measurement]:
    """Portable vs reference, both float32 (the reference run timed above): image and VJP errors.

    Same precision on purpose: float32 against a float64 reference also shows the rare pixel where
    rounding moves a contribution across the 1/255 or 1e-4 threshold (about 1e-3 in one pixel of
    this scene, identical for the float32 reference); the tests compare in float64 (~1e-14).
    """
    from dreamcloth.render import rasterize

    out = rasterize(*scene, camera, backend="portable")
    rows = []
    for k in ("color", "alpha", "depth"):
        err = (getattr(out, k) - getattr(ref_out, k)).abs().max().item()
        rows.append(Measurement(SECTION, f"max |{k} - reference| {label}", err, "", note="float32, same scene"))
    grads = torch.autograd.grad(_loss(out, weights), scene)
    for name, a, b in zip(("means", "covariances", "colors", "opacities"), grads, ref_grads):
        rel = ((a - b).norm() / b.norm()).item()
        note = "|g - g_ref| / |g_ref|, float32"
        rows.append(Measurement(SECTION, f"VJP relative error {name} {label}", rel, "", note=note))
    return rows
