"""``dreamcloth morph``: shape morphing by optimised per-particle deformation-gradient control.

    dreamcloth morph --source sphere --target torus --out morph_out/
    dreamcloth morph --source sphere --target bunny.obj --out bunny/ --intervals 20

The source body (a primitive or a closed mesh) is filled with particles and morphed into the
target shape by the chained optimisation of :mod:`dreamcloth.taichi_mpm.morph` (Xu, Song, Levin,
Hyde 2024).  Both shapes get the same volume (that of a sphere of diameter ``--size``), centred in
a cubic domain of 1 m discretised by ``--resolution`` grid nodes per axis; a mesh can instead be
used at its own size times ``--target-scale``.  Written to ``--out``:

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
from typing import Annotated, Optional

import typer

from .errors import EXIT_RUN_FAILED, CliError, report_errors

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
        from dreamcloth.taichi_mpm.morph import BASES, LOSS_KINDS, METHODS

        if not 12 <= self.resolution <= 256:
            raise ValueError(f"--resolution must lie in [12, 256] grid nodes per axis, got {self.resolution}")
        if not (0 < self.size < 1 and math.isfinite(self.size)):
            raise ValueError(f"--size must lie in (0, 1) m (the domain is 1 m wide), got {self.size}")
        if self.target_scale is not None and not (self.target_scale > 0 and math.isfinite(self.target_scale)):
            raise ValueError(f"--target-scale must be positive, got {self.target_scale}")
        if not 1 <= self.intervals <= 1000:
            raise ValueError(f"--intervals must lie in [1, 1000], got {self.intervals}")
        if not 0 <= self.iterations <= 1000:
            raise ValueError(f"--iterations must lie in [0, 1000], got {self.iterations}")
        if self.optimizer not in METHODS:
            raise ValueError(f"--optimizer must be one of {', '.join(METHODS)}, got {self.optimizer!r}")
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"--step-size must be positive, got {self.step_size}")
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"--loss must be one of {', '.join(LOSS_KINDS)}, got {self.loss!r}")
        if self.basis not in BASES:
            raise ValueError(f"--basis must be one of {', '.join(BASES)}, got {self.basis!r}")
        for name in ("width", "height"):
            if not 16 <= getattr(self, name) <= 4096:
                raise ValueError(f"--{name} must lie in [16, 4096], got {getattr(self, name)}")
        if not (0 < self.fps <= 1000 and math.isfinite(self.fps)):
            raise ValueError(f"--fps must lie in (0, 1000], got {self.fps}")
        for option, value in (("--source", self.source), ("--target", self.target)):
            if value not in SHAPES and not Path(value).is_file():
                raise ValueError(f"{option} must be one of {', '.join(SHAPES)} or an existing mesh file, got {value!r}")


def shape_particles(shape: str, volume: float, center, spacing: float, scale: float | None = None, option: str = "--target"):
    """Particles of a primitive (``sphere``/``box``/``torus``) or a mesh file with the given volume.

    A mesh is centred at ``center`` and scaled to ``volume``, or by ``scale`` when given; like the
    primitives it is moved by a quarter particle spacing, off the symmetry axes of the lattice (see
    ``sample_primitive``).  A mesh that is not closed is a ``ValueError`` naming the file.
    """
    from dreamcloth.taichi_mpm import load_mesh, sample_mesh
    from dreamcloth.taichi_mpm.morph import sample_primitive

    if shape in SHAPES:
        return sample_primitive(shape, volume, center, spacing)
    mesh = load_mesh(shape)
    if not mesh.is_watertight:
        raise ValueError(
            f"{option} {shape} is not watertight: morphing fills the shape with particles, which needs a closed "
            "surface (repair the mesh, e.g. fill its holes, or use a primitive)"
        )
    if scale is None:
        scale = (volume / abs(float(mesh.volume))) ** (1.0 / 3.0)
    shifted = [float(c) + 0.25 * spacing for c in center]
    return sample_mesh(mesh, spacing, center=shifted, scale=scale, name=f"{option} {shape}")


def build_problem(config: MorphRunConfig):
    """The :class:`MorphProblem` of a run (float64; see ``MorphProblem.create`` for why)."""
    from dreamcloth.taichi_mpm.morph import MorphProblem, MorphSettings, grid_centre, morph_grid

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
            raise ValueError(f"{exc}; a smaller --target-scale would fit") from None
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


def write_ply(path: Path, points) -> None:
    """Binary little-endian PLY of ``points [N, 3]`` (float32 x, y, z)."""
    import numpy as np

    pts = np.ascontiguousarray(np.asarray(points, dtype="<f4"))
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment dreamcloth morph\n"
        f"element vertex {pts.shape[0]}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(pts.tobytes())


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


def run_morph(config: MorphRunConfig, console=None) -> dict:
    """Run the morph and write everything to ``config.out``; returns the Chamfer report."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dreamcloth.render import write_video
    from dreamcloth.taichi_mpm import SimulationError
    from dreamcloth.taichi_mpm.morph import OptimiserSettings, morph

    if not torch.cuda.is_available():
        # The tensors are small; torch's OpenMP workers would only compete with Taichi's threads.
        torch.set_num_threads(1)
    problem = build_problem(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = OptimiserSettings(method=config.optimizer, iterations=config.iterations, step_size=config.step_size,
                                 basis=config.basis)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("interval 1", total=config.intervals)

        def on_step(i, it, loss):
            progress.update(task, description=f"interval {i + 1}: objective {loss:.4g} (evaluation {it})")

        def on_interval(i, r):
            progress.update(task, completed=i + 1)
            progress.console.print(
                f"interval {i + 1}/{config.intervals}: objective {r.initial_loss:.4g} -> {r.final_loss:.4g}, "
                f"Chamfer {float(r.chamfer.squared):.3e} m^2 ({r.seconds:.0f} s)"
            )

        try:
            result = morph(problem, config.intervals, settings, on_interval=on_interval, on_step=on_step)
        except (SimulationError, FloatingPointError) as exc:
            raise CliError(f"the morph failed: {exc}", EXIT_RUN_FAILED) from None
        frames_dir = out / "frames"
        frames_dir.mkdir(exist_ok=True)
        for old in frames_dir.glob("frame_*.ply"):
            old.unlink()  # a previous run's frames would otherwise mix with these
        for i, x in enumerate(result.x):
            write_ply(frames_dir / f"frame_{i:04d}.ply", x.cpu().numpy())
        render = progress.add_task("rendering", total=result.x.shape[0])
        colors = particle_colors(problem.initial_state.x)
        images = render_frames(result.x, result.F, colors, problem.grid.dx / 2, config,
                               on_frame=lambda i: progress.update(render, completed=i + 1))
    write_video(images, out / "morph.mp4", fps=config.fps)
    report = chamfer_report(result, problem, config)
    (out / "chamfer.json").write_text(json.dumps(report, indent=2))
    write_loss_plot(out / "loss.png", result)
    return report


def morph_command(
    source: Annotated[str, typer.Option(help="Source shape: sphere, box, torus, or a closed mesh file (OBJ, PLY, STL).")] = "sphere",
    target: Annotated[str, typer.Option(help="Target shape: sphere, box, torus, or a closed mesh file.")] = "torus",
    out: Annotated[Path, typer.Option(help="Folder for morph.mp4, frames/*.ply, chamfer.json and loss.png.")] = Path("morph_out"),
    resolution: Annotated[int, typer.Option(help="Grid nodes per axis over the 1 m domain.")] = 32,
    size: Annotated[float, typer.Option(help="Diameter (m) of the sphere whose volume both shapes get.")] = 0.44,
    target_scale: Annotated[
        Optional[float], typer.Option(help="Use a target mesh at its own size times this (default: scaled to the source's volume).")
    ] = None,
    intervals: Annotated[int, typer.Option(help="Intervals optimised one after the other.")] = 16,
    iterations: Annotated[int, typer.Option(help="Optimiser iterations per interval.")] = 6,
    optimizer: Annotated[str, typer.Option(help="gd (backtracking line search) or adam.")] = "gd",
    step_size: Annotated[float, typer.Option(help="First step (gd) or learning rate (adam).")] = 0.05,
    loss: Annotated[str, typer.Option(help="Grid-mass loss: log or squared.")] = "log",
    basis: Annotated[str, typer.Option(help="Control variables: grid (a smooth field) or particle.")] = "grid",
    width: Annotated[int, typer.Option(help="Video width in pixels.")] = 320,
    height: Annotated[int, typer.Option(help="Video height in pixels.")] = 240,
    fps: Annotated[float, typer.Option(help="Video frames per second.")] = 24.0,
    backend: Annotated[str, typer.Option(help="Rasterizer backend: auto, portable or cuda.")] = "auto",
) -> None:
    """Morph one shape into another by optimised per-particle deformation control (Xu et al. 2024)."""
    from rich.console import Console

    from dreamcloth.render import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    config = MorphRunConfig(
        source=source, target=target, out=out, resolution=resolution, size=size, target_scale=target_scale,
        intervals=intervals, iterations=iterations, optimizer=optimizer, step_size=step_size, loss=loss, basis=basis,
        width=width, height=height, fps=fps, backend=backend,
    )
    report = run_morph(config, console=Console(stderr=True))
    typer.echo(
        f"wrote {out}: Chamfer distance {report['initial']['squared']:.3e} -> {report['intervals'][-1]['squared']:.3e} m^2 "
        f"(ratio {report['ratio']:.3f}) in {report['seconds']:.0f} s"
    )


morph_command = report_errors(morph_command)
