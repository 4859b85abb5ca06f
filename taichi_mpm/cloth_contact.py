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

Smoothness.  Continuity is not enough for a fit.  A resting vertex sits exactly on the corner of
min(depth / dt, -v_n) (depth = -v_n dt), so round-off picks the branch, and the two branches have
different derivatives; Coulomb's switch max(1 - mu dv / |v_t|, 0) has the same kind of corner between
sticking and sliding.  With hundreds of vertices on the collider the rolled-out loss was full of
kinks: on the bundled demo (FLIP 0.95, float64) the exact gradient of the fit loss in log
young_modulus was 0.0114 at the truth and 0.0496 a shift of 1e-5 away, and float32 landed on either
branch.  Both corners are therefore rounded (C1, exact outside the band): the min over
(1 - NORMAL_BAND) < depth / (dt |v_n|) < 1 + NORMAL_BAND, the stick/slip ramp over
|1 - mu dv / |v_t|| < FRICTION_BAND, both by parabolas (cf. the mollified static friction of IPC,
Li et al. 2020, section 5, which rounds the same switch over a velocity band).  The bands are
relative, so they mean the same at any dt.  After the rounding, the same gradient was 0.0708 at
the truth, 0.0708 at 1e-5 and 0.0704 at 1e-4 (float64), and float32 agreed within 0.5%.

