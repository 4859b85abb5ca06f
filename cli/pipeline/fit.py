"""The fit pipeline: video in, material parameters out (DESIGN.md section 5).

1. decode the video at the scene's frame rate and camera resolution; foreground masks;
2. appearance: per-Gaussian colours and opacities fitted to frame 0 with the geometry fixed;
3. optionally the initial velocity, on the first frames;
4. material: Adam on the scene's ``fit`` parameters in squashed boxes (log-space boxes for
   stiffnesses and densities), loss = L1 + D-SSIM + soft-IoU (+ lambda * SDS from a prior), with a
   horizon that grows over the iterations; several starting points are probed and the next one
   is taken when the first iterations stall;
5. report: params.json (values, ranges, initial guesses, identifiability), fit.mp4, loss.png,
   params.png, and checkpoint.pt after every iteration (``--resume`` continues from it).

A rollout that produces NaN (or a loss/gradient that is not finite) halves dt and retries the
iteration; nothing non-finite is ever written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from pathlib import Path
from typing import Callable

import torch

from dreamcloth import taichi_mpm as M

from .errors import InputError, RunFailedError
from .losses import image_loss, soft_foreground
from .polish import COARSE_FACTOR, REL_STEP, ModelPolish, NonFiniteLoss, QuadraticModel, build_model
from .scene import Scene
from .simulation import SceneRenderer, Simulation, build

CHECKPOINT_VERSION = 1
#: a fitted value this close to an edge of its range (fraction of the range in fit space) is flagged
EDGE_TOLERANCE = 0.02
#: a polish step that lowers the loss by less than this fraction ends the fit: below it
#: the float32 rollout's round-off, not the parameters, moves the loss (the demo's polish spent
#: 52 s, five evaluations, on a step from 0.15145 to 0.15143)
POLISH_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of a fit (all stages)."""

    iterations: int = 30
    lr: float = 0.2  # Adam step in the normalised coordinates u (value = box(sigmoid(u)))
    lr_final: float = 0.05  # cosine decay of the step to this fraction: the last iterations settle
    polish_iterations: int | None = None  # Newton-polish iterations at the end (None: all after the first third)
    appearance_steps: int = 80
    appearance_lr: float = 0.05
    fit_velocity: bool = False
    velocity_frames: int = 4
    velocity_steps: int = 15
    velocity_lr: float = 0.05
    horizon_start: int = 6  # frames seen by the first iterations
    horizon_full_at: float = 0.25  # fraction of the iterations after which every frame is used
    w_dssim: float = 0.2
    w_mask: float = 1.0
    w_sds: float = 0.0
    # starting points probed before the material stage (forward rollouts side by side).  4 left the
    # bundled demo to chance (2026-12-06): its truth's basin is narrow in young_modulus (full-horizon
    # loss 0.163 at the truth, 0.188 at +20%); with the demo video re-rendered, the best of 4
    # (E 89, damping 0.53) led Adam to E 118 (+98%); the best of 6 (43, 0.24) and of 8 (47, 0.44)
    # both to -0.6..-0.9% and -3.1%, in 1 min 41 s and 1 min 10 s
    starts: int = 8
    stall_iterations: int = 5
    stall_improvement: float = 0.02
    max_dt_halvings: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.horizon_start < 2:
            raise ValueError(f"horizon_start must be >= 2 frames, got {self.horizon_start}")
        if self.starts < 1:
            raise ValueError(f"starts must be >= 1, got {self.starts}")
        if self.w_sds < 0:
            raise ValueError(f"the prior weight must be >= 0, got {self.w_sds}")
        # the rest (fit-batch's job files set any of them): each named as the job file names it
        def check(name: str, ok: bool, want: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {want}, got {getattr(self, name)!r}")

        def finite(v) -> bool:
            return isinstance(v, (int, float)) and math.isfinite(v)

        check("lr_final", finite(self.lr_final) and 0 <= self.lr_final <= 1, "in [0, 1] (the last step's fraction of lr)")
        check("polish_iterations", self.polish_iterations is None or self.polish_iterations >= 0, ">= 0")
        check("appearance_steps", self.appearance_steps >= 0, ">= 0")
        for name in ("appearance_lr", "velocity_lr"):
            check(name, finite(getattr(self, name)) and getattr(self, name) > 0, "positive")
        check("velocity_frames", self.velocity_frames >= 2, ">= 2 frames")
        check("velocity_steps", self.velocity_steps >= 0, ">= 0")
        check("horizon_full_at", finite(self.horizon_full_at) and 0 <= self.horizon_full_at <= 1, "in [0, 1] (a fraction of the iterations)")
        for name in ("w_dssim", "w_mask", "stall_improvement"):
            check(name, finite(getattr(self, name)) and getattr(self, name) >= 0, ">= 0")
        check("stall_iterations", self.stall_iterations >= 1, ">= 1")
        check("max_dt_halvings", self.max_dt_halvings >= 0, ">= 0")


class ParamSpace:
    """The fitted parameters as an unconstrained vector ``u``: value = lo + (hi - lo) sigmoid(u), or in
    log space for stiffnesses and densities; u = 0 is the middle of the range (geometric middle in
    log space)."""

    def __init__(self, scene: Scene):
        self.keys = scene.fit_parameters
        self.ranges = [scene.objects[i].fit[p] for i, p in self.keys]
        self.log = [M.PARAMETERS[p].log_space for _, p in self.keys]
        if not self.keys:
            raise InputError(f"{scene.path}: no [object.fit] parameters: nothing to fit")

    @property
    def size(self) -> int:
        return len(self.keys)

    def names(self, scene: Scene) -> list[str]:
        multi = len(scene.objects) > 1
        return [f"{scene.objects[i].name}.{p}" if multi else p for i, p in self.keys]

    def values(self, u: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
        out = {}
        s = torch.sigmoid(u)
        for k, (key, (lo, hi), lg) in enumerate(zip(self.keys, self.ranges, self.log)):
            if lg:
                out[key] = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * s[k])
            else:
                out[key] = lo + (hi - lo) * s[k]
        return out

    def to_u(self, values: dict[tuple[int, str], float]) -> torch.Tensor:
        u = []
        for key, (lo, hi), lg in zip(self.keys, self.ranges, self.log):
            v = float(values[key])
            f = (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) if lg and hi > lo else ((v - lo) / (hi - lo) if hi > lo else 0.5)
            f = min(max(f, 1e-6), 1 - 1e-6)
            u.append(math.log(f / (1 - f)))
        return torch.tensor(u, dtype=torch.float64)

    def range_edge(self, k: int, value: float, tolerance: float = EDGE_TOLERANCE) -> str | None:
        """"low" or "high" when parameter ``k``'s ``value`` lies within ``tolerance`` of its range's
        edge in fit space (log fraction for log-space parameters), else None: a fit that ends there
        was stopped by the range, not by the video."""
        (lo, hi), lg = self.ranges[k], self.log[k]
        if hi <= lo:
            return None
        f = (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo)) if lg else (value - lo) / (hi - lo)
        return "low" if f <= tolerance else ("high" if f >= 1 - tolerance else None)

    def natural_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ranges in natural coordinates (see :meth:`natural`)."""
        lo = [math.log(a) if lg else a / max(b - a, 1e-12) for (a, b), lg in zip(self.ranges, self.log)]
        hi = [math.log(b) if lg else b / max(b - a, 1e-12) for (a, b), lg in zip(self.ranges, self.log)]
        return torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)

    def from_natural(self, z: torch.Tensor) -> torch.Tensor:
        """u at natural coordinates ``z`` (the inverse of :meth:`natural`, through :meth:`to_u`)."""
        values = {key: math.exp(float(z[k])) if lg else float(z[k]) * (hi - lo)
                  for k, (key, (lo, hi), lg) in enumerate(zip(self.keys, self.ranges, self.log))}
        return self.to_u(values)

    def natural(self, u: torch.Tensor) -> torch.Tensor:
        """Coordinates used for identifiability: log value (log-space parameters) or value / range width."""
        vals = self.values(u)
        out = []
        for key, (lo, hi), lg in zip(self.keys, self.ranges, self.log):
            out.append(torch.log(vals[key]) if lg else vals[key] / max(hi - lo, 1e-12))
        return torch.stack(out)


@dataclasses.dataclass
class Target:
    """The video to fit: ``frames [T, 3, H, W]`` and ``masks [T, 1, H, W]`` in [0, 1].

    ``background``: the colour the masks were cut from (None when a mask video was given)."""

    frames: torch.Tensor
    masks: torch.Tensor
    path: Path
    digest: str
    background: tuple[float, float, float] | None = None

    def first(self, frames: int) -> "Target":
        """The first ``frames`` frames (and masks) of this target: what a fit on a prefix sees."""
        return Target(self.frames[:frames], self.masks[:frames], self.path, self.digest, self.background)


def load_footage(video: Path, scene: Scene, masks_video: Path | None = None, min_frames: int | None = None) -> Target:
    """Every frame of ``video`` (at least ``min_frames``, default the scene's), decoded at the scene's
    fps and resized to the camera, with masks from a mask video, else the background colour or (scene
    ``[camera] masks = "colour"``) a cloth colour model."""
    from .masks import foreground_masks, read_mask_video
    from .video_io import read_video

    need = min_frames or scene.settings.frames
    c = scene.camera
    size = (c.height, c.width)
    fr = read_video(video, fps=scene.settings.fps, size=size, min_frames=need, same_aspect=True).as_tensor()
    if masks_video is not None:
        masks = read_mask_video(masks_video, scene.settings.fps, size, min_frames=need)
    elif c.masks == "colour":  # no flat background: a cloth colour model from frame 0 (colour_masks.py)
        from .colour_masks import colour_masks_for_scene

        masks = colour_masks_for_scene(fr, scene)
    else:
        masks = foreground_masks(fr, c.background)
    if float(masks[0].mean()) < 1e-4:
        raise InputError(f"{video}: frame 0 shows nothing but background ({c.background}); check the camera and the background colour")
    digest = hashlib.sha256(Path(video).read_bytes()).hexdigest()[:16]
    cut_from_background = masks_video is None and c.masks == "background"
    return Target(fr, masks, Path(video), digest, tuple(c.background) if cut_from_background else None)


def load_target(video: Path, scene: Scene, masks_video: Path | None = None, frames: int | None = None) -> Target:
    """The fit's target: the first ``frames`` (default: the scene's) frames and masks of the video."""
    return load_footage(video, scene, masks_video, frames).first(frames or scene.settings.frames)


@dataclasses.dataclass
class Appearance:
    """Per-Gaussian colour logits ``[G, 3]`` (the front side of cloth), opacity logits ``[G]``, and
    the back side's colour logits ``[G, 3]`` (None: one-sided, the back shows the front's colour)."""

    color_logits: torch.Tensor
    opacity_logits: torch.Tensor
    back_color_logits: torch.Tensor | None = None

    def colors(self) -> torch.Tensor:
        return torch.sigmoid(self.color_logits)

    def back_colors(self) -> torch.Tensor | None:
        return None if self.back_color_logits is None else torch.sigmoid(self.back_color_logits)

    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)


def silhouette(color: torch.Tensor, alpha: torch.Tensor, target: Target, background: torch.Tensor) -> torch.Tensor:
    """The rendered silhouette cut like the target's masks: from the colour when they were cut from
    the background colour, else the rendered alpha."""
    if target.background is not None:
        return soft_foreground(color, background.to(color.dtype))
    return alpha


def _check_visible(sim: Simulation, renderer: SceneRenderer) -> None:
    with torch.no_grad():
        out = renderer.render(sim.state0.x, sim.state0.F)
    if float(out.alpha.sum()) < 1.0:
        raise InputError(f"{sim.scene.path}: the camera sees nothing of the objects in frame 0 (check eye/look_at/fov)")


def fit_appearance(sim: Simulation, renderer: SceneRenderer, target: Target, cfg: FitConfig, log: Callable[[str], None]) -> Appearance:
    """Colours and opacities of the Gaussians from frame 0, geometry fixed at the scene's rest state.

    Cloth is two-sided: both sides' colours are parameters, blended by how much each Gaussian faces
    the camera, so frame 0 fits the side it shows.  The side frame 0 does not show gets no
    information from the video; it takes the fitted colour of the shown side plus the scene's
    difference between the sides (``color_back - color``), so a cloth that later turns over shows
    a back that is as bright as the video's lighting made the front."""
    fg = target.masks[0, 0] > 0.5
    mean = target.frames[0][:, fg].mean(dim=1).clamp(0.02, 0.98).to(sim.dtype)
    g = renderer.num_gaussians
    color = torch.log(mean / (1 - mean)).expand(g, 3).clone().requires_grad_(True)
    back = color.detach().clone().requires_grad_(True)
    opacity = torch.full((g,), 2.0, dtype=sim.dtype, device=color.device).requires_grad_(True)
    opt = torch.optim.Adam([color, back, opacity], lr=cfg.appearance_lr * 10)
    with torch.no_grad():
        means, covs, normals = renderer.frame(sim.state0.x, sim.state0.F)
        w = renderer.front_weight(means, normals)[:, None]
    tgt, msk = target.frames[0:1].to(sim.dtype), target.masks[0:1].to(sim.dtype)
    from dreamcloth.render import rasterize

    for _ in range(cfg.appearance_steps):
        shown = torch.sigmoid(back) + w * (torch.sigmoid(color) - torch.sigmoid(back))
        out = rasterize(means, covs, shown, torch.sigmoid(opacity), renderer.camera, renderer.background, renderer.backend)
        sil = silhouette(out.color[None], out.alpha[None], target, renderer.background)
        loss = image_loss(out.color[None], sil, tgt, msk, cfg.w_dssim, cfg.w_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    log(f"appearance: frame-0 loss {float(loss.detach()):.4f} after {cfg.appearance_steps} steps")
    with torch.no_grad():
        front_shown = w >= 0.5
        fitted = torch.where(front_shown, torch.sigmoid(color), torch.sigmoid(back))
        offset = renderer.default_back_colors - renderer.default_colors  # scene: back - front
        hidden = (fitted + torch.where(front_shown, offset, -offset)).clamp(0.02, 0.98)
        front = torch.where(front_shown, fitted, hidden)
        back_side = torch.where(front_shown, hidden, fitted)
        logit = lambda c: torch.log(c / (1 - c))  # noqa: E731 - local shorthand
    return Appearance(logit(front.clamp(1e-6, 1 - 1e-6)), opacity.detach(), logit(back_side.clamp(1e-6, 1 - 1e-6)))


class FitProblem:
    """Everything one loss evaluation needs; ``loss(u, horizon)`` is differentiable in ``u`` (and v0)."""

    def __init__(self, sim: Simulation, renderer: SceneRenderer, target: Target, space: ParamSpace, cfg: FitConfig,
                 appearance: Appearance, prior=None):
        self.sim, self.renderer, self.target, self.space, self.cfg = sim, renderer, target, space, cfg
        self.appearance = appearance
        self.prior = prior
        self.v0 = torch.zeros(3, dtype=sim.dtype, device=sim.device)
        self.pool = None  # a rollouts.LossPool: forward losses side by side in worker processes

    def forward_losses(self, us: list[torch.Tensor], horizon: int | None = None) -> list:
        """The forward losses at ``us`` over ``horizon`` frames (default: every frame), each a float
        or the SimulationError its rollout raised; in the rollout workers when there are some and
        the loss has no video prior (``rollouts``), else one after another here."""
        h = horizon or self.target.frames.shape[0]
        if self.pool is not None and self.prior is None:
            return self.pool.losses(self, us, h)
        return [self.loss_or_error(u, h) for u in us]

    def loss_or_error(self, u: torch.Tensor, horizon: int):
        """The forward loss at ``u`` in this process: a float, or the SimulationError it raised."""
        try:
            with torch.no_grad():
                return float(self.loss(u, horizon))
        except M.SimulationError as exc:
            return exc

    def with_substeps(self, substeps: int) -> None:
        self.sim.config = dataclasses.replace(self.sim.config, substeps_per_frame=substeps)

    def rollout(self, u: torch.Tensor, horizon: int, v0: torch.Tensor | None = None) -> M.Trajectory:
        sim = self.sim
        params = sim.params({k: v.to(sim.dtype) for k, v in self.space.values(u).items()})
        v = sim.state0.v + (self.v0 if v0 is None else v0).to(sim.dtype)
        state = M.State(sim.state0.x, v, sim.state0.C, sim.state0.F)
        return M.simulate(sim.model, state, params, sim.config, horizon, bounds=sim.bounds)

    def render(self, traj: M.Trajectory, frames) -> tuple[torch.Tensor, torch.Tensor]:
        colors, alphas = [], []
        c, o, b = self.appearance.colors(), self.appearance.opacities(), self.appearance.back_colors()
        for t in frames:
            out = self.renderer.render(traj.x[t], traj.F[t], c, o, back_colors=b)
            colors.append(out.color)
            alphas.append(out.alpha)
        return torch.stack(colors), torch.stack(alphas)

    def rendered_rollout(self, u: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rollout at ``u`` over ``frames`` frames rendered, forward only: colours clamped to
        [0, 1] (float32, CPU) and alphas (what fit.mp4 and the prediction show)."""
        with torch.no_grad():
            color, alpha = self.render(self.rollout(u, frames), range(frames))
        return color.clamp(0, 1).float().cpu(), alpha

    def loss(self, u: torch.Tensor, horizon: int, v0: torch.Tensor | None = None) -> torch.Tensor:
        traj = self.rollout(u, horizon, v0)
        frames = range(1, horizon)
        color, alpha = self.render(traj, frames)
        tgt = self.target.frames[1:horizon].to(color.dtype)
        msk = self.target.masks[1:horizon].to(color.dtype)
        sil = silhouette(color, alpha, self.target, self.renderer.background)
        loss = image_loss(color, sil, tgt, msk, self.cfg.w_dssim, self.cfg.w_mask)
        if self.prior is not None and self.cfg.w_sds > 0:
            loss = loss + self.cfg.w_sds * self.prior(color)
        return loss


def horizon_at(it: int, cfg: FitConfig, frames: int, iterations: int | None = None) -> int:
    """Frames used at iteration ``it``: ``horizon_start``, growing to every frame at ``horizon_full_at``
    of the (Adam) iterations (early frames pin the parameters down before long rollouts add local minima)."""
    full_at = max(1, int(round(cfg.horizon_full_at * (iterations or cfg.iterations))))
    h = cfg.horizon_start + (frames - cfg.horizon_start) * min(1.0, it / full_at)
    return int(min(frames, max(cfg.horizon_start, round(h))))


#: parameters that only take energy out of the motion, and the end of their range that takes none
DISSIPATIVE = {"damping": "high", "drag_coefficient": "low", "drag_tangential": "low"}
#: how far toward that end the low-dissipation start sits: sigmoid(3) = 0.953 of the range.  A cloth
#: over one or two seconds loses little of its motion; the cross-simulator sphere_soft video on grid
#: 64 (2026-12-04): 0.1516 there against 0.1973 for the best of the other starts, and the fit that
#: began at the latter ended at 0.2139 (Adam's steps cover ~2 units of u in 10 iterations)
LOW_DISSIPATION_U = 3.0


def probe_starts(problem: FitProblem, cfg: FitConfig) -> tuple[list[torch.Tensor], list[float]]:
    """Candidate starting points ranked by their loss over every frame (forward only), and those losses.

    The middle of the box first; then, when damping or drag is fitted, the middle with those near
    their no-dissipation end; then stratified points (one per stratum of every axis, a Latin
    hypercube with a fixed seed) in u in [-2, 2]."""
    p = problem.space.size
    gen = torch.Generator().manual_seed(cfg.seed)
    cands = [torch.zeros(p, dtype=torch.float64)]
    low = torch.zeros(p, dtype=torch.float64)
    for k, (_, name) in enumerate(problem.space.keys):
        if name in DISSIPATIVE:
            low[k] = LOW_DISSIPATION_U if DISSIPATIVE[name] == "high" else -LOW_DISSIPATION_U
    if cfg.starts > 1 and bool(low.any()):
        cands.append(low)
    m = cfg.starts - len(cands)
    if m > 0:
        strata = torch.stack([torch.randperm(m, generator=gen) for _ in range(p)], 1).double()
        pts = (strata + torch.rand(m, p, generator=gen, dtype=torch.float64)) / m
        cands += list(-2 + 4 * pts)
    scored = []
    for l, c in zip(problem.forward_losses(cands), cands):
        l = l if isinstance(l, float) and math.isfinite(l) else math.inf  # a SimulationError: inf
        scored.append((l, c))
    order = sorted(range(len(scored)), key=lambda i: (scored[i][0], i))
    return [scored[i][1] for i in order], [scored[i][0] for i in order]


def fit_velocity(problem: FitProblem, u: torch.Tensor, cfg: FitConfig, log) -> torch.Tensor:
    """A global initial velocity from the first frames, materials at ``u``."""
    v0 = torch.zeros(3, dtype=problem.sim.dtype, device=problem.sim.device, requires_grad=True)
    opt = torch.optim.Adam([v0], lr=cfg.velocity_lr)
    h = min(cfg.velocity_frames, problem.target.frames.shape[0])
    for _ in range(cfg.velocity_steps):
        loss = problem.loss(u, h, v0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    log(f"initial velocity: {[round(float(a), 4) for a in v0.detach()]} m/s (loss {float(loss.detach()):.4f})")
    return v0.detach()


@dataclasses.dataclass
class FitState:
    """Everything a checkpoint holds (enough to continue a fit exactly where it stopped)."""

    iteration: int
    u: torch.Tensor
    adam: dict
    candidates: list[torch.Tensor]
    candidate: int
    start_iteration: int
    start_loss: float | None
    best: dict | None
    history: list[dict]
    appearance: Appearance
    v0: torch.Tensor
    substeps: int
    events: list[str]
    converged: bool = False  # the polish stopped moving: later iterations would repeat the same loss

    @property
    def model(self) -> QuadraticModel | None:
        """The polish's last quadratic model (kept in its saved state), None before the polish."""
        return QuadraticModel.from_dict(self.adam.get("model")) if self.adam.get("polish") else None


def save_checkpoint(path: Path, st: FitState, meta: dict) -> None:
    """Atomic write: a killed process never leaves a half-written checkpoint."""
    data = dict(meta, version=CHECKPOINT_VERSION, state=dataclasses.asdict(st) | {
        "appearance": {"color_logits": st.appearance.color_logits, "opacity_logits": st.appearance.opacity_logits,
                       "back_color_logits": st.appearance.back_color_logits}})
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> tuple[FitState, dict]:
    if not path.is_file():
        raise InputError(f"--resume: no checkpoint at {path}")
    try:
        data = torch.load(path, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated, empty or foreign files fail in pickle, zipfile or torch
        raise InputError(f"{path} cannot be read as a fit checkpoint ({type(exc).__name__}: {exc}); "
                         "remove it to start the fit again") from None
    if not isinstance(data, dict) or "state" not in data:
        raise InputError(f"{path} is not a dreamcloth fit checkpoint; remove it to start the fit again")
    if data.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"{path}: checkpoint version {data.get('version')} is not {CHECKPOINT_VERSION}")
    s = data.pop("state")
    app = s.pop("appearance")
    st = FitState(**s, appearance=Appearance(app["color_logits"], app["opacity_logits"], app.get("back_color_logits")))
    return st, data


@dataclasses.dataclass
class FitResult:
    values: dict[tuple[int, str], float]
    initial: dict[tuple[int, str], float]
    loss: float
    history: list[dict]
    state: FitState
    problem: FitProblem


def run_fit(scene: Scene, target: Target, out: Path, cfg: FitConfig, dtype=torch.float32, device="cpu",
            resume: bool = False, prior=None, on_iteration: Callable[[dict], None] | None = None,
            log: Callable[[str], None] = print, stop_after: int | None = None, pool=None,
            on_inputs_checked: Callable[[], None] | None = None) -> FitResult:
    """The appearance, velocity and material stages, checkpointing every iteration into ``out``.

    ``on_inputs_checked``: called once the scene has built, the camera sees the objects and the
    scene has parameters to fit, before anything is written into ``out``.

    ``stop_after`` ends the material stage after that many iterations (as a crash would), leaving
    the checkpoint for ``resume``.  ``pool``: a ``rollouts.LossPool`` made for this scene, video
    and config, which runs the probes' and the polish's rollouts side by side (same values).
    """
    ckpt = out / "checkpoint.pt"
    sim = build(scene, dtype, device)
    # the video's frames and masks live where the simulator and the renderer do
    target = dataclasses.replace(target, frames=target.frames.to(sim.device), masks=target.masks.to(sim.device))
    renderer = SceneRenderer(sim)
    _check_visible(sim, renderer)
    space = ParamSpace(scene)
    if on_inputs_checked is not None:
        on_inputs_checked()
    out.mkdir(parents=True, exist_ok=True)
    frames = target.frames.shape[0]
    meta = {"scene": str(scene.path), "video_digest": target.digest, "config": dataclasses.asdict(cfg), "keys": space.keys}
    if resume:
        st, saved = load_checkpoint(ckpt)
        if saved["video_digest"] != target.digest:
            raise InputError(f"--resume: {ckpt} was made for another video")
        if [tuple(k) for k in saved["keys"]] != space.keys or saved["config"] != dataclasses.asdict(cfg):
            raise InputError(f"--resume: {ckpt} was made with other fit settings or parameters")
        problem = FitProblem(sim, renderer, target, space, cfg, st.appearance, prior)
        problem.pool = pool
        problem.with_substeps(st.substeps)
        problem.v0 = st.v0
        log(f"resuming at iteration {st.iteration} of {cfg.iterations}")
    else:
        appearance = fit_appearance(sim, renderer, target, cfg, log)
        problem = FitProblem(sim, renderer, target, space, cfg, appearance, prior)
        problem.pool = pool
        candidates, losses = probe_starts(problem, cfg)
        u0 = candidates[0]
        if cfg.fit_velocity:
            problem.v0 = fit_velocity(problem, u0, cfg, log)
        # the best start's full-horizon loss is the one to beat: Adam's first iterations see only
        # the first frames and may leave a good start (the cross-simulator sphere_soft on grid 64:
        # from 0.1516 at the start to 0.1577 at Adam's first full-horizon iterate)
        best = {"loss": losses[0], "u": u0.clone()} if (prior is None and not cfg.fit_velocity and math.isfinite(losses[0])) else None
        st = FitState(0, u0.clone(), {}, candidates, 0, 0, None, best, [], appearance, problem.v0, sim.config.substeps_per_frame, [])
        save_checkpoint(ckpt, st, meta)
    initial = {k: float(v) for k, v in space.values(st.candidates[0]).items()}

    u = st.u.clone().requires_grad_(True)
    # Adam for the horizon curriculum and the first descent, then the Newton polish (polish.py) until
    # it converges.  The bundled demo (2026-12-04, quiet): 10 Adam iterations and then L-BFGS took
    # 235 s (the polish 110 s, the identifiability analysis 22 s more); with the Newton polish, 13
    # iterations and 124 s (the polish 52 s, three models of 6-7 rollouts, whose last one the
    # identifiability analysis reuses); 6 Adam iterations and the polish took 145 s
    n_polish = cfg.polish_iterations if cfg.polish_iterations is not None else cfg.iterations - cfg.iterations // 3
    adam_iterations = cfg.iterations - n_polish

    box = space.natural_box()

    def make_optimizer(polish: bool):
        if polish:
            # Newton polish at the full horizon on a model of the loss at the 2% scale (polish.py):
            # near the optimum Adam's normalised, decaying steps crawl along shallow valleys
            return ModelPolish(*box)
        return torch.optim.Adam([u], lr=cfg.lr)

    opt = make_optimizer(st.iteration >= adam_iterations)
    # the saved state is Adam's when the fit stopped right before the polish: the polish then starts
    # afresh (and is seeded below), as it does in a fit that was not interrupted
    fresh_polish = isinstance(opt, ModelPolish)
    if st.adam and isinstance(opt, ModelPolish) == bool(st.adam.get("polish")):
        opt.load_state_dict(st.adam)
        fresh_polish = False

    def set_lr(it):
        frac = cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * it / max(adam_iterations - 1, 1)))
        for g in opt.param_groups:
            g["lr"] = cfg.lr * frac

    class _NonFinite(Exception):
        pass

    speculate = None
    if pool is not None and prior is None:
        def speculate(z):
            # while a worker tries the polish's step (not this process, whose threads would share the
            # cores with it: a trial took 57 s here against 22), another renders the report's rollout
            # at the step's start, where the fit ends if the step fails (rollouts.LossPool.speculate)
            pool.speculate(problem, space.from_natural(z))

    t0 = time.perf_counter()
    while st.iteration < cfg.iterations and not st.converged:
        if stop_after is not None and st.iteration >= stop_after:
            break
        polish = st.iteration >= adam_iterations
        if polish and not isinstance(opt, ModelPolish):
            opt = make_optimizer(True)
            fresh_polish = True
        if polish and fresh_polish:
            fresh_polish = False
            if st.best is not None and prior is None:
                # from the lowest full-horizon loss Adam measured (its last step may have gone up)
                with torch.no_grad():
                    u.copy_(st.best["u"])
                opt.f = st.best["loss"]
        local = st.iteration - st.start_iteration
        h = frames if polish else horizon_at(st.iteration, cfg, frames, adam_iterations)
        if not polish:
            set_lr(st.iteration)

        step = None

        def closure():
            opt.zero_grad()
            l = problem.loss(u, h)
            l.backward()
            if not (torch.isfinite(l) and torch.isfinite(u.grad).all()):
                raise _NonFinite("a non-finite loss or gradient")
            return l

        for attempt in range(cfg.max_dt_halvings + 1):
            try:
                start = u.detach().clone()
                if polish:
                    with without_prior(problem):
                        step = opt.step(space.natural(u.detach()), lambda z: natural_losses(problem, [z])[0],
                                        lambda zs: natural_losses(problem, zs), speculate)
                    with torch.no_grad():
                        u.copy_(space.from_natural(step.z))
                    u.grad = None
                    loss = torch.tensor(step.loss, dtype=torch.float64)
                else:
                    loss = closure()
                    opt.step()
                break
            except (M.SimulationError, _NonFinite, NonFiniteLoss) as exc:
                why = str(exc)
                with torch.no_grad():
                    u.copy_(start)
                if polish:
                    opt = make_optimizer(True)  # its history was built with the other dt
            if attempt == cfg.max_dt_halvings:
                raise RunFailedError(f"iteration {st.iteration}: {why}; still failing after halving dt {cfg.max_dt_halvings} times")
            st.substeps *= 2
            problem.with_substeps(st.substeps)
            if st.best is not None:
                # the loss to beat was measured with the other dt: measure it again with this one
                try:
                    st.best["loss"] = forward_loss(problem, st.best["u"]) if prior is None else math.inf
                except M.SimulationError:
                    st.best["loss"] = math.inf
            msg = f"iteration {st.iteration}: {why}; halving dt ({st.substeps} substeps per frame) and retrying"
            st.events.append(msg)
            log(msg)
        with torch.no_grad():
            clamped = u.clamp(-12.0, 12.0)  # sigmoid saturates beyond: the value sits at the range's edge
            if polish and not torch.equal(clamped, u):
                opt.f = None  # its loss was for the point before the clamp
            u.copy_(clamped)
        lv = float(loss.detach())
        vals = {k: float(v) for k, v in space.values(u.detach()).items()}
        rec = {"iteration": st.iteration, "loss": lv, "horizon": h, "candidate": st.candidate,
               "optimizer": "newton" if polish else "adam", "evaluations": step.evaluations if polish else 1,  # rollouts
               "values": {f"{i}:{p}": v for (i, p), v in vals.items()}, "seconds": time.perf_counter() - t0}
        st.history.append(rec)
        if polish:
            # the result: the polish's point (where its accepted steps led).  Not the lowest loss it
            # evaluated: that is often a point of a model's stencil, lower by the loss's wiggle
            # (the demo: damping 0.2921 against the polish's 0.2983, the truth 0.3)
            st.best = {"loss": step.loss, "u": u.detach().clone()}
        elif h == frames and (prior is not None or st.best is None or lv < st.best["loss"]):
            # the result: the iterate with the lowest full-horizon loss (with a video prior, whose
            # term is drawn afresh at every call, the last one)
            st.best = {"loss": lv, "u": start}
        # the fit stops where the model's minimum is where the step began (to its resolution), or the
        # step lowers the loss by less than the rollout's round-off, or it stays inside the model's
        # stencil (the model there is as good as a new one: its Hessian serves the identifiability
        # analysis).  The last case, a step that still gains but stays inside the stencil, is how a
        # wiggle of the loss holds the model: a model at a coarser scale checks it first.  (Not where
        # the model sees no descent at all: on the 41x41 real-fabric predict that check cost 13
        # rollouts for a 0.2% gain, and each further polish iteration ~2-5 min.)
        gained = polish and not step.converged and step.gain >= POLISH_RTOL * abs(step.loss)
        stalled = polish and (not gained or step.length <= REL_STEP)
        if gained and stalled:
            stalled = not _coarse_progress(problem, space, opt, u, st, rec, log)
        if stalled:
            st.converged = True
            msg = f"iteration {st.iteration}: the polish made no further progress; the fit has converged"
            st.events.append(msg)
            log(msg)
        # multi-start: a start whose first iterations neither lower the loss nor see a gradient is
        # stuck on a plateau (e.g. a range edge where nothing changes): take the next candidate
        gnorm = float(u.grad.norm()) if u.grad is not None else 0.0
        if local == 0:
            st.start_loss = lv
        elif (not polish and local + 1 == cfg.stall_iterations and st.candidate + 1 < len(st.candidates)
              and lv > (1 - cfg.stall_improvement) * st.start_loss and gnorm < 1e-6 * max(lv, 1e-12)):
            st.candidate += 1
            st.start_iteration = st.iteration + 1
            msg = f"iteration {st.iteration}: loss stalled at {lv:.4f}; restarting from starting point {st.candidate + 1}"
            st.events.append(msg)
            log(msg)
            with torch.no_grad():
                u.copy_(st.candidates[st.candidate])
            opt = make_optimizer(False)
        st.iteration += 1
        st.u = u.detach().clone()
        st.adam = opt.state_dict()
        save_checkpoint(ckpt, st, meta)
        if on_iteration is not None:
            on_iteration(rec)
    final_u = st.best["u"] if st.best is not None else st.u
    values = {k: float(v) for k, v in space.values(final_u).items()}
    if not all(math.isfinite(v) for v in values.values()):  # never reached: u is finite by construction
        raise RunFailedError("the fit produced a non-finite parameter; nothing written")
    final_loss = st.best["loss"] if st.best is not None else (st.history[-1]["loss"] if st.history else math.nan)
    return FitResult(values, initial, final_loss, st.history, st, problem)


