"""Shape morphing as an application: two shapes in, a morph video, per-frame particle clouds and a report out.

The source body (a primitive or a closed mesh) is filled with particles and morphed into the
target shape by the chained optimisation of :mod:`.morph_control` (Xu, Song, Levin, Hyde 2024).
Both shapes get the same volume (that of a sphere of diameter ``size``), centred in a cubic domain
of 1 m discretised by ``resolution`` grid nodes per axis; a mesh can instead be used at its own
size times ``target_scale``.  Written to ``out``:

- ``morph.mp4``: the morph rendered with the Gaussian renderer (one Gaussian per particle,
  ``Sigma = F Sigma0 F^T``), coloured by where each particle started;
- ``frames/frame_0000.ply`` ...: the particle positions of every frame;
- ``chamfer.json``: the Chamfer distance to the target after every interval, and the losses;
- ``loss.png``: the objective through the optimisation and the Chamfer distance per interval.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Optional

from .errors import InputError, RunFailedError
from .progress import Progress, silent

SHAPES = ("sphere", "box", "torus")


@dataclasses.dataclass(frozen=True)
class MorphRunConfig:
    """Everything ``dreamcloth morph`` needs; validated on construction (``ValueError`` names the option)."""

    source: str
    target: str
    out: Path
    resolution: int = 32
    size: float = 0.44
    target_scale: Optional[float] = None
    intervals: int = 16
    iterations: int = 6
    optimizer: str = "gd"
    step_size: float = 0.05
    loss: str = "log"
    basis: str = "grid"
    width: int = 320
    height: int = 240
    fps: float = 24.0
    backend: str = "auto"

    def __post_init__(self) -> None:
        from .morph_control import BASES, LOSS_KINDS, METHODS

        if not 12 <= self.resolution <= 256:
            raise InputError(f"--resolution must lie in [12, 256] grid nodes per axis, got {self.resolution}")
        if not (0 < self.size < 1 and math.isfinite(self.size)):
            raise InputError(f"--size must lie in (0, 1) m (the domain is 1 m wide), got {self.size}")
        if self.target_scale is not None and not (self.target_scale > 0 and math.isfinite(self.target_scale)):
            raise InputError(f"--target-scale must be positive, got {self.target_scale}")
        if not 1 <= self.intervals <= 1000:
            raise InputError(f"--intervals must lie in [1, 1000], got {self.intervals}")
        if not 0 <= self.iterations <= 1000:
            raise InputError(f"--iterations must lie in [0, 1000], got {self.iterations}")
        if self.optimizer not in METHODS:
            raise InputError(f"--optimizer must be one of {', '.join(METHODS)}, got {self.optimizer!r}")
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise InputError(f"--step-size must be positive, got {self.step_size}")
        if self.loss not in LOSS_KINDS:
            raise InputError(f"--loss must be one of {', '.join(LOSS_KINDS)}, got {self.loss!r}")
        if self.basis not in BASES:
            raise InputError(f"--basis must be one of {', '.join(BASES)}, got {self.basis!r}")
        for name in ("width", "height"):
            if not 16 <= getattr(self, name) <= 4096:
                raise InputError(f"--{name} must lie in [16, 4096], got {getattr(self, name)}")
        if not (0 < self.fps <= 1000 and math.isfinite(self.fps)):
            raise InputError(f"--fps must lie in (0, 1000], got {self.fps}")
        for option, value in (("--source", self.source), ("--target", self.target)):
            if value not in SHAPES and not Path(value).is_file():
                raise InputError(f"{option} must be one of {', '.join(SHAPES)} or an existing mesh file, got {value!r}")


def shape_particles(shape: str, volume: float, center, spacing: float, scale: float | None = None, option: str = "--target"):
    """Particles of a primitive (``sphere``/``box``/``torus``) or a mesh file with the given volume.

    A mesh is centred at ``center`` and scaled to ``volume``, or by ``scale`` when given; like the
    primitives it is moved by a quarter particle spacing, off the symmetry axes of the lattice (see
    ``sample_primitive``).  A mesh that is not closed is a ``ValueError`` naming the file.
    """
    from dreamcloth.taichi_mpm import load_mesh, sample_mesh
    from .morph_control import sample_primitive

    if shape in SHAPES:
        return sample_primitive(shape, volume, center, spacing)
    mesh = load_mesh(shape)
    if not mesh.is_watertight:
        raise InputError(
            f"{option} {shape} is not watertight: morphing fills the shape with particles, which needs a closed "
            "surface (repair the mesh, e.g. fill its holes, or use a primitive)"
        )
    if scale is None:
        scale = (volume / abs(float(mesh.volume))) ** (1.0 / 3.0)
    shifted = [float(c) + 0.25 * spacing for c in center]
    return sample_mesh(mesh, spacing, center=shifted, scale=scale, name=f"{option} {shape}")


def build_problem(config: MorphRunConfig):
    """The :class:`MorphProblem` of a run (float64; see ``MorphProblem.create`` for why)."""
    from .morph_control import MorphProblem, MorphSettings, grid_centre, morph_grid

    grid = morph_grid(config.resolution)
    centre = grid_centre(grid)
    spacing = grid.dx / 2  # 8 particles per cell
    volume = math.pi / 6.0 * config.size**3
    source = shape_particles(config.source, volume, centre, spacing, option="--source")
    target = shape_particles(config.target, volume, centre, spacing, config.target_scale, option="--target")
    try:
        return MorphProblem.create(source, target, grid, MorphSettings(loss=config.loss))
    except ValueError as exc:
        if "target shape extends outside" in str(exc) and config.target_scale is not None:
            raise InputError(f"{exc}; a smaller --target-scale would fit") from None
        raise


def render_frames(x, F, colors, spacing: float, config: MorphRunConfig, on_frame=None):
    """Frames ``[T, H, W, 3]`` in [0, 1] of particles ``x [T, N, 3]`` with deformation gradients ``F [T, N, 3, 3]``."""
    import torch

    from dreamcloth.render import Camera, rasterize, solid_gaussians

    camera = Camera(eye=(0.5, 1.25, 1.55), look_at=(0.5, 0.48, 0.5), fov_y_deg=38.0, width=config.width,
                    height=config.height)
    background = torch.tensor([0.95, 0.95, 0.97])
    opacities = torch.full((x.shape[1],), 0.85)
    images = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            # a rest standard deviation of half the spacing closes the gaps between neighbours
            g = solid_gaussians(x[i].float(), F[i].float(), 0.5 * spacing)
            out = rasterize(g.means, g.covariances, colors, opacities, camera, background, backend=config.backend)
            images.append(out.color.clamp(0.0, 1.0).permute(1, 2, 0).cpu())
            if on_frame is not None:
                on_frame(i)
    return torch.stack(images)


def particle_colors(x0):
    """``[N, 3]`` colours from each particle's starting height (so that the flow of material shows)."""
    import torch
    from matplotlib import colormaps

    h = x0[:, 1]
    t = ((h - h.min()) / (h.max() - h.min()).clamp(min=1e-12)).cpu().numpy()
    return torch.tensor(colormaps["viridis"](0.15 + 0.8 * t)[:, :3], dtype=torch.float32)


