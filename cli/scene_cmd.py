"""``dreamcloth scene check FILE``: validate a scene and print what it will simulate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DeviceOption
from .errors import CliError, report_errors

scene_app = typer.Typer(help="Scene files.", no_args_is_help=True)


@scene_app.command("check")
@report_errors
def check(
    file: Annotated[Path, typer.Argument(help="Scene file (TOML).")],
    convergence: Annotated[bool, typer.Option("--convergence", help="Also simulate the scene on a finer grid and compare the silhouettes frame by frame (minutes).")] = False,
    fine: Annotated[int | None, typer.Option(help="The finer grid for --convergence (default: twice the scene's); for the mesh cloth solver, which has no grid, the finer substeps per frame.", min=2)] = None,
    frames: Annotated[int | None, typer.Option(help="Frames simulated for --convergence (default: all).", min=2)] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Validate a scene file (unknown keys, ranges, geometry inside the domain) and summarise it."""
    from rich.console import Console
    from rich.table import Table

    from .pipeline.scene import load_scene
    from .pipeline.simulation import build, resolution_notes

    scene = load_scene(file)
    sim = build(scene)
    s, g = scene.settings, sim.config.grid
    if s.substeps:  # the scene's own count: what simulate and fit would refuse at their first step
        from dreamcloth import taichi_mpm as M

        try:
            M.check_cfl(sim.config, sim.bounds)
        except ValueError as exc:
            raise CliError(f"{file}: scene.substeps = {s.substeps} gives {exc} (or leave substeps out)") from None
    console = Console()
    console.print(f"[bold]{file}[/]: valid")
    console.print(f"{s.frames} frames at {s.fps:g} fps, {sim.config.substeps_per_frame} substeps per frame "
                  f"(dt {sim.config.dt:.3g} s{'' if s.substeps else ', from the CFL bound of the fit ranges'}); "
                  + (f"cloth solver: mesh (no grid; cloth-cloth contact at {1e3 * s.cloth_thickness:g} mm; membrane "
                     + f"{s.membrane}); "
                     if s.cloth_solver == "mesh" else f"grid {g.res[0]}x{g.res[1]}x{g.res[2]}, dx {g.dx:.4g} m; ")
                  + f"gravity {list(s.gravity)}")
    t = Table(title="objects")
    for c in ("name", "kind", "mesh", "particles", "material", "fit"):
        t.add_column(c)
    for o, r in zip(scene.objects, sim.ranges):
        n = f"{r.num_vertices} vertices + {r.end - r.start - r.num_vertices} elements" if r.kind == "cloth" else str(r.end - r.start)
        mat = ", ".join(f"{k}={v:g}" for k, v in o.values.items() if k not in o.fit)
        fit = ", ".join(f"{k} in [{lo:g}, {hi:g}]" for k, (lo, hi) in o.fit.items()) or "-"
        t.add_row(o.name, o.kind, o.mesh, n, f"{o.model}: {mat}", fit)
    console.print(t)
    for c in scene.colliders:
        geo = ", ".join(f"{k}={v}" for k, v in c.params.items() if k != "files")
        if "files" in c.params:
            geo += f", {len(c.params['files'])} mesh file(s)"
        friction = "that of the first object" if c.friction is None else f"{c.friction:g}"
        console.print(f"collider {c.kind}: {geo}; friction {friction}")
    from rich.markup import escape

    for note in resolution_notes(sim):
        console.print(f"[yellow]not converged:[/] {escape(note)}")
    if convergence:
        from .common import bar_progress, progress_bar
        from .pipeline.simulate import CONVERGED_IOU, measured_convergence

        with progress_bar() as bar:
            c = measured_convergence(scene, fine, frames, device, progress=bar_progress(bar))
        verdict = "[green]converged[/]" if c["converged"] else "[red]not converged[/]"
        what = (f"grid {c['coarse']} against grid {c['fine']}" if c["knob"] == "grid"
                else f"{c['coarse']} against {c['fine']} substeps per frame (the mesh solver has no grid)")
        console.print(f"measured: {what}, the scene's values, {c['frames']} frames: "
                      f"worst per-frame silhouette IoU {c['worst']:.3f} (frame {c['worst_frame']}), mean {c['mean']:.3f}: "
                      f"{verdict} (worst >= {CONVERGED_IOU:g})")


@scene_app.command("init")
@report_errors
def init(
    video: Annotated[Path, typer.Option("--video", help="The video; its first frame shows the cloth flat and at rest.")],
    cloth_size: Annotated[Optional[str], typer.Option("--cloth-size", help="A rectangular cloth's size WIDTHxHEIGHT in metres, e.g. 0.6x0.4.")] = None,
    mesh: Annotated[Optional[Path], typer.Option("--mesh", help="Any other flat shape: its mesh file (OBJ, PLY, ...; metres).")] = None,
    scale: Annotated[float, typer.Option("--scale", help="Scale of the --mesh file's units to metres.")] = 1.0,
    out: Annotated[Path, typer.Option("--out", help="Scene file to write (and OUT.png: the estimate over frame 0).")] = Path("scene.toml"),
    fov: Annotated[float, typer.Option("--fov", help="Vertical field of view in degrees, when known (else estimated).")] = None,
    height: Annotated[float, typer.Option("--height", help="The cloth's height above the ground (m); 0: it lies on the ground.")] = 0.0,
    masks: Annotated[Path, typer.Option("--masks", help="Mask video (white = cloth), when the background is not one flat colour.")] = None,
    width: Annotated[int, typer.Option("--width", help="Render width of the scene's camera (pixels); the height follows the video.")] = 128,
) -> None:
    """Write a scene for a video: camera pose (and fov) from the flat cloth in frame 0, a ground plane, default fit ranges."""
    from rich.console import Console

    from .pipeline.scene_init import init_scene, parse_size

    size = parse_size(cloth_size) if cloth_size is not None else None
    result = init_scene(video, size, out, fov_y_deg=fov, height=height, masks_path=masks, width=width, mesh_path=mesh, scale=scale)
    e = result.estimate
    console = Console()
    console.print(f"wrote {result.scene_path}: camera {e.distance:.3g} m from the cloth's centre, {e.elevation_deg:.1f} deg above "
                  f"its plane, fov_y {e.camera.fov_y_deg:.2f} deg ({'given' if e.fov_given else 'estimated'}); silhouette IoU "
                  f"{e.silhouette_iou:.3f}")
    console.print(f"check the estimate in {result.overlay_path} (red: the scene's cloth over frame 0), add colliders and pins, "
                  f"then `dreamcloth scene check {result.scene_path}`")
