"""``dreamcloth simulate``: forward simulation of a scene -> mp4, PNG frames, masks, meshes, npz."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import DEMO_SCENE, DeviceOption, OutOption, SceneOption, bar_progress, progress_bar
from .errors import report_errors


@report_errors
def simulate(
    scene: SceneOption = None,
    out: OutOption = Path("out/simulate"),
    device: DeviceOption = "cpu",
    frames: int = typer.Option(None, help="Override the scene's frame count."),
    mesh_format: str = typer.Option("obj", "--mesh-format", help="Cloth mesh sequence format: obj or ply."),
) -> None:
    """Simulate a scene and render it: video.mp4, frames/, masks/, meshes/ (cloth), particles/ (solids), states.npz, scene.toml."""
    from rich.console import Console

    from .pipeline.simulate import run_simulation

    with progress_bar() as bar:
        summary = run_simulation(scene or DEMO_SCENE, out, device, frames, mesh_format=mesh_format,
                                 progress=bar_progress(bar)).summary
    Console().print(f"wrote {out}/ ({summary['frames']} frames, {summary['particles']} particles, "
                    f"{summary['substeps_per_frame']} substeps per frame): open {out}/video.mp4")
