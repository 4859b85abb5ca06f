"""From a scene file to a simulator model, its parameters and a renderer.

This is where the application composes the libraries: ``taichi_mpm`` for the physics and
``render`` for the pictures; neither knows about the other or about scene files.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from dreamcloth import render as R
from dreamcloth import taichi_mpm as M
from dreamcloth.taichi_mpm.sampling import load_mesh, sample_box, sample_mesh, sample_sphere

from .scene import CLOTH_ONLY, Scene

# Gaussians per cloth triangle and their thickness (m): enough to close the surface at our resolutions
CLOTH_GAUSSIANS_PER_TRIANGLE = 4
CLOTH_THICKNESS = 2e-3
# cloth_gaussians' in-plane scale that closes gaps between neighbouring splats (render/gaussians.py)
CLOTH_IN_PLANE_SCALE = 2.0
# the opacity Gaussians are rendered with unless fitted; the silhouette correction assumes it
DEFAULT_OPACITY = 0.95


def _corner_ids(nx: int, ny: int, count: int) -> list[int]:
    """'corners:N' of a grid:NxM cloth: the two ends of the first row, then the far row."""
    corners = [0, (nx - 1) * ny, nx * ny - 1, ny - 1]
    return corners[:count]


@dataclasses.dataclass
class Simulation:
    """A scene turned into simulator inputs.

    Attributes:
        scene: the parsed scene.
        model / state0 / config / bounds: simulator inputs (``bounds`` are the fit ranges, used
            for the CFL time step so that it does not change while parameters move).
        ranges: where each object's particles are.
        faces: local triangle indices per cloth object (by object index).
    """

    scene: Scene
    model: M.Model
    state0: M.State
    config: M.SimConfig
    bounds: M.Bounds
    ranges: list[M.ObjectRange]
    faces: dict[int, np.ndarray]
    dtype: torch.dtype
    device: torch.device

    @property
    def has_cloth(self) -> bool:
        return any(r.kind == "cloth" for r in self.ranges)

    def values(self) -> dict[tuple[int, str], float]:
        """The scene's material values, keyed by (object index, parameter)."""
        return {(i, p): v for i, o in enumerate(self.scene.objects) for p, v in o.values.items()}

    def params(self, overrides: dict[tuple[int, str], torch.Tensor] | None = None) -> M.Params:
        """Simulator parameters from the scene's values, with ``overrides`` (tensors keep their gradients).

        One object: scalars.  Several: per-particle tensors assembled from each object's values.
        Damping acts on the shared grid: the first object's damping is used.  Colliders without a
        friction of their own take the first object's friction (fitted with it).
        """
        overrides = overrides or {}
        t = dict(dtype=self.dtype, device=self.device)

        def value(i, p):
            if (i, p) in overrides:
                return overrides[(i, p)].to(**t).reshape(())
            return torch.tensor(self.scene.objects[i].values.get(p, 0.0), **t)

        def field(p):
            if len(self.ranges) == 1:
                return value(0, p)
            parts = [value(i, p).expand(r.end - r.start) for i, r in enumerate(self.ranges)]
            return torch.cat(parts)

        friction0 = value(0, "friction")
        coll = [friction0 if c.friction is None else torch.tensor(c.friction, **t) for c in self.scene.colliders]
        friction = torch.stack(coll) if len(coll) > 1 else (coll[0].reshape(()) if coll else friction0)
        cloth = self.has_cloth
        return M.Params(
            young_modulus=field("young_modulus"),
            poisson_ratio=field("poisson_ratio"),
            density=field("density"),
            damping=value(0, "damping"),
            friction=friction,
            shear_stiffness=field("shear_stiffness") if cloth else None,
            normal_stiffness=field("normal_stiffness") if cloth else None,
            cloth_friction=field("friction") if cloth else None,
            bending_stiffness=field("bending_stiffness") if cloth else None,
            drag_coefficient=field("drag_coefficient") if cloth else None,
            max_stretch=field("max_stretch") if cloth else None,
            drag_tangential=field("drag_tangential") if cloth else None,
        )


