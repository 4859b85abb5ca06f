"""Cloth-collider contact on the cloth's vertices (Lagrangian), not only on grid nodes.

Why.  MPM applies colliders to grid velocities: a node inside a collider loses its inward velocity,
and a particle takes the weighted mean of the 3x3x3 nodes around it.  A cloth vertex therefore
stops where enough of its stencil lies inside the collider, about one cell above the surface: on the
cross-simulator case ``tilted_ground`` (grid 24, a 42 mm cell) the cloth came to rest 36 mm above the
ground that Newton's cloth lay on (4 mm, its particle radius), and the gap, hence the drape over a
sphere, changed with the grid.  A solid's grid-scale contact layer is the usual price of MPM; a
cloth is thinner than a cell, and the layer is what a video shows.

What.  In a scene made only of cloth, every analytic collider (plane, sphere, box) acts twice:

- on the grid, shrunk by ``GRID_SHRINK_CELLS`` cells (a sphere's radius and a box's half-sizes
  less 1.5 dx, a plane moved 1.5 dx into its solid side): a quadratic B-spline stencil reaches 1.5
  cells, so no node of a vertex lying on the true surface is inside the shrunk collider; the grid
  contact remains as a backstop for anything that passes deeper;
- on the cloth's free vertices after every substep's grid-to-particle transfer (after the strain
  limit): a vertex at depth d = max(-phi, 0) moves to the surface (x += d n), and its inward
  normal velocity (relative to the collider) loses dv = max(0, min(d / dt, -v_n)): what took it
  below the surface within this substep, at most all of it.  Friction takes mu dv off the
  tangential speed, at most all of it (Coulomb's law for the impulse dv; Bridson, Fedkiw and
  Anderson 2002, section 7.2, for vertex-level cloth collisions and this friction rule).

Why not the grid's rule (remove the whole inward normal velocity of a vertex inside).  That rule
is discontinuous in the vertex position: a vertex 1 nm above the surface keeps its velocity, one
1 nm below loses it.  On grid nodes it does no harm (nodes do not move), but on vertices it made the
fitted loss jump with the parameters: the small drape of the accuracy suite fitted damping 15% off,
with a Hessian of negative curvature at the fit.  The impulse above is continuous (piecewise linear)
in the position, the velocity and the friction, and for a vertex resting on the surface (depth
-v_n dt each substep) it is the grid's rule: the inward velocity goes, the vertex stays.

Solids keep grid contact only; a scene that mixes solids and cloth keeps grid contact for all (the
grid is shared, and a shrunk collider would let the solid sink 1.5 cells).  A mesh collider, whose
signed distance lives on grid nodes, stays grid-only.

Gradient.  The map is piecewise smooth like the friction return mapping: a vertex outside every
collider passes through unchanged; a vertex inside is differentiated exactly by torch's autograd
(position, velocity and the collider's friction).  The engine's adjoint recomputes the projection
from the pre-contact state kept in the substep's tape, like the strain limit's.
"""

from __future__ import annotations

import torch

#: colliders that get vertex contact (the mesh collider's distance is sampled on grid nodes only)
ANALYTIC = ("plane", "sphere", "box")
#: how far (in cells) the grid sees each analytic collider shrunk when vertex contact is on: the
#: reach of a quadratic B-spline stencil.  Measured on ``tilted_ground`` (grid 24, forward, a
#: 300 N/m cloth): the cloth rests on the ground with 1.0 or 1.5; with 1.0 its nodes still touch
#: the collider before the vertices do.
GRID_SHRINK_CELLS = 1.5


def enabled(kinds: tuple[str, ...], num_solid_groups: int, num_cloths: int) -> bool:
    """Whether vertex contact is on: cloth and no solid in the scene, and an analytic collider."""
    return num_cloths > 0 and num_solid_groups == 0 and any(k in ANALYTIC for k in kinds)


def grid_rows(kinds: tuple[str, ...], rows: torch.Tensor, dx: float) -> torch.Tensor:
    """The collider rows ``[C, 18]`` the grid update sees: analytic colliders shrunk by
    ``GRID_SHRINK_CELLS`` cells (see the module docstring)."""
    out = rows.clone()
    d = GRID_SHRINK_CELLS * dx
    for c, kind in enumerate(kinds):
        if kind == "sphere":
            out[c, 3] = (rows[c, 3] - d).clamp_min(0.0)
        elif kind == "plane":
            out[c, 0:3] = rows[c, 0:3] - d * rows[c, 3:6]
        elif kind == "box":
            out[c, 3:6] = (rows[c, 3:6] - d).clamp_min(0.0)
    return out


def _safe(t: torch.Tensor) -> torch.Tensor:
    """``t`` where it is positive, else 1: a denominator whose derivative stays finite.  The other
    branch of a ``torch.where`` still gets a zero gradient, and 0 * inf (1 / clamp(t, 1e-30)^2 is inf
    in float32) would be NaN: a cloth falling straight onto the ground has zero tangential speed."""
    return torch.where(t > 0, t, torch.ones_like(t))