def _coarse_progress(problem: FitProblem, space, opt: ModelPolish, u: torch.Tensor, st, rec: dict, log) -> bool:
    """Where the polish stalls: one step on a model ``polish.COARSE_FACTOR`` times wider
    (``ModelPolish.coarse_check``).  True (and ``u``, the result and this iteration's record moved
    there) when it lowers the loss by more than round-off, beyond the fine stencil."""
    # the loss this iteration ended at (not ``opt.f``: None when the step's point was clamped to the
    # box of sigmoid's range, which crashed the cross-simulator swing's resumed fit with a TypeError)
    before = rec["loss"]
    try:
        with without_prior(problem):
            step, taken = opt.coarse_check(space.natural(u.detach()), lambda z: natural_losses(problem, [z])[0],
                                           lambda zs: natural_losses(problem, zs), POLISH_RTOL)
    except (M.SimulationError, NonFiniteLoss) as exc:
        log(f"iteration {st.iteration}: the coarse check failed ({exc}); keeping the polish's point")
        return False
    rec["evaluations"] += step.evaluations
    if not taken:
        return False
    with torch.no_grad():
        u.copy_(space.from_natural(step.z))
    st.best = {"loss": step.loss, "u": u.detach().clone()}
    rec["loss"] = step.loss
    rec["values"] = {f"{i}:{p}": float(v) for (i, p), v in space.values(u.detach()).items()}
    msg = (f"iteration {st.iteration}: the polish stalled at loss {before:.5g}; a model at {COARSE_FACTOR:g}x its "
           f"scale lowered it to {step.loss:.5g}; going on")
    st.events.append(msg)
    log(msg)
    return True


