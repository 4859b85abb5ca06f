"""Scene files (TOML): parsing, validation with errors that name the key, the value and the file.

    [scene]      fps, frames, substeps (0 = from CFL), gravity, domain = [[x0,y0,z0],[x1,y1,z1]], grid,
                 flip (the FLIP share of the grid-to-particle velocity per substep of the scene's CFL
                 time step, kept per unit time at other substep counts, 0 = APIC; default DEFAULT_FLIP),
                 cloth_solver = "auto" (default: "mesh" where the mesh solver simulates the scene, else "mpm";
                 see resolve_cloth_solver) | "mpm" (the cloth on the grid) | "mesh" (cloth-only scenes without a
                 grid: taichi_mpm/mesh_cloth.py),
                 cloth_thickness (m, the mesh solver's cloth-cloth contact distance; 0 = none; default 0.004),
                 membrane = "implicit" (default: the mesh solver's backward-Euler membrane step, dt from
                 the motion) | "explicit" (dt under the membrane's stiffness CFL bound)
    [camera]     width, height, fov_y_deg, eye, look_at, up, background = [r,g,b],
                 masks = "background" (cut from the background colour) | "colour" (pipeline/colour_masks.py)
    [[object]]   name, kind = "cloth"|"solid", mesh = "grid:NxM" | "box" | "sphere" | path (trimesh),
                 size, center, rotation_deg, color, color_back (cloth: the other side; default color),
                 pinned (vertex ids or "corners:2"), velocity,
                 [object.material] model + values, [object.fit] parameter = [low, high] (or true)
    [[collider]] kind = "plane"|"sphere"|"box"|"mesh", geometry, friction, velocity, motion

Units are SI.  Cloth stiffnesses are membrane stiffnesses (N/m) and cloth density is areal (kg/m^2).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from dreamcloth.taichi_mpm import PARAMETERS as MATERIAL, parameters_of
from dreamcloth.taichi_mpm.cloth_contact import ANALYTIC

from .errors import not_a_file

#: the grid-free cloth solver's cloth-cloth contact distance (m) when a scene file does not set
#: ``[scene] cloth_thickness``: the 4 mm contact radius of the cross-simulator references' cloth
#: (Newton's particle radius there); far above real fabric (0.2-1 mm), because only vertices are
#: kept off triangles and a mesh's edges are 10-30 mm long
DEFAULT_CLOTH_THICKNESS = 0.004
#: bounds that keep a scene's arithmetic finite (1e300 overflowed in the mesh's placement): positions
#: and sizes in metres, speeds in m/s (a thrown or moving object; CFL substeps grow with it), the
#: gravity's magnitude in m/s^2, and a grid cloth's vertices per side (1000 x 1000 already needs GBs)
MAX_COORDINATE = 1e6
MAX_SPEED = 1e3
MAX_GRAVITY = 1e3
MAX_GRID_SIDE = 1000
#: the smallest object size (m): below it a grid cloth's triangles round to zero area
MIN_SIZE = 1e-4
#: the mesh solver's membrane when a scene file does not set ``[scene] membrane``: backward Euler
#: solved to convergence (taichi_mpm.membrane_newton), whose time step does not depend on the
#: stiffness (README "Cloth physics")
DEFAULT_MEMBRANE = "implicit"
#: the FLIP share of the grid-to-particle velocity when a scene file does not set ``[scene] flip``
#: (0 is APIC; the engine's own ``SimConfig.flip`` stays 0).  Measured 2026-12-03 (README, "Cloth
#: physics"): the demo's drop converges in the time step with 0.95 (worst per-frame IoU 165 vs 330
#: substeps per frame 0.83, APIC 0.61), and 30-iteration fits of the cross-simulator videos predicted
#: the unseen frames better than APIC's with the same budget (tilted_ground 0.793 vs 0.607,
#: sphere_stiff 0.795 vs 0.736).  APIC's transfer damps the cloth's own motion every substep.
DEFAULT_FLIP = 0.95

#: the material parameters a scene can set and fit, in a fixed order (the simulator's table, less
#: the engine-only ``cloth_friction``: a scene's ``friction`` is the cloth's too)
PARAMETERS = tuple(p.name for p in MATERIAL.values() if p.defaults)
CLOTH_ONLY = tuple(p.name for p in MATERIAL.values() if p.defaults and "solid" not in p.defaults)


class SceneError(ValueError):
    """A scene file problem; the message names the file and the key."""


def _fmt(v) -> str:
    return repr(v) if not isinstance(v, float) else f"{v:g}"


class _Reader:
    """Reads one TOML table, remembering which keys were used, for exact error messages."""

    def __init__(self, table: dict, where: str, file: Path):
        if not isinstance(table, dict):
            raise SceneError(f"{file}: [{where}] must be a table")
        self.table, self.where, self.file = table, where, file
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.where}.{k}" if self.where else k

    def err(self, k: str, msg: str) -> SceneError:
        return SceneError(f"{self.file}: {self.key(k)} {msg}")

    def get(self, k: str, default: Any = dataclasses.MISSING) -> Any:
        self.used.add(k)
        if k in self.table:
            return self.table[k]
        if default is dataclasses.MISSING:
            raise self.err(k, "is missing")
        return default

    def number(self, k: str, default=dataclasses.MISSING, low=-math.inf, high=math.inf, integer=False, low_open=False) -> float:
        v = self.get(k, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.err(k, f"must be a number, got {_fmt(v)}")
        if integer and int(v) != v:
            raise self.err(k, f"must be an integer, got {_fmt(v)}")
        if not math.isfinite(v) or v < low or v > high or (low_open and v == low):
            rng = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
            raise self.err(k, f"= {_fmt(v)} is out of range {rng}")
        return int(v) if integer else float(v)

    def vector(self, k: str, n: int = 3, default=dataclasses.MISSING, limit: float = MAX_COORDINATE,
               magnitude: float | None = None) -> tuple[float, ...]:
        """``n`` finite numbers, each within +-``limit`` (positions in metres: ``MAX_COORDINATE``), and
        with a length of at most ``magnitude`` when given (speeds, gravity)."""
        v = self.get(k, default)
        if not isinstance(v, (list, tuple)) or len(v) != n or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v):
            raise self.err(k, f"must be a list of {n} numbers, got {_fmt(v)}")
        if not all(math.isfinite(a) for a in v):
            raise self.err(k, f"must be finite, got {_fmt(v)}")
        if max(abs(a) for a in v) > limit:
            raise self.err(k, f"components must lie within +-{limit:g}, got {_fmt(v)}")
        if magnitude is not None and math.hypot(*v) > magnitude:
            raise self.err(k, f"must have a magnitude of at most {magnitude:g}, got {math.hypot(*v):.4g}")
        return tuple(float(a) for a in v)

    def string(self, k: str, default=dataclasses.MISSING, choices: tuple[str, ...] | None = None) -> str:
        v = self.get(k, default)
        if not isinstance(v, str):
            raise self.err(k, f"must be a string, got {_fmt(v)}")
        if choices is not None and v not in choices:
            raise self.err(k, f"= {v!r} is not one of {', '.join(choices)}")
        return v

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.err(unknown[0], "is not a known key" + (f" (known: {', '.join(sorted(self.used))})" if self.used else ""))


@dataclasses.dataclass(frozen=True)
class SceneSettings:
    fps: float
    frames: int
    substeps: int  # 0: from the CFL bound of the run's parameter ranges
    gravity: tuple[float, float, float]
    domain: tuple[tuple[float, float, float], tuple[float, float, float]]
    grid: int
    flip: float = DEFAULT_FLIP  # FLIP share of the grid-to-particle velocity (taichi_mpm.kernels.g2p)
    cloth_solver: str = "mpm"  # "mesh": a cloth-only scene without a grid (taichi_mpm.mesh_cloth); files: "auto"
    cloth_thickness: float = DEFAULT_CLOTH_THICKNESS  # m; the mesh solver's cloth-cloth contact (0: none)
    membrane: str = DEFAULT_MEMBRANE  # the mesh solver's membrane integrator: "implicit" | "explicit"


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    width: int
    height: int
    fov_y_deg: float
    eye: tuple[float, float, float]
    look_at: tuple[float, float, float]
    up: tuple[float, float, float]
    background: tuple[float, float, float]
    masks: str = "background"  # how the video's masks are cut: "background" | "colour"


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    name: str
    kind: str  # "cloth" | "solid"
    mesh: str
    size: tuple[float, ...]
    center: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    color: tuple[float, float, float]
    pinned: tuple[int, ...] | str
    pin_velocity: tuple[float, float, float]
    velocity: tuple[float, float, float]
    model: str
    values: dict[str, float]
    fit: dict[str, tuple[float, float]]
    spacing: float  # solids: particle spacing in units of dx (0.5 = 8 per cell)
    scale: float  # mesh files
    texture: str = "checker"  # "checker": 3-D checkerboard of color and a darker shade; "plain"
    color_back: tuple[float, float, float] | None = None  # cloth: the back side's colour (None: color)


@dataclasses.dataclass(frozen=True)
class ColliderSpec:
    kind: str
    params: dict[str, Any]
    friction: float | None  # None: the first object's friction (and fitted with it)


@dataclasses.dataclass(frozen=True)
class Scene:
    path: Path
    settings: SceneSettings
    camera: CameraSpec
    objects: tuple[ObjectSpec, ...]
    colliders: tuple[ColliderSpec, ...]

    @property
    def fit_parameters(self) -> list[tuple[int, str]]:
        """(object index, parameter) pairs to fit, in a stable order."""
        return [(i, p) for i, o in enumerate(self.objects) for p in PARAMETERS if p in o.fit]

    def with_values(self, values: dict[tuple[int, str], float]) -> "Scene":
        """A copy with material values replaced."""
        objs = list(self.objects)
        for (i, name), v in values.items():
            vals = dict(objs[i].values)
            vals[name] = float(v)
            objs[i] = dataclasses.replace(objs[i], values=vals)
        return dataclasses.replace(self, objects=tuple(objs))


_GRID_MESH = re.compile(r"^grid:(\d+)x(\d+)$")
_CORNERS = re.compile(r"^corners:([1-4])$")


def _check_value(r: _Reader, name: str, v, allow_off: bool = True) -> float:
    """A material value within its physical limits (or its ``off`` value, unless a fit range's end:
    a fit moves through the range, and nothing between off and the limits is admissible)."""
    spec = MATERIAL[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise r.err(name, f"must be a finite number, got {_fmt(v)}")
    if not spec.admits(v) or (not allow_off and spec.off is not None and v == spec.off):
        off = "" if spec.off is None else (f" (or {spec.note})" if allow_off else f" (a fit range cannot reach {spec.note})")
        raise r.err(name, f"= {_fmt(v)} is out of range {spec.interval()}{off}")
    return float(v)


def _object(t: dict, idx: int, file: Path) -> ObjectSpec:
    r = _Reader(t, f"object[{idx}]", file)
    name = r.string("name", f"object{idx}")
    # simulate writes files named after the object (meshes/<name>_0000.obj): a name is one file-name part
    if not name.strip() or name in (".", "..") or any(c in name for c in '/\\:*?"<>|') or any(ord(c) < 32 for c in name):
        raise r.err("name", f"= {name!r} cannot be part of a file name (no path separators or /\\:*?\"<>|)")
    kind = r.string("kind", choices=("cloth", "solid"))
    mesh = r.string("mesh")
    if kind == "cloth":
        if not (_GRID_MESH.match(mesh) or Path(mesh).suffix.lower() in (".obj", ".ply", ".stl", ".off", ".glb")):
            raise r.err("mesh", f"= {mesh!r}: cloth needs 'grid:NxM' or a mesh file")
        m = _GRID_MESH.match(mesh)
        if m and (int(m.group(1)) < 2 or int(m.group(2)) < 2):
            raise r.err("mesh", f"= {mesh!r}: a cloth grid needs at least 2x2 vertices")
        if m and max(int(m.group(1)), int(m.group(2))) > MAX_GRID_SIDE:
            raise r.err("mesh", f"= {mesh!r}: a cloth grid has at most {MAX_GRID_SIDE} vertices a side")
        default_size = (1.0, 1.0) if m else (1.0,)  # a mesh file's size is its own (times scale)
    else:
        if mesh not in ("box", "sphere") and Path(mesh).suffix.lower() not in (".obj", ".ply", ".stl", ".off", ".glb"):
            raise r.err("mesh", f"= {mesh!r}: a solid needs 'box', 'sphere' or a mesh file")
        default_size = (0.1,) if mesh == "sphere" else (0.1, 0.1, 0.1)
    raw_size = r.get("size", list(default_size))
    if isinstance(raw_size, (int, float)) and not isinstance(raw_size, bool):
        raw_size = [raw_size]
    want = {"box": 3, "sphere": 1}.get(mesh, 2 if _GRID_MESH.match(mesh) else 1)
    if not isinstance(raw_size, list) or len(raw_size) != want:
        raise r.err("size", f"must have {want} value(s) for mesh {mesh!r}, got {_fmt(raw_size)}")
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in raw_size):
        raise r.err("size", f"must be a list of {want} number(s), got {_fmt(raw_size)}")
    size = tuple(float(a) for a in raw_size)
    if any(not (a > 0 and math.isfinite(a)) for a in size):
        raise r.err("size", f"must be positive, got {_fmt(raw_size)}")
    if max(size) > MAX_COORDINATE or min(size) < MIN_SIZE:
        raise r.err("size", f"must lie in [{MIN_SIZE:g}, {MAX_COORDINATE:g}] m, got {_fmt(raw_size)}")
    center = r.vector("center", default=[0.0, 0.0, 0.0])
    rotation = r.vector("rotation_deg", default=[0.0, 0.0, 0.0])
    color = r.vector("color", default=[0.8, 0.3, 0.2])
    if any(not 0 <= c <= 1 for c in color):
        raise r.err("color", f"components must lie in [0, 1], got {_fmt(list(color))}")
    # The side of a cloth against its triangles' winding; solids have no back.
    color_back = r.vector("color_back", default=list(color))
    if any(not 0 <= c <= 1 for c in color_back):
        raise r.err("color_back", f"components must lie in [0, 1], got {_fmt(list(color_back))}")
    if "color_back" in r.table and kind != "cloth":
        raise r.err("color_back", "is only supported for cloth")
    pinned_raw = r.get("pinned", [])
    if isinstance(pinned_raw, str):
        if not _CORNERS.match(pinned_raw):
            raise r.err("pinned", f"= {pinned_raw!r}: use a list of vertex ids or 'corners:N' (N in 1..4)")
        if not _GRID_MESH.match(mesh):
            raise r.err("pinned", f"= {pinned_raw!r}: 'corners:N' needs a grid:NxM cloth")
        pinned: tuple[int, ...] | str = pinned_raw
    elif isinstance(pinned_raw, list) and all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in pinned_raw):
        pinned = tuple(pinned_raw)
    else:
        raise r.err("pinned", f"must be a list of vertex ids or 'corners:N', got {_fmt(pinned_raw)}")
    if pinned and kind != "cloth":
        raise r.err("pinned", "is only supported for cloth")
    pin_velocity = r.vector("pin_velocity", default=[0.0, 0.0, 0.0], magnitude=MAX_SPEED)
    velocity = r.vector("velocity", default=[0.0, 0.0, 0.0], magnitude=MAX_SPEED)
    spacing = r.number("particle_spacing", 0.5, low=0.1, high=2.0)
    scale = r.number("scale", 1.0, low=0.0, low_open=True)
    texture = r.string("texture", "checker", choices=("checker", "plain"))

    mr = _Reader(r.get("material", {}), f"object[{idx}].material", file)
    models = ("cloth",) if kind == "cloth" else ("neo_hookean", "fixed_corotated")
    model = mr.string("model", models[0], choices=models)
    # default values and fit ranges per kind, cited in the simulator's parameter table
    defaults = {p.name: p.defaults[kind] for p in parameters_of(kind)}
    values = {p: _check_value(mr, p, mr.get(p, d)) for p, d in defaults.items()}
    mr.finish()

    fr = _Reader(r.get("fit", {}), f"object[{idx}].fit", file)
    fit: dict[str, tuple[float, float]] = {}
    for p in list(fr.table):
        if p not in defaults:
            raise fr.err(p, f"is not a parameter of a {kind} (fittable: {', '.join(defaults)})")
        v = fr.get(p)
        if v is True:
            fit[p] = MATERIAL[p].ranges[kind]
        elif v is False:
            continue
        elif isinstance(v, list) and len(v) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v):
            lo, hi = float(v[0]), float(v[1])
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise fr.err(p, f"range must be finite, got {_fmt(v)}")
            if lo > hi:
                raise fr.err(p, f"range [{lo:g}, {hi:g}] has low > high")
            if lo == hi:
                raise fr.err(p, f"range [{lo:g}, {hi:g}] is a single value: set {p} = {lo:g} under [object.material] "
                                "and leave it out of [object.fit]")
            _check_value(fr, p, lo, allow_off=False)
            _check_value(fr, p, hi, allow_off=False)
            if MATERIAL[p].log_space and lo <= 0:
                raise fr.err(p, f"range must be positive (fitted in log space), got {_fmt(v)}")
            fit[p] = (lo, hi)
        else:
            raise fr.err(p, f"must be [low, high] or true, got {_fmt(v)}")
    fr.finish()
    r.finish()
    return ObjectSpec(name, kind, mesh, size, center, rotation, color, pinned, pin_velocity, velocity, model, values,
                      fit, spacing, scale, texture, tuple(color_back))


def _collider(t: dict, idx: int, file: Path) -> ColliderSpec:
    r = _Reader(t, f"collider[{idx}]", file)
    kind = r.string("kind", choices=("plane", "sphere", "box", "mesh"))
    friction = r.get("friction", None)
    if friction is not None:
        friction = _check_value(r, "friction", friction)
    velocity = r.vector("velocity", default=[0.0, 0.0, 0.0], magnitude=MAX_SPEED)
    p: dict[str, Any] = {"velocity": velocity}
    if kind == "plane":
        p["point"] = r.vector("point")
        p["normal"] = r.vector("normal", default=[0.0, 1.0, 0.0])
        if math.sqrt(sum(a * a for a in p["normal"])) < 1e-12:
            raise r.err("normal", "must be non-zero")
    elif kind == "sphere":
        p["center"] = r.vector("center")
        p["radius"] = r.number("radius", low=0.0, low_open=True)
    elif kind == "box":
        p["center"] = r.vector("center")
        p["half_size"] = r.vector("half_size")
        if min(p["half_size"]) <= 0:
            raise r.err("half_size", f"must be positive, got {_fmt(list(p['half_size']))}")
        p["rotation_deg"] = r.vector("rotation_deg", default=[0.0, 0.0, 0.0])
    else:
        path = r.get("path", None)
        motion = r.get("motion", None)
        if (path is None) == (motion is None):
            raise r.err("path", "give exactly one of 'path' (a static mesh) or 'motion' (a glob of per-frame OBJ files)")
        base = file.parent
        if path is not None:
            if not isinstance(path, str) or not path.strip():
                raise r.err("path", f"must be a mesh file name, got {_fmt(path)}")
            files = [base / path]
        else:
            if not isinstance(motion, str) or not motion.strip():
                raise r.err("motion", f"must be a glob of OBJ files such as 'motion/frame_*.obj', got {_fmt(motion)}")
            try:  # pathlib's glob takes patterns relative to the scene's folder only
                files = sorted(base.glob(motion))
            except (NotImplementedError, ValueError) as exc:
                raise r.err("motion", f"= {motion!r} is not a pattern relative to the scene's folder ({exc})") from None
            if not files:
                raise r.err("motion", f"= {motion!r} matches no files next to the scene")
        for f in files:
            if not f.is_file():
                raise r.err("path", f"= {str(f)!r} does not exist")
        p["files"] = tuple(str(f) for f in files)
        p["scale"] = r.number("scale", 1.0, low=0.0, low_open=True)
        p["offset"] = r.vector("offset", default=[0.0, 0.0, 0.0])
    r.finish()
    return ColliderSpec(kind, p, friction)


def load_scene(path: str | Path) -> Scene:
    """Parse and validate a scene file; every problem is a ``SceneError`` naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scene file {path} {not_a_file(path)}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SceneError(f"{path}: not valid TOML ({exc})") from None
    root = _Reader(data, "", path)

    sr = _Reader(root.get("scene"), "scene", path)
    domain = sr.get("domain", [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    if not (isinstance(domain, list) and len(domain) == 2):
        raise sr.err("domain", f"must be [[x0, y0, z0], [x1, y1, z1]], got {_fmt(domain)}")
    lo = _Reader({"min": domain[0]}, "scene.domain", path).vector("min")
    hi = _Reader({"max": domain[1]}, "scene.domain", path).vector("max")
    if any(h <= l for l, h in zip(lo, hi)):
        raise sr.err("domain", f"max {list(hi)} must exceed min {list(lo)} on every axis")
    settings = SceneSettings(
        fps=sr.number("fps", 24.0, low=0.0, high=1000.0, low_open=True),
        frames=sr.number("frames", 24, low=2, high=100000, integer=True),
        substeps=sr.number("substeps", 0, low=0, high=100000, integer=True),
        gravity=sr.vector("gravity", default=[0.0, -9.81, 0.0], magnitude=MAX_GRAVITY),
        domain=(lo, hi),
        grid=sr.number("grid", 32, low=8, high=512, integer=True),
        flip=sr.number("flip", DEFAULT_FLIP, low=0.0, high=0.999),
        cloth_solver=sr.string("cloth_solver", "auto", choices=("auto", "mpm", "mesh")),
        cloth_thickness=sr.number("cloth_thickness", DEFAULT_CLOTH_THICKNESS, low=0.0, high=0.05),
        membrane=sr.string("membrane", DEFAULT_MEMBRANE, choices=("implicit", "explicit")),
    )
    sr.finish()

    cr = _Reader(root.get("camera"), "camera", path)
    camera = CameraSpec(
        width=cr.number("width", 128, low=16, high=4096, integer=True),
        height=cr.number("height", 96, low=16, high=4096, integer=True),
        fov_y_deg=cr.number("fov_y_deg", 40.0, low=1.0, high=170.0),
        eye=cr.vector("eye"),
        look_at=cr.vector("look_at"),
        up=cr.vector("up", default=[0.0, 1.0, 0.0]),
        background=cr.vector("background", default=[1.0, 1.0, 1.0]),
        masks=cr.string("masks", "background", choices=("background", "colour", "color")).replace("color", "colour"),
    )
    if any(not 0 <= c <= 1 for c in camera.background):
        raise cr.err("background", f"components must lie in [0, 1], got {list(camera.background)}")
    if math.dist(camera.eye, camera.look_at) < 1e-9:
        raise cr.err("look_at", "must differ from eye")
    cr.finish()

    objects_raw = root.get("object", [])
    if not isinstance(objects_raw, list) or not objects_raw:
        raise SceneError(f"{path}: the scene needs at least one [[object]]")
    objects = tuple(_object(t, i, path) for i, t in enumerate(objects_raw))
    names = [o.name for o in objects]
    if len(set(names)) != len(names):
        raise SceneError(f"{path}: object names must be unique, got {names}")
    colliders_raw = root.get("collider", [])
    if not isinstance(colliders_raw, list):
        raise SceneError(f"{path}: collider must be an array of tables ([[collider]]), got {_fmt(colliders_raw)}")
    colliders = tuple(_collider(t, i, path) for i, t in enumerate(colliders_raw))
    if sum(c.kind == "mesh" for c in colliders) > 1:
        raise SceneError(f"{path}: at most one mesh collider is supported")
    root.finish()
    if settings.cloth_solver == "auto":
        settings = dataclasses.replace(settings, cloth_solver=resolve_cloth_solver(objects, colliders))
    return Scene(path, settings, camera, objects, colliders)


def resolve_cloth_solver(objects, colliders) -> str:
    """``[scene] cloth_solver = "auto"`` (the default): ``"mesh"`` for a scene the grid-free solver
    simulates (only cloth, analytic colliders, no strain limit set or fitted), else ``"mpm"``.

    Why the mesh solver first: on the grid the layers of a fold share a cell's velocity, so the grid
    spacing decides the motion.  The demo's drop (31x31 cloth, one second) scored 0.65-0.68 worst
    per-frame silhouette IoU between grid 32 and grid 64 on MPM whatever the transfer, and 1.000 on
    the mesh, which has no grid (README, "Cloth physics"); the cross-simulator references are
    predicted with it.  MPM stays for solids, mixed scenes, mesh colliders and the strain limit: the
    conditions of ``taichi_mpm.mesh_cloth.check_supported``, read here from the file before a model
    is built (a change there belongs here too)."""
    if not all(o.kind == "cloth" for o in objects):
        return "mpm"
    if not all(c.kind in ANALYTIC for c in colliders):
        return "mpm"
    if any(o.values.get("max_stretch", 0.0) > 0 or "max_stretch" in o.fit for o in objects):
        return "mpm"
    return "mesh"


def to_toml(scene: Scene) -> str:
    """The scene as TOML (values as currently set), e.g. to record what a simulation used."""

    def v(x):
        if isinstance(x, (list, tuple)):
            return "[" + ", ".join(v(a) for a in x) + "]"
        if isinstance(x, bool):
            return "true" if x else "false"
        if isinstance(x, (int, float)):
            return repr(x) if isinstance(x, int) else f"{x:.10g}"
        return '"' + str(x).replace("\\", "\\\\").replace('"', '\\"') + '"'

    s = scene.settings
    c = scene.camera
    lines = [
        "[scene]",
        f"fps = {v(s.fps)}", f"frames = {v(s.frames)}", f"substeps = {v(s.substeps)}", f"gravity = {v(s.gravity)}",
        f"domain = {v([list(s.domain[0]), list(s.domain[1])])}", f"grid = {v(s.grid)}", f"flip = {v(s.flip)}",
        f"cloth_solver = {v(s.cloth_solver)}", f"cloth_thickness = {v(s.cloth_thickness)}",
        f"membrane = {v(s.membrane)}", "",
        "[camera]",
        f"width = {v(c.width)}", f"height = {v(c.height)}", f"fov_y_deg = {v(c.fov_y_deg)}", f"eye = {v(c.eye)}",
        f"look_at = {v(c.look_at)}", f"up = {v(c.up)}", f"background = {v(c.background)}", f"masks = {v(c.masks)}", "",
    ]
    for o in scene.objects:
        lines += [
            "[[object]]", f"name = {v(o.name)}", f"kind = {v(o.kind)}", f"mesh = {v(o.mesh)}", f"size = {v(o.size)}",
            f"center = {v(o.center)}", f"rotation_deg = {v(o.rotation_deg)}", f"color = {v(o.color)}",
            f"pinned = {v(o.pinned if isinstance(o.pinned, str) else list(o.pinned))}", f"pin_velocity = {v(o.pin_velocity)}",
            f"velocity = {v(o.velocity)}", f"particle_spacing = {v(o.spacing)}", f"scale = {v(o.scale)}",
            f"texture = {v(o.texture)}",
            *([f"color_back = {v(o.color_back)}"] if o.kind == "cloth" and o.color_back is not None else []),
            "[object.material]", f"model = {v(o.model)}",
        ]
        lines += [f"{k} = {v(val)}" for k, val in o.values.items()]
        if o.fit:
            lines.append("[object.fit]")
            lines += [f"{k} = {v(list(r))}" for k, r in o.fit.items()]
        lines.append("")
    for col in scene.colliders:
        lines += ["[[collider]]", f"kind = {v(col.kind)}"]
        if col.friction is not None:
            lines.append(f"friction = {v(col.friction)}")
        for k, val in col.params.items():
            if k == "files":
                lines.append(f"path = {v(val[0])}" if len(val) == 1 else f"# motion: {len(val)} files")
                if len(val) > 1:
                    lines.append(f"motion = {v(str(Path(val[0]).parent / '*' ) + Path(val[0]).suffix)}")
            else:
                lines.append(f"{k} = {v(val)}")
        lines.append("")
    return "\n".join(lines)