def signed_distance(kind: str, row: torch.Tensor, x: torch.Tensor, time: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed distance ``[V, 1]`` and outward unit normal ``[V, 3]`` of an analytic collider at
    points ``x [V, 3]`` (the grid kernel's ``_collider_frame`` in torch)."""
    vc = row[15:18]
    if kind == "plane":
        n = row[3:6].expand_as(x)
        return ((x - (row[0:3] + vc * time)) * n).sum(-1, keepdim=True), n
    if kind == "sphere":
        d = x - (row[0:3] + vc * time)
        r = d.norm(dim=-1, keepdim=True)
        return r - row[3], d / _safe(r)
    if kind == "box":
        R = row[6:15].reshape(3, 3)
        q = (x - (row[0:3] + vc * time)) @ R  # R^T (x - c), row-wise
        d = q.abs() - row[3:6]
        dmax = d.max(dim=-1, keepdim=True).values
        outside = d.clamp_min(0.0)
        on = outside.norm(dim=-1, keepdim=True)
        phi = on + dmax.clamp_max(0.0)
        sign = torch.where(q >= 0, 1.0, -1.0).to(x.dtype)
        n_out = outside * sign / _safe(on)
        # inside: the face of least penetration (first of ties, as in the grid kernel)
        face = torch.nn.functional.one_hot(d.argmax(dim=-1), 3).to(x.dtype) * sign
        nl = torch.where(dmax > 0, n_out, face)
        return phi, nl @ R.T
    raise ValueError(f"no vertex contact for collider kind {kind!r}")


def impulse(v: torch.Tensor, n: torch.Tensor, depth: torch.Tensor, vc: torch.Tensor, mu: torch.Tensor, dt: float) -> torch.Tensor:
    """Velocity after the contact impulse of a vertex found ``depth [V, 1]`` deep in a collider moving
    at ``vc`` (see the module docstring): the normal part loses ``max(0, min(depth / dt, -v_n))``
    and the tangential part ``mu`` times that, down to zero.  Identity where ``depth`` is 0."""
    vrel = v - vc
    vn = (vrel * n).sum(-1, keepdim=True)
    dv = torch.clamp_min(torch.minimum(depth / dt, -vn), 0.0)
    vt = vrel - vn * n
    vt_norm = vt.norm(dim=-1, keepdim=True)
    # vt = 0 where vt_norm = 0; the safe divisor keeps the discarded derivative finite
    keep_t = torch.clamp_min(1.0 - mu * dv / _safe(vt_norm), 0.0)
    # exactly v where the vertex is outside (the formula gives v there up to round-off)
    return torch.where(depth > 0, vc + keep_t * vt + (vn + dv) * n, v)


def _depth(kind: str, row: torch.Tensor, x: torch.Tensor, keep: torch.Tensor, time: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth ``[V, 1]`` inside one collider (0 outside, and where ``keep [V, 1]`` is 0) and its normal."""
    phi, n = signed_distance(kind, row, x, time)
    return torch.clamp_min(-phi, 0.0) * keep, n


def _push(x: torch.Tensor, v: torch.Tensor, n: torch.Tensor, depth: torch.Tensor, row: torch.Tensor, mu: torch.Tensor,
          dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices moved out of one collider and their velocities after its impulse."""
    return x + depth * n, impulse(v, n, depth, row[15:18], mu, dt)


def contact(x: torch.Tensor, v: torch.Tensor, kinds: tuple[str, ...], rows: torch.Tensor, friction: torch.Tensor,
            time: float, dt: float, free: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor],
            active: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertex positions and velocities ``[V, 3]`` after contact with each analytic collider in turn.

    ``rows [C, 18]`` are the colliders' true geometry (not the grid's shrunk one), ``friction [C]``
    their friction coefficients, ``time`` the end of the substep (where ``x`` is), ``dt`` the
    substep, ``free [V]`` bool (pinned vertices never move), ``box`` the (lo, hi) corners that keep
    every stencil inside the grid; ``active`` the colliders to apply (default: every analytic one;
    :func:`touch` says which matter).  Continuous and piecewise smooth in ``x``, ``v`` and
    ``friction``, differentiated by autograd."""
    keep = free[:, None].to(x.dtype)
    for c, kind in enumerate(kinds):
        if kind in ANALYTIC and (active is None or c in active):
            depth, n = _depth(kind, rows[c], x, keep, time)
            x, v = _push(x, v, n, depth, rows[c], friction[c], dt)
    return torch.maximum(torch.minimum(x, box[1]), box[0]), v


def touch(x: torch.Tensor, v: torch.Tensor, kinds: tuple[str, ...], rows: torch.Tensor, friction: torch.Tensor,
          time: float, dt: float, free: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor]
          ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """:func:`contact` that skips the colliders no free vertex is inside (where it is the identity,
    exactly), and says which it applied: ``(x, v, active)``, with ``contact(..., active=active)``
    the same map (the adjoint recomputes that).  ``active`` empty: nothing touches, ``x`` and ``v``
    are returned as given.  Costs one host sync per collider; saves its ~35 operations where it
    does not touch (a drape rarely reaches the ground under its sphere)."""
    keep = free[:, None].to(x.dtype)
    active = []
    for c, kind in enumerate(kinds):
        if kind not in ANALYTIC:
            continue
        depth, n = _depth(kind, rows[c], x, keep, time)
        if bool((depth > 0).any()):
            active.append(c)
            x, v = _push(x, v, n, depth, rows[c], friction[c], dt)
    if not active:
        return x, v, ()
    return torch.maximum(torch.minimum(x, box[1]), box[0]), v, tuple(active)
