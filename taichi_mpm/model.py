"""Static data (``Model``), time-varying data (``State``) and differentiable material values (``Params``)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from .cloth import ClothGroup
from .colliders import Collider

MATERIAL_MODELS = ("neo_hookean", "fixed_corotated")


@dataclasses.dataclass(frozen=True)
class MaterialGroup:
    """Particles ``[start, end)`` share a constitutive model (chosen at compile time)."""

    model: str
    start: int
    end: int

    def __post_init__(self):
        if self.model not in MATERIAL_MODELS:
            raise ValueError(f"unknown material model {self.model!r}; choose from {', '.join(MATERIAL_MODELS)}")
        if not 0 <= self.start < self.end:
            raise ValueError(f"material group range [{self.start}, {self.end}) is empty or negative")


@dataclasses.dataclass(frozen=True)
class Model:
    """What does not change during a simulation.

    Particles are laid out object after object: solid groups, and for each cloth its vertex
    particles then its element particles.

    Attributes:
        volume: ``[N]`` rest measure in the stress: volume (m^3) of solid particles, rest area
            (m^2) of cloth element particles, lumped area of cloth vertices.
        mass_volume: ``[N]`` what the density multiplies to give each particle's mass: the volume
            of solid particles; for cloth, each triangle's area split between its element
            particle and (lumped) its vertices (``cloth.ELEMENT_MASS_FRACTION``).
        groups: solid material groups.
        cloth: cloth objects (see :class:`ClothGroup`).
        pinned: ``[N]`` int32, 1 where a particle's velocity is prescribed.
        pin_velocity: ``[N, 3]`` prescribed velocity of pinned particles (zero: fixed in place).
        colliders: analytic colliders applied to grid velocities.
    """

    volume: torch.Tensor
    mass_volume: torch.Tensor
    groups: tuple[MaterialGroup, ...]
    cloth: tuple[ClothGroup, ...]
    pinned: torch.Tensor
    pin_velocity: torch.Tensor
    colliders: tuple[Collider, ...] = ()

    @property
    def num_particles(self) -> int:
        return int(self.volume.shape[0])

    @staticmethod
    def create(
        volume: torch.Tensor,
        groups: Sequence[MaterialGroup] | str = "neo_hookean",
        pinned: torch.Tensor | None = None,
        pin_velocity: torch.Tensor | None = None,
        colliders: Sequence[Collider] = (),
        cloth: Sequence[ClothGroup] = (),
        mass_volume: torch.Tensor | None = None,
    ) -> "Model":
        """Build a model; ``groups`` may be one model name for all particles (no cloth then)."""
        n = int(volume.shape[0])
        if n == 0:
            raise ValueError("a model needs at least one particle")
        if isinstance(groups, str):
            groups = (MaterialGroup(groups, 0, n),)
        ranges = [(g.start, g.end, f"{g.model} group") for g in groups]
        for c in cloth:
            ranges.append((c.vertex_start, c.vertex_start + c.num_vertices, "cloth vertices"))
            ranges.append((c.element_start, c.element_start + c.num_elements, "cloth elements"))
        cursor = 0
        for start, end, what in sorted(ranges):
            if start != cursor:
                raise ValueError(f"particle ranges must tile [0, {n}) without gaps or overlaps; {what} starts at {start}, expected {cursor}")
            cursor = end
        if cursor != n:
            raise ValueError(f"particle ranges cover [0, {cursor}) but there are {n} particles")
        if not torch.all(volume > 0) or not bool(torch.isfinite(volume).all()):
            raise ValueError("particle volumes must be positive and finite")
        if mass_volume is None:
            mass_volume = volume
        if tuple(mass_volume.shape) != (n,) or not bool((mass_volume > 0).all()) or not bool(torch.isfinite(mass_volume).all()):
            raise ValueError(f"mass_volume must be {n} positive finite values (one per particle), got shape {tuple(mass_volume.shape)}")
        pinned = torch.zeros(n, dtype=torch.int32, device=volume.device) if pinned is None else pinned.to(torch.int32)
        if tuple(pinned.shape) != (n,):
            raise ValueError(f"pinned must be {n} flags (one per particle), got shape {tuple(pinned.shape)}")
        if pin_velocity is None:
            pin_velocity = torch.zeros(n, 3, dtype=volume.dtype, device=volume.device)
        pin_velocity = torch.as_tensor(pin_velocity, dtype=volume.dtype, device=volume.device)
        if pin_velocity.shape[-1:] != (3,) or pin_velocity.numel() not in (3, 3 * n) or not bool(torch.isfinite(pin_velocity).all()):
            raise ValueError(f"pin_velocity must be finite, [3] or [{n}, 3], got shape {tuple(pin_velocity.shape)}")
        pin_velocity = pin_velocity.expand(n, 3)
        return Model(
            volume.contiguous(), mass_volume.contiguous(), tuple(groups), tuple(cloth), pinned.contiguous(),
            pin_velocity.contiguous(), tuple(colliders),
        )


@dataclasses.dataclass
class State:
    """Particle state at one instant: positions ``x [N,3]``, velocities ``v [N,3]``, APIC affine
    matrices ``C [N,3,3]`` and deformation gradients ``F [N,3,3]``."""

    x: torch.Tensor
    v: torch.Tensor
    C: torch.Tensor
    F: torch.Tensor

    @staticmethod
    def at_rest(x: torch.Tensor, v: torch.Tensor | None = None, model: "Model | None" = None) -> "State":
        """Undeformed state (C = 0, F = I; cloth element particles get their rest frame and sit at
        their triangles' centroids when ``model`` is given) at ``x`` with velocity ``v`` ([3] or [N,3])."""
        n = x.shape[0]
        if v is None:
            v = torch.zeros_like(x)
        elif v.dim() == 1:
            v = v.expand(n, 3)
        C = torch.zeros(n, 3, 3, dtype=x.dtype, device=x.device)
        F = torch.eye(3, dtype=x.dtype, device=x.device).expand(n, 3, 3)
        if model is not None and model.cloth:
            F = F.clone()
            x = x.clone()
            for c in model.cloth:
                el = slice(c.element_start, c.element_start + c.num_elements)
                F[el] = c.rest_frame.to(x.dtype)
                x[el] = x[c.faces].reshape(-1, 3, 3).mean(1)
        return State(x, v, C, F)


@dataclasses.dataclass
class Params:
    """Differentiable material values.  Each may be a scalar tensor (shared) or ``[N]`` (per particle).

    Attributes:
        young_modulus: E in Pa (for cloth: the membrane stiffness, N/m).
        poisson_ratio: nu in [0, 0.5).
        density: kg/m^3 (for cloth: areal density, kg/m^2).
        damping: fraction of grid velocity kept per second of simulated time (applied per substep as
            ``damping ** dt``, so results do not depend on the substep count); 1 = undamped.
        friction: Coulomb friction coefficient of the colliders: a scalar for all of them or ``[C]``.
        shear_stiffness: cloth shear stiffness gamma (N/m); only cloth element particles read it.
        normal_stiffness: cloth normal (compression) stiffness k (N/m).
        cloth_friction: friction c_F of the cloth's return mapping; ``None`` uses ``friction``
            (which must then be a scalar).
        bending_stiffness: cloth bending rigidity B (N m), the Peirce/KES bending rigidity per unit
            width (see ``cloth_forces``); ``None`` or 0: no bending energy.
        drag_coefficient: cloth aerodynamic drag coefficient C_d (dimensionless) of each triangle's
            normal speed through still air (see ``cloth_forces``); ``None`` or 0: no drag.
        max_stretch: cloth strain limit, the largest principal stretch (>= 1) a triangle may reach
            (see ``strain_limit``); ``None`` or 0: no limit.
        drag_tangential: the share r in [0, 1] of ``drag_coefficient`` that acts on a triangle's
            speed along the sheet (see ``cloth_forces``); ``None`` or 0: drag along the normal only.
    """

    young_modulus: torch.Tensor
    poisson_ratio: torch.Tensor
    density: torch.Tensor
    damping: torch.Tensor
    friction: torch.Tensor
    shear_stiffness: torch.Tensor | None = None
    normal_stiffness: torch.Tensor | None = None
    cloth_friction: torch.Tensor | None = None
    bending_stiffness: torch.Tensor | None = None
    drag_coefficient: torch.Tensor | None = None
    max_stretch: torch.Tensor | None = None
    drag_tangential: torch.Tensor | None = None

    @staticmethod
    def create(young_modulus, poisson_ratio, density, damping=1.0, friction=0.5, shear_stiffness=None,
               normal_stiffness=None, cloth_friction=None, bending_stiffness=None, drag_coefficient=None,
               max_stretch=None, drag_tangential=None, dtype=torch.float32, device="cpu") -> "Params":
        """Tensors from numbers or tensors (tensors are kept as they are, so gradients reach them)."""

        def t(v):
            if v is None or isinstance(v, torch.Tensor):
                return v
            return torch.tensor(v, dtype=dtype, device=device)

        return Params(t(young_modulus), t(poisson_ratio), t(density), t(damping), t(friction), t(shear_stiffness),
                      t(normal_stiffness), t(cloth_friction), t(bending_stiffness), t(drag_coefficient), t(max_stretch),
                      t(drag_tangential))