def write_loss_plot(path: Path, result) -> None:
    """Objective per accepted evaluation (one curve per interval) and Chamfer distance per interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    start = 0
    for i, r in enumerate(result.intervals):
        steps = range(start, start + len(r.losses))
        ax0.plot(steps, r.losses, "-o", markersize=2, color=plt.cm.viridis(i / max(1, len(result.intervals) - 1)))
        start += len(r.losses)
    ax0.set_yscale("log")
    ax0.set_xlabel("accepted evaluation (intervals in sequence)")
    ax0.set_ylabel("objective")
    ax0.set_title("morph objective per interval")
    ax1.plot(range(len(result.chamfer)), result.chamfer, "-o")
    ax1.set_yscale("log")
    ax1.set_xlabel("interval (0 = source)")
    ax1.set_ylabel("Chamfer distance to target (m$^2$)")
    ax1.set_title(f"Chamfer: final / initial = {result.chamfer_ratio:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def chamfer_report(result, problem, config: MorphRunConfig) -> dict:
    """What ``chamfer.json`` holds."""
    return {
        "metric": "Chamfer distance to the target's particles: mean squared nearest-point distance both ways (m^2); "
        "euclidean: the same with unsquared distances (m)",
        "source": config.source,
        "target": config.target,
        "particles": problem.num_particles,
        "target_points": int(problem.target_points.shape[0]),
        "grid": list(problem.grid.res),
        "initial": {"squared": float(result.initial_chamfer.squared), "euclidean": float(result.initial_chamfer.euclidean)},
        "intervals": [
            {
                "interval": i,
                "squared": float(r.chamfer.squared),
                "euclidean": float(r.chamfer.euclidean),
                "loss_initial": r.initial_loss,
                "loss_final": r.final_loss,
                "rollouts": r.evaluations,
                "seconds": r.seconds,
            }
            for i, r in enumerate(result.intervals)
        ],
        "ratio": result.chamfer_ratio,
        "seconds": result.seconds,
    }


@dataclasses.dataclass
class MorphOutcome:
    """A finished morph: ``report`` is chamfer.json's document, ``out`` the folder written."""

    report: dict
    out: Path


