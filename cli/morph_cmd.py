"""``dreamcloth morph``: shape morphing by optimised per-particle deformation-gradient control.

    dreamcloth morph --source sphere --target torus --out morph_out/
    dreamcloth morph --source sphere --target bunny.obj --out bunny/ --intervals 20

The application itself (what is written, and how) is :mod:`dreamcloth.cli.pipeline.morph`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import report_errors


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dreamcloth.render import BACKENDS

    from .pipeline.morph import MorphRunConfig, run_morph

    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    config = MorphRunConfig(
        source=source, target=target, out=out, resolution=resolution, size=size, target_scale=target_scale,
        intervals=intervals, iterations=iterations, optimizer=optimizer, step_size=step_size, loss=loss, basis=basis,
        width=width, height=height, fps=fps, backend=backend,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict = {}

        def progress(stage: str, done: int, total: int, status: str | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(status or stage, total=total)
            bar.update(tasks[stage], completed=done, **({} if status is None else {"description": status}))

        report = run_morph(config, progress, log=bar.console.print).report
    typer.echo(
        f"wrote {out}: Chamfer distance {report['initial']['squared']:.3e} -> {report['intervals'][-1]['squared']:.3e} m^2 "
        f"(ratio {report['ratio']:.3f}) in {report['seconds']:.0f} s"
    )


morph_command = report_errors(morph_command)
