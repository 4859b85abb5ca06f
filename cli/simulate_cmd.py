"""``dreamcloth simulate``: forward simulation of a scene -> mp4, PNG frames, masks, meshes, npz."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from .common import DEMO_SCENE, DeviceOption, OutOption, SceneOption, progress_bar, resolve_device, torch_threads
from .errors import report_errors


def simulate_and_render(scene, device, bar=None):
    """Simulate ``scene`` (a parsed Scene) with its values and render every frame.

    Returns ``(sim, traj, video [T,H,W,3] float in [0,1], masks [T,H,W] 0/1)``.
    """
    import torch

    from dreamcloth import taichi_mpm as M

    from .simulation import SceneRenderer, build

    sim = build(scene, torch.float32, device)
    renderer = SceneRenderer(sim)
    n_frames = scene.settings.frames
    total = (n_frames - 1) * sim.config.substeps_per_frame
    with torch_threads(1), torch.no_grad():
        task = bar.add_task("simulate", total=total, status=f"{sim.model.num_particles} particles, {sim.config.substeps_per_frame} substeps/frame") if bar else None
        traj = M.simulate(sim.model, sim.state0, sim.params(), sim.config, n_frames, bounds=sim.bounds,
                          progress=(lambda done, _: bar.update(task, completed=done)) if bar else None)
        rtask = bar.add_task("render", total=n_frames, status="") if bar else None
        colors, alphas = [], []
        for t in range(n_frames):
            o = renderer.render(traj.x[t], traj.F[t])
            colors.append(o.color.permute(1, 2, 0).cpu())
            alphas.append(o.alpha[0].cpu())
            if bar:
                bar.update(rtask, advance=1)
    video = torch.stack(colors).clamp(0, 1).numpy()
    masks = (torch.stack(alphas) > 0.5).float().numpy()
    return sim, traj, video, masks


def run_simulation(scene_path: Path, out: Path, device: str = "cpu", frames: int | None = None, quiet: bool = False,
                   mesh_format: str = "obj") -> dict:
    """Simulate and render ``scene_path`` into ``out``; returns a summary (also written as summary.json)."""
    import torch

    from dreamcloth.render import write_png_frames, write_video

    from . import scene as S
    from .export import export_frames

    dev = resolve_device(device)
    scene = S.load_scene(scene_path)
    if frames is not None:
        if frames < 2:
            raise ValueError(f"--frames must be >= 2, got {frames}")
        scene = S.Scene(scene.path, type(scene.settings)(**{**scene.settings.__dict__, "frames": frames}), scene.camera,
                        scene.objects, scene.colliders)
    out.mkdir(parents=True, exist_ok=True)
    with progress_bar() as bar:
        if quiet:
            bar.stop()
        sim, traj, video, masks = simulate_and_render(scene, dev, bar)
        n_frames = scene.settings.frames
        write_video(video, out / "video.mp4", fps=scene.settings.fps)
        write_png_frames(video, out / "frames")
        write_png_frames(masks, out / "masks", prefix="mask")
        write_video(masks, out / "masks.mp4", fps=scene.settings.fps)
        xs = traj.x.cpu().numpy()
        etask = bar.add_task("export", total=n_frames, status=f"{mesh_format.upper()} + PLY")
        export_frames(out, xs, sim.ranges, sim.faces, fmt=mesh_format, on_frame=lambda t: bar.update(etask, advance=1))
        np.savez_compressed(out / "states.npz", x=xs, F=traj.F.cpu().numpy(), v_final=traj.final.v.cpu().numpy(),
                            fps=scene.settings.fps, dt=sim.config.dt)
    (out / "scene.toml").write_text(S.to_toml(scene))
    summary = {
        "scene": str(scene_path), "frames": n_frames, "fps": scene.settings.fps, "particles": sim.model.num_particles,
        "substeps_per_frame": sim.config.substeps_per_frame, "dt": sim.config.dt,
        "objects": [{"name": r.name, "kind": r.kind, "particles": r.end - r.start} for r in sim.ranges],
        "outputs": ["video.mp4", "frames/", "masks/", "masks.mp4", "meshes/ or particles/", "states.npz", "scene.toml"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


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

    if mesh_format not in ("obj", "ply"):
        raise ValueError(f"--mesh-format must be obj or ply, got {mesh_format!r}")
    summary = run_simulation(scene or DEMO_SCENE, out, device, frames, mesh_format=mesh_format)
    Console().print(f"wrote {out}/ ({summary['frames']} frames, {summary['particles']} particles, "
                    f"{summary['substeps_per_frame']} substeps per frame): open {out}/video.mp4")