def run_morph(config: MorphRunConfig, progress: Progress = silent, log: Callable[[str], None] = lambda message: None) -> MorphOutcome:
    """Run the morph and write morph.mp4, frames/*.ply, chamfer.json and loss.png to ``config.out``.

    ``progress`` reports the stages ``morph`` (intervals; the status carries the objective) and
    ``rendering`` (frames); ``log`` gets one line per interval.  A morph that fails is a RunFailedError."""
    import torch

    from dreamcloth.render import write_video
    from dreamcloth.taichi_mpm import SimulationError

    from . import morph_control
    from .export import write_points

    if not torch.cuda.is_available():
        # The tensors are small; torch's OpenMP workers would only compete with Taichi's threads.
        torch.set_num_threads(1)
    problem = build_problem(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = morph_control.OptimiserSettings(method=config.optimizer, iterations=config.iterations,
                                               step_size=config.step_size, basis=config.basis)
    done = [0]
    progress("morph", 0, config.intervals, "interval 1")

    def on_step(i, it, loss):
        progress("morph", done[0], config.intervals, f"interval {i + 1}: objective {loss:.4g} (evaluation {it})")

    def on_interval(i, r):
        done[0] = i + 1
        progress("morph", done[0], config.intervals, None)
        log(f"interval {i + 1}/{config.intervals}: objective {r.initial_loss:.4g} -> {r.final_loss:.4g}, "
            f"Chamfer {float(r.chamfer.squared):.3e} m^2 ({r.seconds:.0f} s)")

    try:
        result = morph_control.morph(problem, config.intervals, settings, on_interval=on_interval, on_step=on_step)
    except (SimulationError, FloatingPointError) as exc:
        raise RunFailedError(f"the morph failed: {exc}") from None
    frames_dir = out / "frames"
    frames_dir.mkdir(exist_ok=True)
    for old in frames_dir.glob("frame_*.ply"):
        old.unlink()  # a previous run's frames would otherwise mix with these
    for i, x in enumerate(result.x):
        write_points(frames_dir / f"frame_{i:04d}.ply", x.cpu().numpy())
    n = result.x.shape[0]
    progress("rendering", 0, n, None)
    colors = particle_colors(problem.initial_state.x)
    images = render_frames(result.x, result.F, colors, problem.grid.dx / 2, config,
                           on_frame=lambda i: progress("rendering", i + 1, n, None))
    write_video(images, out / "morph.mp4", fps=config.fps)
    report = chamfer_report(result, problem, config)
    (out / "chamfer.json").write_text(json.dumps(report, indent=2))
    write_loss_plot(out / "loss.png", result)
    return MorphOutcome(report, out)