def _bounds(scene: Scene, grid: M.GridSpec, min_length: float | None) -> M.Bounds:
    """CFL ranges: each parameter's fit range and its value in the scene, over all objects.

    The value counts even when a fit range is given: ``simulate`` and ``predict``'s roll-out run the
    scene's (or the fit's) values, which may lie outside the range (a young_modulus of 2e4 N/m in a
    scene fitted over [20, 400] needs a ~7x shorter step, not a NaN at substep 11)."""
    def span(p):
        lo, hi = math.inf, -math.inf
        for o in scene.objects:
            if p in CLOTH_ONLY and o.kind != "cloth" or p not in o.values:
                continue
            a, b = o.fit.get(p, (o.values[p], o.values[p]))
            lo, hi = min(lo, a, o.values[p]), max(hi, b, o.values[p])
        return (lo, hi) if lo <= hi else None

    s = scene.settings
    g = math.sqrt(sum(a * a for a in s.gravity))
    height = max(h - l for l, h in zip(*s.domain))
    # energy bound on falling speed inside the domain, plus thrown objects and moving colliders
    speed = math.sqrt(2 * g * height) + max(math.sqrt(sum(a * a for a in o.velocity)) for o in scene.objects)
    speed += max([math.sqrt(sum(a * a for a in c.params.get("velocity", (0, 0, 0)))) for c in scene.colliders], default=0.0)
    speed += max(math.sqrt(sum(a * a for a in o.pin_velocity)) for o in scene.objects)
    return M.Bounds(span("young_modulus"), span("poisson_ratio"), span("density"), max_speed=speed,
                    shear_stiffness=span("shear_stiffness"), normal_stiffness=span("normal_stiffness"), min_length=min_length)


#: a fabric's folds need a cell of at most this fraction of its bending length (B / (rho g))^(1/3).
#: Necessary, not sufficient: on the demo's drop (31x31 cloth over a sphere, one second) the worst
#: per-frame silhouette IoU of grid 32 against grid 64 was 0.61 with a bending length of 0.4 cells
#: and 0.69 with 1.9 cells: contact with colliders, which act on grid nodes, also moves with the grid.
CELLS_PER_BENDING_LENGTH = 2.0


def resolution_notes(sim: Simulation) -> list[str]:
    """Where the grid, not the material, would shape a cloth: a cell coarser than half its bending
    length (B / (rho g))^(1/3) (the length over which its own weight bends it, Peirce 1930), for the
    softest, heaviest fabric its values or fit ranges allow.  MPM moves neighbouring particles with
    one smooth grid velocity, so folds tighter than about a cell cannot form: below that length the
    grid's spacing sets the bending resistance and results change with the grid.  The grid-free
    cloth solver (``[scene] cloth_solver = "mesh"``) has no grid to resolve: no notes."""
    notes = []
    if sim.config.cloth_solver == "mesh":
        return notes
    g = math.sqrt(sum(a * a for a in sim.scene.settings.gravity)) or 9.81
    dx = sim.config.grid.dx
    for o in sim.scene.objects:
        if o.kind != "cloth":
            continue
        bend = o.fit.get("bending_stiffness", (o.values["bending_stiffness"],) * 2)[0]
        rho = o.fit.get("density", (o.values["density"],) * 2)[1]
        if bend <= 0:
            notes.append(f"{o.name}: bending_stiffness is 0, so only the grid resists bending: results depend on the grid")
            continue
        length = (bend / (rho * g)) ** (1.0 / 3.0)
        if dx > length / CELLS_PER_BENDING_LENGTH:
            extent = max(h - l for l, h in zip(*sim.scene.settings.domain))
            need = math.ceil(CELLS_PER_BENDING_LENGTH * extent / length)
            notes.append(
                f"{o.name}: the grid cell ({1e3 * dx:.3g} mm) is coarser than half the fabric's bending length "
                f"(B/(rho g))^(1/3) = {1e3 * length:.3g} mm (bending_stiffness {bend:g} N m, density {rho:g} kg/m^2): "
                f"folds are then set by the grid, not the material; [scene] grid >= {need} resolves them"
            )
    return notes


def _colliders(scene: Scene, grid: M.GridSpec) -> list:
    out = []
    for c in scene.colliders:
        p = c.params
        f = 0.5 if c.friction is None else c.friction  # the value used is set by Simulation.params
        if c.kind == "plane":
            out.append(M.Plane(p["point"], p["normal"], f, p["velocity"]))
        elif c.kind == "sphere":
            out.append(M.Sphere(p["center"], p["radius"], f, p["velocity"]))
        elif c.kind == "box":
            out.append(M.Box(p["center"], p["half_size"], p["rotation_deg"], f, p["velocity"]))
        else:
            out.append(M.MeshCollider.from_files(p["files"], scale=p["scale"], offset=p["offset"], friction=f, fps=scene.settings.fps))
    return out