# ------------------------------------------------------------------------------------------------
# identifiability


@contextlib.contextmanager
def without_prior(problem: FitProblem):
    """The problem without its video prior: the prior's score-distillation value is a surrogate that
    draws new noise at every call (and drawing it would move the prior's step counter), so the
    polish and the identifiability analysis, which compare loss values, leave it out."""
    prior, problem.prior = getattr(problem, "prior", None), None
    try:
        yield problem
    finally:
        problem.prior = prior


def forward_loss(problem: FitProblem, u: torch.Tensor) -> float:
    """The full-horizon loss at ``u``, forward only."""
    with torch.no_grad():
        return float(problem.loss(u, problem.target.frames.shape[0]))


def natural_losses(problem: FitProblem, zs: list[torch.Tensor]) -> list[float]:
    """The full-horizon forward losses at natural coordinates ``zs`` (in the rollout workers when
    there are some); the first SimulationError is raised."""
    values = problem.forward_losses([problem.space.from_natural(z) for z in zs])
    for v in values:
        if isinstance(v, Exception):
            raise v
    return values


def identifiability(problem: FitProblem, u: torch.Tensor, names: list[str], rel_step: float = REL_STEP,
                    model: QuadraticModel | None = None) -> dict:
    """Curvature of the full-horizon loss in natural coordinates (log value for stiffnesses and
    densities, value / range width otherwise), from second differences of the loss itself at steps
    of ``rel_step`` (2%: the resolution a fitted value is read at).

    Not from differences of exact gradients: a rollout with contact has a loss that is smooth at
    the 2% scale but wiggles below it, and its exact gradient follows the wiggles.  Measured on the
    accuracy suite's small drape: the loss at log young_modulus shifts of -2%, 0, +2% is 0.14992,
    0.14912, 0.14949 (curvature +2.9), while the exact gradients at -2% and +2% had the same sign
    (curvature -0.50, "not identifiable").  Cost: 1 + 2p + p(p - 1) forward rollouts, no backward
    (the polish's model, :func:`polish.build_model`; shifted inward at the box's edges).  A video
    prior, if the fit has one, is left out: its value is a surrogate with fresh noise per call.

    For each parameter: ``independence`` = (1 / [H^-1]_ii) / H_ii in [0, 1]: near 1 it is
    determined on its own; near 0 only in combination with others (its curvature comes from
    correlations).  The eigenvector of the smallest eigenvalue names the combination the video
    does not determine.

    ``model``: the polish's last quadratic model; used when its stencil is centred within one step
    of this point (its Hessian is then this one's to the stencil's resolution), which saves the
    rollouts.
    """
    space = problem.space
    z0 = space.natural(u).detach().to(torch.float64)
    if model is not None and model.step == rel_step and float((model.center - z0).abs().max()) <= model.step:
        H = model.H  # the polish's last model: the same stencil, around (within one step of) this point
    else:
        lo, hi = space.natural_box()
        with without_prior(problem):
            many = (lambda zs: natural_losses(problem, zs)) if getattr(problem, "pool", None) is not None else None
            H = build_model(lambda z: forward_loss(problem, space.from_natural(z)), z0, lo, hi, rel_step, many=many).H
    evals, evecs = torch.linalg.eigh(H)
    report = {"hessian": H.tolist(), "eigenvalues": evals.tolist(), "parameters": {}}
    positive = evals.max() > 0
    # [H^-1]_ii from the eigenpairs; a direction of zero or negative curvature makes it infinite for
    # every parameter it involves (a pseudo-inverse would drop it and call a valley "independent")
    flat = evals <= 1e-9 * evals.max().clamp_min(0)
    for i, n in enumerate(names):
        hii = float(H[i, i])
        w = evecs[i] ** 2
        inv_ii = math.inf if bool((flat & (w > 1e-12)).any()) else float((w[~flat] / evals[~flat]).sum())
        marg = 1.0 / inv_ii if 0 < inv_ii < math.inf else 0.0
        indep = max(0.0, min(1.0, marg / hii)) if hii > 0 else 0.0
        report["parameters"][n] = {"curvature": hii, "independence": indep, "identifiable": bool(hii > 0 and indep > 0.05)}
    if space.size > 1 and positive:
        ratio = float(evals[0] / evals[-1])
        v = evecs[:, 0]
        v = v / v.abs().max()
        report["sloppiest"] = {"eigenvalue_ratio": ratio, "direction": {n: float(a) for n, a in zip(names, v)}}
    return report


def physics_notes(scene: Scene, space: ParamSpace) -> list[str]:
    """What dimensional analysis says the video cannot tell apart, whatever the optimiser found."""
    notes = []
    for i, o in enumerate(scene.objects):
        fitted = {p for j, p in space.keys if j == i}
        # gravity and inertia scale with density; elastic, bending and air-drag forces with the
        # stiffnesses and the drag coefficient (air's density is fixed, so C_d plays a stiffness's part)
        stiff = fitted & {"young_modulus", "shear_stiffness", "normal_stiffness", "bending_stiffness", "drag_coefficient"}
        if "density" in fitted and stiff:
            notes.append(
                f"{o.name}: under gravity every force on the object scales with either its density or with "
                f"{', '.join(sorted(stiff))}, so multiplying density and these by one factor gives the same "
                "motion: only their ratios are determined by the video, not density itself."
            )
    return notes