Why the normal band is wide.  A resting vertex's depth is about g dt^2 (2.7e-6 m on the demo), while
float32 positions near 0.5 m are good to 3e-8 m: depth / (dt |v_n|) carries ~1% of noise, and
inside a narrow band the slope of the rounded min follows that noise.  With NORMAL_BAND 0.1 the
float32 gradient at one point of the demo's fit was (0.166, -0.017) against float64's (-0.022,
0.045); with 0.5, (-0.003, 0.027) against (0.004, 0.026).  Friction's band does not see that noise
(a sticking vertex's 1 - mu dv / |v_t| is far below zero) and stays at 0.1.

What it costs: within the band a vertex keeps up to NORMAL_BAND / 4 of its inward speed (12%: it
lands deeper by that times dt, about 1e-7 m on the demo, and the next substep's push takes it out)
and up to FRICTION_BAND / 4 of its tangential speed at the switch from sticking to sliding.

Solids keep grid contact only; a scene that mixes solids and cloth keeps grid contact for all (the
grid is shared, and a shrunk collider would let the solid sink 1.5 cells).  A mesh collider, whose
signed distance lives on grid nodes, stays grid-only.

Gradient.  The map is piecewise smooth like the friction return mapping: a vertex outside every
collider passes through unchanged; a vertex inside is differentiated exactly (position, velocity
and the collider's friction).  The engine runs the Taichi kernels of :func:`vertex_kernels` (one
launch forward, one backward, with a hand-written adjoint that replays the projection from the
pre-contact state kept in the substep's tape, like the strain limit's).  The torch functions below
(:func:`contact`, differentiated by autograd) are the reference the kernels are tested against:
in the engine they cost ~35 small torch operations per collider and substep, and their autograd
replay ~70 more, 15% of the bundled demo's fit (profiled 2026-12-03: 45 of 285 s).
"""

import functools

import taichi as ti
import torch

from . import runtime
from .kernels import _collider_frame
from .layout import ARR, INT, VEC, V, X, put3, vec3

#: colliders that get vertex contact (the mesh collider's distance is sampled on grid nodes only)
ANALYTIC = ("plane", "sphere", "box")
#: how far (in cells) the grid sees each analytic collider shrunk when vertex contact is on: the
#: reach of a quadratic B-spline stencil.  Measured on ``tilted_ground`` (grid 24, forward, a
#: 300 N/m cloth): the cloth rests on the ground with 1.0 or 1.5; with 1.0 its nodes still touch
#: the collider before the vertices do.
GRID_SHRINK_CELLS = 1.5
#: relative width of the rounded corner of min(depth / dt, inward speed) in the normal response,
#: and of the rounded corner of Coulomb's stick/slip switch max(1 - mu dv / |v_t|, 0): see
#: "Smoothness" in the module docstring
NORMAL_BAND = 0.5
FRICTION_BAND = 0.1


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


def _soft_ramp(r: torch.Tensor, band: float) -> torch.Tensor:
    """max(r, 0) with its corner rounded over ``|r| < band`` by a parabola: C1, exact outside."""
    return torch.where(r >= band, r, torch.where(r > -band, (r + band) ** 2 / (4.0 * band), torch.zeros_like(r)))


def normal_loss(a: torch.Tensor, b: torch.Tensor, band: float) -> torch.Tensor:
    """max(0, min(a, b)) for ``a >= 0`` with the corner of the min rounded over
    ``(1 - band) b < a < (1 + band) b``, where it is a - (a - (1 - band) b)^2 / (4 band b): C1, exact
    outside the band, and scale-free (the band is relative, so it means the same at any dt)."""
    lo = a <= (1.0 - band) * b
    hi = a >= (1.0 + band) * b
    bs = torch.where(lo | hi, torch.ones_like(b), b)  # > 0 inside the band; the safe divisor elsewhere
    w = a - (1.0 - band) * bs
    return torch.where(lo, a, torch.where(hi, torch.clamp_min(b, 0.0), a - w * w / (4.0 * band * bs)))


def impulse(v: torch.Tensor, n: torch.Tensor, depth: torch.Tensor, vc: torch.Tensor, mu: torch.Tensor, dt: float) -> torch.Tensor:
    """Velocity after the contact impulse of a vertex found ``depth [V, 1]`` deep in a collider moving
    at ``vc`` (see the module docstring): the normal part loses ``max(0, min(depth / dt, -v_n))``
    and the tangential part ``mu`` times that, down to zero, both corners rounded (``NORMAL_BAND``,
    ``FRICTION_BAND``).  Identity where ``depth`` is 0."""
    vrel = v - vc
    vn = (vrel * n).sum(-1, keepdim=True)
    dv = normal_loss(depth / dt, -vn, NORMAL_BAND)
    vt = vrel - vn * n
    vt_norm = vt.norm(dim=-1, keepdim=True)
    # vt = 0 where vt_norm = 0; the safe divisor keeps the discarded derivative finite
    keep_t = _soft_ramp(1.0 - mu * dv / _safe(vt_norm), FRICTION_BAND)
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
            time: float, dt: float, free: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertex positions and velocities ``[V, 3]`` after contact with each analytic collider in turn.

    ``rows [C, 18]`` are the colliders' true geometry (not the grid's shrunk one), ``friction [C]``
    their friction coefficients, ``time`` the end of the substep (where ``x`` is), ``dt`` the
    substep, ``free [V]`` bool (pinned vertices never move), ``box`` the (lo, hi) corners that keep
    every stencil inside the grid.  Continuous and piecewise smooth in ``x``, ``v`` and
    ``friction``, differentiated by autograd.  The engine runs :func:`vertex_kernels` instead."""
    keep = free[:, None].to(x.dtype)
    for c, kind in enumerate(kinds):
        if kind in ANALYTIC:
            depth, n = _depth(kind, rows[c], x, keep, time)
            x, v = _push(x, v, n, depth, rows[c], friction[c], dt)
    return torch.maximum(torch.minimum(x, box[1]), box[0]), v


# --------------------------------------------------------------------------------------------
# The engine's kernels: the same map as ``contact``, one launch each way


@ti.func
def _normal_loss(a, b):
    """:func:`normal_loss` and its partial derivatives in ``a`` and ``b``."""
    band = ti.static(NORMAL_BAND)
    dv, da, db = a, 1.0, 0.0
    if a >= (1.0 + band) * b:
        dv, da, db = ti.max(b, 0.0), 0.0, 0.0
        if b > 0:
            db = 1.0
    elif a > (1.0 - band) * b:
        w = a - (1.0 - band) * b
        q = w / (4.0 * band * b)
        dv, da, db = a - w * q, 1.0 - 2.0 * q, 2.0 * (1.0 - band) * q + q * q * 4.0 * band
    return dv, da, db


@ti.func
def _soft_ramp_k(r):
    """:func:`_soft_ramp` with ``FRICTION_BAND`` and its derivative."""
    band = ti.static(FRICTION_BAND)
    y, dy = r, 1.0
    if r <= -band:
        y, dy = 0.0, 0.0
    elif r < band:
        y, dy = (r + band) * (r + band) / (4.0 * band), (r + band) / (2.0 * band)
    return y, dy


@ti.func
def _impulse(v, n, depth, vc, mu, dt):
    """:func:`impulse` for one vertex inside a collider (``depth > 0``)."""
    vrel = v - vc
    vn = vrel.dot(n)
    dv, _da, _db = _normal_loss(depth / dt, -vn)
    vt = vrel - vn * n
    t = vt.norm()
    keep = 0.0
    if t > 0:
        keep, _dk = _soft_ramp_k(1.0 - mu * dv / t)
    return vc + keep * vt + (vn + dv) * n


@ti.func
def _impulse_adjoint(v, n, depth, vc, mu, dt, gv):
    """(d v' / d v)^T gv, (d v' / d n)^T gv, d v' / d depth . gv and d v' / d mu . gv of ``_impulse``.

    v' = vc + keep vt + (vn + dv) n with vt = vrel - vn n, keep = ramp(1 - mu dv / |vt|) and
    dv = normal_loss(depth / dt, -vn), vn = vrel . n, vrel = v - vc: each line below reverses one."""
    vrel = v - vc
    vn = vrel.dot(n)
    dv, da, db = _normal_loss(depth / dt, -vn)
    vt = vrel - vn * n
    t = vt.norm()
    keep = 0.0
    g_keep = gv.dot(vt)
    g_t = 0.0
    g_mu = 0.0
    g_dv = gv.dot(n)
    g_vn = gv.dot(n)
    g_n = (vn + dv) * gv
    if t > 0:
        dk = 0.0
        keep, dk = _soft_ramp_k(1.0 - mu * dv / t)
        g_r = g_keep * dk
        g_mu = -g_r * dv / t
        g_dv += -g_r * mu / t
        g_t = g_r * mu * dv / (t * t)
    g_vt = keep * gv
    if t > 0:
        g_vt += g_t * vt / t
    g_vrel = g_vt
    g_vn -= g_vt.dot(n)
    g_n -= vn * g_vt
    g_depth = g_dv * da / dt
    g_vn -= g_dv * db
    g_vrel += g_vn * n
    g_n += g_vn * vrel
    return g_vrel, g_n, g_depth, g_mu


@functools.lru_cache(maxsize=None)
def vertex_kernels(kinds: tuple):
    """The vertex contact and its adjoint for a tuple of collider kinds (compile-time; colliders that
    are not ``ANALYTIC`` are skipped, as in :func:`contact`)."""
    n_coll = len(kinds)
    acting = tuple(c for c, k in enumerate(kinds) if k in ANALYTIC)

    @ti.func
    def _apply(x0, v0, coll: ti.template(), friction: ti.template(), time, dt, upto: ti.template()):
        """Position and velocity after the analytic colliders ``c < upto`` in turn, and how many acted."""
        x = x0
        v = v0
        hit = 0
        I = ti.Vector([0, 0, 0])
        for c in ti.static(acting):
            if ti.static(c < upto):
                phi, n, vc = _collider_frame(kinds[c], coll, c, x, time, I, coll)
                if phi < 0:
                    hit += 1
                    v = _impulse(v, n, -phi, vc, friction[c], dt)
                    x = x - phi * n
        return x, v, hit

    @ti.kernel
    def vertex_contact(S: ARR, start: int, free: VEC, coll: ARR, friction: VEC, time: float, dt: float, lo_x: float,
                       lo_y: float, lo_z: float, hi_x: float, hi_y: float, hi_z: float, pre: ARR, touched: INT,
                       serial: ti.template()):
        """Rows ``start .. start + len(free)`` of the packed state ``S`` in place (x and v), where
        ``free`` is non-zero; their positions and velocities before go to ``pre [rows, 6]`` and the
        number of rows that a collider moved is added to ``touched[0]``.  A moved row is then kept
        inside the box ``[lo, hi]`` (the particles' clamp, see ``kernels.g2p``)."""
        lo = ti.Vector([lo_x, lo_y, lo_z])
        hi = ti.Vector([hi_x, hi_y, hi_z])
        ti.loop_config(serialize=serial)
        for r in range(free.shape[0]):
            p = start + r
            x = vec3(S, p, X)
            v = vec3(S, p, V)
            put3(pre, r, 0, x)
            put3(pre, r, 3, v)
            if free[r] != 0:
                xc, vc, hit = _apply(x, v, coll, friction, time, dt, n_coll)
                if hit > 0:
                    put3(S, p, X, ti.min(ti.max(xc, lo), hi))
                    put3(S, p, V, vc)
                    ti.atomic_add(touched[0], 1)

    @ti.kernel
    def vertex_contact_adjoint(G: ARR, start: int, free: VEC, coll: ARR, friction: VEC, time: float, dt: float,
                               lo_x: float, lo_y: float, lo_z: float, hi_x: float, hi_y: float, hi_z: float, pre: ARR,
                               g_mu: ARR, serial: ti.template()):
        """Rows ``start ..`` of ``G`` (dL/dx, dL/dv after the contact) become dL/d(x, v) before it, in
        place; ``g_mu [rows, C]`` gets each row's dL/d friction_c (overwritten; summed by the caller,
        in a fixed order).  Each collider's input is replayed from ``pre`` (``n_coll`` is small)."""
        lo = ti.Vector([lo_x, lo_y, lo_z])
        hi = ti.Vector([hi_x, hi_y, hi_z])
        ti.loop_config(serialize=serial)
        for r in range(free.shape[0]):
            for c in ti.static(range(n_coll)):
                g_mu[r, c] = 0.0
            if free[r] != 0:
                p = start + r
                gx = vec3(G, p, X)
                gv = vec3(G, p, V)
                x0 = vec3(pre, r, 0)
                v0 = vec3(pre, r, 3)
                xf, vf, hit = _apply(x0, v0, coll, friction, time, dt, n_coll)
                if hit > 0:
                    for d in ti.static(range(3)):
                        if xf[d] < lo[d] or xf[d] > hi[d]:
                            gx[d] = 0.0
                    I = ti.Vector([0, 0, 0])
                    for cc in ti.static(range(len(acting))):
                        c = ti.static(acting[len(acting) - 1 - cc])
                        x, v, h = _apply(x0, v0, coll, friction, time, dt, c)
                        phi, n, vc = _collider_frame(kinds[c], coll, c, x, time, I, coll)
                        if phi < 0:
                            # x' = x + depth n, v' = impulse(v, n, depth); depth = -phi(x), d phi / dx = n
                            g_v, g_n, g_depth, gm = _impulse_adjoint(v, n, -phi, vc, friction[c], dt, gv)
                            g_depth += gx.dot(n)
                            g_n += -phi * gx
                            gx = gx - g_depth * n
                            if ti.static(kinds[c] == "sphere"):
                                # n = (x - centre) / |x - centre|: dn/dx = (I - n n^T) / |x - centre|
                                rad = coll[c, 3] + phi
                                if rad > 0:
                                    gx += (g_n - n.dot(g_n) * n) / rad
                            # plane and box (inside: the nearest face's normal): n does not move with x
                            gv = g_v
                            g_mu[r, c] = gm
                    put3(G, p, X, gx)
                    put3(G, p, V, gv)

    return vertex_contact, vertex_contact_adjoint


# --------------------------------------------------------------------------------------------
# The kernels for the grid-free solver (``mesh_cloth``): the same map as ``contact`` on ``[V, 3]``
# vertex tensors, as an autograd function.  Measured 2026-12-06 on the bundled demo's 12x12 drop
# (630 substeps, sphere and plane, one thread): ``contact`` took 0.45 s of the 2.9 s forward and
# its autograd replay a similar share of the backward; the kernels launch once each way.


class _VertexContact(torch.autograd.Function):
    """``contact``'s map by :func:`vertex_kernels` (arguments: see :func:`vertex_contact`)."""

    @staticmethod
    def forward(ctx, x, v, friction, kinds, rows, time, dt, free, box, serial):
        forward_kernel, _ = vertex_kernels(kinds)
        S = torch.cat([x, v], 1).contiguous()  # the packed state's X and V columns (layout: 0 and 3)
        pre = torch.empty_like(S)
        touched = torch.zeros(1, dtype=torch.int32, device=S.device)
        fr = friction.detach().contiguous()
        runtime.launch(forward_kernel, [S, 0, free, rows, fr, time, dt, *box, pre, touched, serial])
        hit = bool(touched[0])
        ctx.hit = hit
        ctx.args = (kinds, rows, time, dt, free, box, serial)
        ctx.save_for_backward(pre if hit else None, fr)
        return S[:, :3], S[:, 3:]

    @staticmethod
    def backward(ctx, gx, gv):
        pre, fr = ctx.saved_tensors
        if not ctx.hit:  # no vertex was inside a collider: the identity
            return gx, gv, None, None, None, None, None, None, None, None
        kinds, rows, time, dt, free, box, serial = ctx.args
        _, adjoint_kernel = vertex_kernels(kinds)
        G = torch.cat([gx, gv], 1).contiguous()
        g_mu = torch.empty(G.shape[0], len(kinds), dtype=G.dtype, device=G.device)
        runtime.launch(adjoint_kernel, [G, 0, free, rows, fr, time, dt, *box, pre, g_mu, serial])
        g_friction = g_mu.sum(0) if ctx.needs_input_grad[2] else None
        return G[:, :3], G[:, 3:], g_friction, None, None, None, None, None, None, None


def vertex_contact(x: torch.Tensor, v: torch.Tensor, kinds: tuple[str, ...], rows: torch.Tensor, friction: torch.Tensor,
                   time: float, dt: float, free: torch.Tensor, box: tuple[float, ...], serial: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`contact` (the same arguments, except: ``free [V]`` in x's dtype, 1 for a vertex that may
    move; ``box`` the six floats lo_x, lo_y, lo_z, hi_x, hi_y, hi_z) by the Taichi kernels, one launch
    forward and one backward, for tensors that Taichi's running arch and precision take
    (``runtime.ensure``).  Differentiable in ``x``, ``v`` and ``friction``.  As in :func:`contact`
    every position ends inside the box (the kernel clamps the vertices a collider moved; the others
    are clamped here)."""
    x, v = _VertexContact.apply(x, v, friction, tuple(kinds), rows, float(time), float(dt), free, tuple(box), serial)
    lo, hi = x.new_tensor(box[:3]), x.new_tensor(box[3:])
    return torch.maximum(torch.minimum(x, hi), lo), v