def build(scene: Scene, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", substeps: int | None = None) -> Simulation:
    """Model, rest state, time step and CFL bounds of ``scene``."""
    s = scene.settings
    grid = M.GridSpec.from_domain(s.domain[0], s.domain[1], s.grid)
    b = M.ModelBuilder(dtype, device)
    faces: dict[int, np.ndarray] = {}
    for i, o in enumerate(scene.objects):
        if o.kind == "cloth":
            if o.mesh.startswith("grid:"):
                nx, ny = (int(a) for a in o.mesh[5:].split("x"))
                verts, f = M.grid_mesh(nx, ny, o.size, o.center, o.rotation_deg)
                pinned = _corner_ids(nx, ny, int(o.pinned[8:])) if isinstance(o.pinned, str) else list(o.pinned)
            else:
                mesh = load_mesh(scene.path.parent / o.mesh)
                mesh.apply_scale(o.scale)
                verts = np.asarray(mesh.vertices) @ M.euler_xyz(o.rotation_deg).T
                verts = verts - verts.mean(0) + np.asarray(o.center)
                f = np.asarray(mesh.faces)
                pinned = list(o.pinned)
            if pinned and max(pinned) >= len(verts):
                raise ValueError(f"{scene.path}: object[{i}].pinned has vertex id {max(pinned)} but the mesh has {len(verts)} vertices")
            b.add_cloth(o.name, verts, f, velocity=o.velocity, pinned=pinned, pin_velocity=o.pin_velocity)
            faces[i] = np.asarray(f, dtype=np.int64)
        else:
            spacing = o.spacing * grid.dx
            if o.mesh == "box":
                ps = sample_box(o.size, o.center, spacing, o.rotation_deg)
            elif o.mesh == "sphere":
                ps = sample_sphere(o.size[0], o.center, spacing)
            else:
                ps = sample_mesh(scene.path.parent / o.mesh, spacing, center=o.center, scale=o.scale, rotation_deg=o.rotation_deg)
            b.add_solid(o.name, ps, o.model, velocity=o.velocity)
    model, state = b.build(_colliders(scene, grid))
    lo, hi = grid.inner_min, grid.inner_max
    for r in b.ranges:
        xs = state.x[r.start : r.end]
        if bool(((xs < torch.tensor(lo, dtype=dtype, device=xs.device)) | (xs > torch.tensor(hi, dtype=dtype, device=xs.device))).any()):
            raise ValueError(f"{scene.path}: object {r.name!r} lies (partly) outside the scene domain {list(s.domain[0])} - {list(s.domain[1])}")
    bounds = _bounds(scene, grid, M.min_rest_edge(model))
    mesh = s.cloth_solver == "mesh"
    membrane = s.membrane if mesh else "explicit"
    cfl_substeps = M.substeps_for(s.fps, M.max_dt(grid.dx, bounds, mesh=mesh, implicit_membrane=membrane == "implicit"))
    if substeps is None:
        substeps = s.substeps or cfl_substeps
    # The scene's flip is the FLIP share per substep of its CFL time step, and is kept per unit time
    # at any other substep count (the scene's own ``substeps``, the fit's dt halving): otherwise the
    # substep count changes the motion.  Measured 2026-12-04 (README, Cloth physics) on a 41x41 cloth
    # dropped on a sphere at real-fabric stiffness: half and a quarter of the CFL's 2,095 substeps
    # per frame scored worst/mean per-frame IoU 0.807/0.920 and 0.713/0.872 against the full count
    # with 0.95 per substep, 0.952/0.979 and 0.888/0.946 with the share per unit time.  Scenes at
    # their CFL substeps are unchanged.
    config = M.SimConfig(grid=grid, fps=s.fps, substeps_per_frame=substeps, gravity=s.gravity, flip=s.flip,
                         flip_dt=1.0 / (s.fps * cfl_substeps), cloth_solver=s.cloth_solver,
                         cloth_thickness=s.cloth_thickness, membrane=membrane)
    return Simulation(scene, model, state, config, bounds, list(b.ranges), faces, dtype, torch.device(device))


class SceneRenderer:
    """Renders a simulation frame with the scene's camera: cloth as flat Gaussians on the deformed
    triangles, solids as PhysGaussian particles (Sigma = F Sigma0 F^T)."""

    def __init__(self, sim: Simulation, backend: str = "auto"):
        c = sim.scene.camera
        self.sim = sim
        self.camera = R.Camera(eye=c.eye, look_at=c.look_at, up=c.up, fov_y_deg=c.fov_y_deg, width=c.width, height=c.height)
        self.background = torch.tensor(c.background, dtype=sim.dtype, device=sim.device)
        self.backend = backend
        self._parts = []
        for i, r in enumerate(sim.ranges):
            o = sim.scene.objects[i]
            if r.kind == "cloth":
                sampling = R.cloth_sampling(torch.as_tensor(sim.faces[i]), CLOTH_GAUSSIANS_PER_TRIANGLE)
                self._parts.append(("cloth", r, sampling))
            else:
                sigma = 0.5 * o.spacing * sim.config.grid.dx
                self._parts.append(("solid", r, sigma))
        self.is_cloth = torch.cat([
            torch.full((extra.num_gaussians if kind == "cloth" else r.end - r.start,), kind == "cloth", device=sim.device)
            for kind, r, extra in self._parts
        ])
        means, _ = self.geometry(sim.state0.x, sim.state0.F)
        self.default_colors = self._textures(sim, means, back=False)
        # Two-sided cloth: the back's colours (the front's where the scene gives no color_back).
        self.default_back_colors = self._textures(sim, means, back=True)

    def _textures(self, sim: Simulation, means: torch.Tensor, back: bool) -> torch.Tensor:
        """Per-Gaussian colours ``[G, 3]`` at rest: each object's colour (``color_back`` for the back of
        a cloth), as a 3-D checkerboard of the colour and a darker shade (8 cells across the object)
        when its texture is "checker"."""
        colors = []
        start = 0
        for (kind, r, extra), o in zip(self._parts, sim.scene.objects):
            n = extra.num_gaussians if kind == "cloth" else r.end - r.start
            m = means[start : start + n]
            start += n
            rgb = o.color_back if back and kind == "cloth" and o.color_back is not None else o.color
            base = torch.tensor(rgb, dtype=sim.dtype, device=sim.device)
            c = base.expand(n, 3)
            if o.texture == "checker":
                cell = float((m.max(0).values - m.min(0).values).max()) / 8.0
                parity = torch.floor((m - m.min(0).values) / cell + 1e-6).sum(dim=1) % 2
                c = torch.where(parity[:, None] > 0, base, 0.55 * base)
            colors.append(c)
        return torch.cat(colors).contiguous()

    @property
    def num_gaussians(self) -> int:
        return int(self.default_colors.shape[0])

    def geometry(self, x: torch.Tensor, F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian means ``[G, 3]`` and covariances ``[G, 3, 3]`` of one frame (``x [N,3]``, ``F [N,3,3]``)."""
        means, covs, _ = self.frame(x, F)
        return means, covs

    def frame(self, x: torch.Tensor, F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means ``[G, 3]``, covariances ``[G, 3, 3]`` and front normals ``[G, 3]`` (zero for solids)."""
        means, covs, normals = [], [], []
        for kind, r, extra in self._parts:
            if kind == "cloth":
                verts = x[r.start : r.start + r.num_vertices]
                # With the camera, the boundary rows are inset so that alpha >= R.SILHOUETTE_ALPHA
                # is the mesh's own silhouette (render/gaussians.py).
                g = R.cloth_gaussians(verts, extra.faces, thickness=CLOTH_THICKNESS, sampling=extra, in_plane_scale=CLOTH_IN_PLANE_SCALE,
                                      camera=self.camera, opacity=DEFAULT_OPACITY)
                normals.append(g.normals)
            else:
                g = R.solid_gaussians(x[r.start : r.end], F[r.start : r.end], extra)
                normals.append(torch.zeros_like(g.means))
            means.append(g.means)
            covs.append(g.covariances)
        return torch.cat(means), torch.cat(covs), torch.cat(normals)

    def front_weight(self, means: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """``[G]``: how much each Gaussian shows its front colour (cloth: the side facing the camera,
        ``R.front_facing``; solids: always 1)."""
        w = R.front_facing(normals, means, self.camera)
        return torch.where(self.is_cloth.to(means.device), w, torch.ones_like(w))

    def render(self, x: torch.Tensor, F: torch.Tensor, colors: torch.Tensor | None = None, opacities: torch.Tensor | None = None,
               back_colors: torch.Tensor | None = None) -> R.RenderOutput:
        """One frame: colour ``[3,H,W]``, alpha ``[1,H,W]``, depth ``[1,H,W]``.

        ``colors`` / ``back_colors`` ``[G, 3]``: the front and back sides' colours (default: the
        scene's; ``back_colors`` defaults to ``colors`` when only those are given: one-sided)."""
        means, covs, normals = self.frame(x, F)
        if colors is None:
            colors, back = self.default_colors, self.default_back_colors
        else:
            back = colors if back_colors is None else back_colors
        if back is not colors:
            w = self.front_weight(means, normals)[:, None]
            colors = back + w * (colors - back)
        if opacities is None:
            opacities = torch.full((means.shape[0],), DEFAULT_OPACITY, dtype=means.dtype, device=means.device)
        return R.rasterize(means, covs, colors, opacities, self.camera, self.background, backend=self.backend)
