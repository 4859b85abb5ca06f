"""``dreamcloth render``: videos from the differentiable Gaussian rasterizer, no simulation needed.

``dreamcloth render sheet --out sheet.mp4`` renders a square cloth sheet driven by an analytic
deformation - a travelling wave or a fold - through the same path the fit pipeline uses: mesh ->
``cloth_gaussians`` (flat Gaussians on the deformed triangles) -> ``rasterize`` -> mp4.  It is a
quick visual check of the renderer and of the cloth Gaussian construction (the rendering itself is
:mod:`dreamcloth.cli.pipeline.sheet`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import report_errors

app = typer.Typer(help="Render Gaussians to video.", no_args_is_help=True)


@app.command()
@report_errors
def sheet(
    out: Annotated[Path, typer.Option(help="Video file to write (.mp4, .mkv or .mov).")] = Path("sheet.mp4"),
    motion: Annotated[str, typer.Option(help="Analytic deformation: wave (travelling wave) or fold.")] = "wave",
    frames: Annotated[int, typer.Option(help="Number of frames.")] = 48,
    fps: Annotated[float, typer.Option(help="Frames per second of the video.")] = 24.0,
    width: Annotated[int, typer.Option(help="Image width in pixels.")] = 256,
    height: Annotated[int, typer.Option(help="Image height in pixels.")] = 192,
    resolution: Annotated[int, typer.Option(help="Sheet mesh vertices per side.")] = 24,
    per_triangle: Annotated[int, typer.Option(help="Gaussians per triangle (a perfect square).")] = 4,
    thickness: Annotated[float, typer.Option(help="Gaussian extent across the cloth (m).")] = 0.002,
    backend: Annotated[str, typer.Option(help="Rasterizer backend: auto, portable or cuda.")] = "auto",
) -> None:
    """Render a deforming cloth sheet (flat Gaussians on a triangle mesh) to a video."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from dreamcloth.render import BACKENDS

    from .pipeline.sheet import SheetVideoConfig, render_sheet_video

    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from .common import check_output

    check_output(out, folder=False)
    config = SheetVideoConfig(
        out=out, motion=motion, frames=frames, fps=fps, width=width, height=height, resolution=resolution,
        per_triangle=per_triangle, thickness=thickness, backend=backend,
    )
    console = Console(stderr=True)
    columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("frames", total=config.frames)
        path = render_sheet_video(config, on_frame=lambda i: progress.update(task, completed=i + 1))
    typer.echo(f"wrote {path} ({config.frames} frames, {config.width}x{config.height}, {config.motion})")
