"""A deforming cloth sheet rendered to video without a simulation (what ``dreamcloth render sheet`` writes).

A square sheet driven by an analytic deformation - a travelling wave or a fold - goes through the
same path the fit pipeline uses: mesh -> ``cloth_gaussians`` (flat Gaussians on the deformed
triangles) -> ``rasterize`` -> mp4.  It is a quick visual check of the renderer and of the cloth
Gaussian construction.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from .errors import InputError

MOTIONS = ("wave", "fold")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")


@dataclasses.dataclass(frozen=True)
class SheetVideoConfig:
    """Everything ``render sheet`` needs; validated on construction (``ValueError`` names the option)."""

    out: Path
    motion: str = "wave"
    frames: int = 48
    fps: float = 24.0
    width: int = 256
    height: int = 192
    resolution: int = 24
    per_triangle: int = 4
    thickness: float = 0.002
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.motion not in MOTIONS:
            raise InputError(f"--motion must be one of {', '.join(MOTIONS)}, got {self.motion!r}")
        if not 1 <= self.frames <= 10_000:
            raise InputError(f"--frames must lie in [1, 10000], got {self.frames}")
        if not (0 < self.fps <= 1000 and math.isfinite(self.fps)):
            raise InputError(f"--fps must lie in (0, 1000], got {self.fps}")
        for name in ("width", "height"):
            if not 16 <= getattr(self, name) <= 4096:
                raise InputError(f"--{name} must lie in [16, 4096], got {getattr(self, name)}")
        if not 2 <= self.resolution <= 512:
            raise InputError(f"--resolution (vertices per side) must lie in [2, 512], got {self.resolution}")
        n = math.isqrt(self.per_triangle) if self.per_triangle > 0 else 0
        if n < 1 or n * n != self.per_triangle:
            raise InputError(f"--per-triangle must be a perfect square (1, 4, 9, ...), got {self.per_triangle}")
        if not (0 < self.thickness < 0.1):
            raise InputError(f"--thickness must lie in (0, 0.1) m, got {self.thickness}")
        if Path(self.out).suffix.lower() not in VIDEO_SUFFIXES:
            raise InputError(f"--out must end in {', '.join(VIDEO_SUFFIXES)}, got {self.out}")


def sheet_mesh(resolution: int, size: float = 1.0):
    """A flat square sheet in the x-z plane (y up), centred at the origin.

    Returns ``(vertices [V, 3], faces [F, 3], uv [V, 2])`` with ``V = resolution^2``; ``uv`` in [0, 1].
    """
    import torch

    lin = torch.linspace(0.0, 1.0, resolution)
    v, u = torch.meshgrid(lin, lin, indexing="ij")
    uv = torch.stack([u.reshape(-1), v.reshape(-1)], -1)
    vertices = torch.stack([(uv[:, 0] - 0.5) * size, torch.zeros(len(uv)), (uv[:, 1] - 0.5) * size], -1)
    idx = torch.arange(resolution * resolution).reshape(resolution, resolution)
    a, b = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1)
    c, d = idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
    faces = torch.cat([torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)])
    return vertices, faces, uv


def deform_sheet(uv, phase: float, motion: str, size: float = 1.0):
    """The deformed sheet ``[V, 3]`` at ``phase`` in [0, 1] of the clip.

    - ``wave``: a travelling wave along x whose amplitude grows from the z = -size/2 edge, like a
      flag; one full period per clip, so the video loops.
    - ``fold``: the half x > 0 folds over onto the other half about the line x = 0.  The bend
      angle varies smoothly across a crease band and positions integrate the unit tangent, so the
      sheet does not stretch.
    """
    import torch

    u, v = uv[:, 0], uv[:, 1]
    x = (u - 0.5) * size
    z = (v - 0.5) * size
    if motion == "wave":
        amplitude = 0.12 * size * (0.3 + 0.7 * v)
        y = amplitude * torch.sin(2 * math.pi * (1.5 * u - phase))
        return torch.stack([x, y, z], -1)
    # fold: angle(s) = theta * smoothstep over a crease band of width w around the hinge.
    theta = 0.92 * math.pi * (0.5 - 0.5 * math.cos(math.pi * phase))  # ease in and out
    w = 0.15 * size
    s = torch.linspace(0.0, 0.5 * size, 512)
    ramp = torch.clamp(s / w, 0.0, 1.0)
    angle = theta * ramp * ramp * (3 - 2 * ramp)
    ds = s[1] - s[0]
    # Tangent integration (midpoint rule) along the folding half.
    mid = 0.5 * (angle[1:] + angle[:-1])
    px = torch.cat([torch.zeros(1), torch.cumsum(torch.cos(mid) * ds, 0)])
    py = torch.cat([torch.zeros(1), torch.cumsum(torch.sin(mid) * ds, 0)])
    pos = torch.clamp(x, min=0.0)
    t = pos / (0.5 * size) * (len(s) - 1)
    i0 = torch.clamp(t.floor().long(), max=len(s) - 2)
    f = t - i0
    fx = px[i0] * (1 - f) + px[i0 + 1] * f
    fy = py[i0] * (1 - f) + py[i0 + 1] * f
    folded = x > 0
    return torch.stack([torch.where(folded, fx, x), torch.where(folded, fy, torch.zeros_like(x)), z], -1)


def _shade(gaussians, vertices, uv, light):
    """Per-Gaussian colours: a two-tone checkerboard in uv, Lambert-shaded by the face normal."""
    import torch

    sampling = gaussians.sampling
    g_uv = sampling.interpolate(uv)
    checker = ((g_uv[:, 0] * 8).floor() + (g_uv[:, 1] * 8).floor()) % 2
    warm = torch.tensor([0.80, 0.22, 0.18])
    cream = torch.tensor([0.95, 0.90, 0.78])
    base = torch.where(checker[:, None] > 0, warm, cream)
    f = sampling.faces[sampling.face_index]
    n = torch.linalg.cross(vertices[f[:, 1]] - vertices[f[:, 0]], vertices[f[:, 2]] - vertices[f[:, 0]])
    n = n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    lambert = (n @ light).abs()  # two-sided cloth
    return base * (0.35 + 0.65 * lambert[:, None])


def render_sheet_video(config: SheetVideoConfig, on_frame=None) -> Path:
    """Render the clip described by ``config`` and write it; ``on_frame(i)`` is called after each frame."""
    import torch

    from dreamcloth.render import Camera, cloth_gaussians, cloth_sampling, rasterize, write_video

    camera = Camera(
        eye=(0.0, 0.8, 1.25), look_at=(0.0, 0.0, 0.0), fov_y_deg=45.0, width=config.width, height=config.height
    )
    _, faces, uv = sheet_mesh(config.resolution)
    sampling = cloth_sampling(faces, config.per_triangle)
    light = torch.tensor([0.3, 0.9, 0.4])
    light = light / light.norm()
    background = torch.tensor([0.93, 0.94, 0.96])
    frames = []
    if not torch.cuda.is_available():
        # The tensors here are small; torch's spinning OpenMP workers would only slow Taichi down
        # (DESIGN.md section 2), so this command keeps torch to one thread.
        torch.set_num_threads(1)
    with torch.no_grad():
        for i in range(config.frames):
            phase = i / config.frames
            vertices = deform_sheet(uv, phase, config.motion)
            # in_plane_scale 2: nearly opaque splats that close the gaps between neighbours; the
            # camera: edges inset so that the silhouette is the mesh's.
            g = cloth_gaussians(vertices, faces, thickness=config.thickness, sampling=sampling, in_plane_scale=2.0,
                                camera=camera, opacity=0.95)
            colors = _shade(g, vertices, uv, light)
            opacities = torch.full((g.means.shape[0],), 0.95)
            out = rasterize(g.means, g.covariances, colors, opacities, camera, background, backend=config.backend)
            frames.append(out.color.clamp(0.0, 1.0).permute(1, 2, 0).cpu())
            if on_frame is not None:
                on_frame(i)
    return write_video(torch.stack(frames), config.out, fps=config.fps)
