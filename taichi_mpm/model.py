"""Static data (``Model``), time-varying data (``State``) and differentiable material values (``Params``)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

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

    Attributes:
        volume: ``[N]`` rest volume of each particle (m^3).
        groups: material groups covering ``[0, N)`` without overlap.
        pinned: ``[N]`` int32, 1 where a particle's velocity is prescribed (``State``-independent).
        pin_velocity: ``[N, 3]`` prescribed velocity of pinned particles (zero: fixed in place).
        colliders: analytic colliders applied to grid velocities.
    """

    volume: torch.Tensor
    groups: tuple[MaterialGroup, ...]
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
    ) -> "Model":
        """Build a model; ``groups`` may be one model name for all particles."""
        n = int(volume.shape[0])
        if n == 0:
            raise ValueError("a model needs at least one particle")
        if isinstance(groups, str):
            groups = (MaterialGroup(groups, 0, n),)
        groups = tuple(sorted(groups, key=lambda g: g.start))
        cursor = 0
        for g in groups:
            if g.start != cursor:
                raise ValueError(f"material groups must tile [0, {n}) without gaps or overlaps; gap at {cursor}")
            cursor = g.end
        if cursor != n:
            raise ValueError(f"material groups cover [0, {cursor}) but there are {n} particles")
        if not torch.all(volume > 0):
            raise ValueError("particle volumes must be positive")
        pinned = torch.zeros(n, dtype=torch.int32, device=volume.device) if pinned is None else pinned.to(torch.int32)
        if pin_velocity is None:
            pin_velocity = torch.zeros(n, 3, dtype=volume.dtype, device=volume.device)
        return Model(volume.contiguous(), groups, pinned.contiguous(), pin_velocity.to(volume.dtype).contiguous(), tuple(colliders))


@dataclasses.dataclass
class State:
    """Particle state at one instant: positions ``x [N,3]``, velocities ``v [N,3]``, APIC affine
    matrices ``C [N,3,3]`` and deformation gradients ``F [N,3,3]``."""

    x: torch.Tensor
    v: torch.Tensor
    C: torch.Tensor
    F: torch.Tensor

    @staticmethod
    def at_rest(x: torch.Tensor, v: torch.Tensor | None = None) -> "State":
        """Undeformed state (F = I, C = 0) at positions ``x`` with velocity ``v`` ([3] or [N,3]; default 0)."""
        n = x.shape[0]
        if v is None:
            v = torch.zeros_like(x)
        elif v.dim() == 1:
            v = v.expand(n, 3)
        C = torch.zeros(n, 3, 3, dtype=x.dtype, device=x.device)
        F = torch.eye(3, dtype=x.dtype, device=x.device).expand(n, 3, 3)
        return State(x, v, C, F)


@dataclasses.dataclass
class Params:
    """Differentiable material values.  Each may be a scalar tensor (shared) or ``[N]`` (per particle).

    Attributes:
        young_modulus: E in Pa.
        poisson_ratio: nu in [0, 0.5).
        density: kg/m^3.
        damping: fraction of grid velocity kept per second of simulated time (applied per substep as
            ``damping ** dt``, so results do not depend on the substep count); 1 = undamped.
        friction: Coulomb friction coefficient of the colliders: a scalar for all of them or ``[C]``.
    """

    young_modulus: torch.Tensor
    poisson_ratio: torch.Tensor
    density: torch.Tensor
    damping: torch.Tensor
    friction: torch.Tensor

    @staticmethod
    def create(young_modulus, poisson_ratio, density, damping=1.0, friction=0.5, dtype=torch.float32, device="cpu") -> "Params":
        """Tensors from numbers or tensors (tensors are kept as they are, so gradients reach them)."""

        def t(v):
            return v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=dtype, device=device)

        return Params(t(young_modulus), t(poisson_ratio), t(density), t(damping), t(friction))
