"""The Taichi kernels of one MLS-MPM substep, and their adjoints.

A substep maps the particle state ``(x, v, C, F)`` to the next one:

1. ``CONSTITUTIVE[model]``  (per particle):  F' = (I + dt C) F,
   A = -dt V0 (4/dx^2) P(F') F'^T + m C   (the MLS-MPM affine momentum, Hu et al. 2018 eq. 29)
2. ``p2g_*``  (scatter):  mv_i += w_ip (m_p v_p + dt f_p + A_p (x_i - x_p)),  m_i += w_ip m_p
3. ``grid_kernels(kinds)`` (per node): v_i = damping^dt (mv_i / m_i + dt g), then colliders and walls
4. ``g2p``  (gather):  v_p = sum w v_i,  C_p = (4/dx^2) sum w v_i (x_i - x_p)^T,  x_p += dt v_p

Quadratic B-splines, APIC transfers (Jiang et al. 2015).

Data layout.  Every torch tensor handed to a kernel costs ~17-27 us of launch overhead here (a bare
launch ~16 us; a kernel with a parallel loop ~100 us more, on one thread or two), so particle data
travels packed: a state is one ``[N, 24]`` array (x, v, C
row-major, F row-major; offsets ``X, V, C, F`` below), the per-particle material one ``[N, 14]``
array (mu, lambda, rest volume, mass, external force, cloth stiffnesses), and the constitutive kernel writes
everything the scatter needs into one ``[N, 16]`` record (x, mass, momentum, affine matrix) so
that each coloured scatter launch takes two arrays.  Gradients use the same
layouts.  The grid lives in Taichi fields (dense loops over fields were ~5x faster than over
ndarrays here) passed as templates.

Every kernel has a hand-written adjoint: Taichi's autodiff of the 27-node stencil took minutes to
compile, autodiff of the unrolled polar decomposition 74 s, and the adjoint of a scatter is a
gather, which needs no atomics.  On CPUs the scatters avoid float atomics too (they cost 22x a
plain add here): particles are binned into slabs two cells thick across one axis (the longest of
the particles' box), coloured odd and even; slabs of one colour are a slab apart, so their 3-node
stencils never overlap and one thread per slab adds without atomics.  Two colours are two
launches per scatter: 4^3-cell blocks in 8 colours gave more parallelism than two cores use, for
six more launches of ~200 us each.  GPUs use the atomic variant.
"""

import functools

import taichi as ti

from .materials import (
    fixed_corotated_stress,
    fixed_corotated_stress_adjoint,
    neo_hookean_stress,
    neo_hookean_stress_adjoint,
)

# the packed layouts and their accessors, shared with the cloth kernels (see layout.py)
from .layout import (  # noqa: F401 - also this module's surface (K.X, K.W_DIM, ...)
    ARR, BEND, CFRIC, DRAG, DRAG_T, FORCE, INT, LAM, LIMIT, MASS, MAT_DIM, MU, NORMAL, PIN_DIM, SDF, SHEAR, STATE_DIM, VEC, VOL, W_DIM,
    WA, WMASS, WMOM, WX, C, F, V, X, add3, mat3, put3, put33, vec3,
)

#: grid nodes lighter than this (kg) count as empty: a node at the far edge of one particle's
#: stencil can get a weight of 1e-30, and its velocity's adjoint 1/m would overflow float32
MASS_EPS = 1e-20

#: thickness of the coloured scatter slabs, in cells: a slab's particles write nodes [2k, 2k + 4),
#: and the next slab of its colour starts at node 2k + 4 (>= 2 keeps them apart)
SLAB = 2
#: the two slab colours
COLOURS = 2


# --------------------------------------------------------------------------------------------
# B-spline weights


@ti.func
def _frame(xp, origin, inv_dx):
    """Base node, fractional offset and quadratic B-spline weights (and their derivatives) of a particle."""
    Xp = (xp - origin) * inv_dx
    base = ti.cast(ti.floor(Xp - 0.5), ti.i32)
    fx = Xp - base
    # w[k, d]: weight of node base+k along axis d; dw: d w / d fx
    w = ti.Matrix.rows([0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2])
    dw = ti.Matrix.rows([fx - 1.5, -2.0 * (fx - 1.0), fx - 0.5])
    return base, fx, w, dw


# STENCIL: the 27-node loops below run the first axis as a run-time loop over 9 unrolled nodes
# (``for i in range(3)``, then ``_first_axis`` and ``_node`` for each compile-time ``jk``).
# Taichi's front end walks an unrolled body once per copy at every process start, warm offline
# cache or not, and LLVM compiles every copy: fully unrolled, these kernels were half of a warm
# start's front end and of a cold compile (README, Benchmarks (h)).  No kernel here is
# differentiated by Taichi's autodiff, whose trap with run-time loops (DESIGN.md section 2) does
# not apply; the cloth element kernel, which is, keeps its loops static.


@ti.func
def _first_axis(w, dw, i):
    """``w[i, 0]`` and ``dw[i, 0]`` for a loop index ``i`` in 0..2, by selects: a dynamically indexed
    local matrix lives in memory, and that made the gathers 1.7x slower (measured)."""
    wx = ti.select(i == 0, w[0, 0], ti.select(i == 1, w[1, 0], w[2, 0]))
    dwx = ti.select(i == 0, dw[0, 0], ti.select(i == 1, dw[1, 0], dw[2, 0]))
    return wx, dwx


@ti.func
def _node(i, jk, wx, w, fx, dx):
    """Node (i, jk) of the stencil (``jk`` compile-time, ``wx = w[i, 0]``): its offset o from the base
    node, its position relative to the particle (o - fx) dx, and its weight."""
    o = ti.Vector([i, jk[0], jk[1]])
    return o, (o - fx) * dx, wx * w[jk[0], 1] * w[jk[1], 2]


@ti.func
def _node_weight_grad(wx, dwx, w, dw, jk, inv_dx):
    """d w / d x_p (a vec3) of node (i, jk), from ``wx = w[i, 0]`` and ``dwx = dw[i, 0]``."""
    return inv_dx * ti.Vector([dwx * w[jk[0], 1] * w[jk[1], 2], wx * dw[jk[0], 1] * w[jk[1], 2], wx * w[jk[0], 1] * dw[jk[1], 2]])


# --------------------------------------------------------------------------------------------
# 1. constitutive update


def _constitutive_kernels(stress, stress_adjoint):
    @ti.kernel
    def forward(S: ARR, M: ARR, dt: float, inv_dx: float, start: int, end: int, S_out: ARR, W: ARR, serial: ti.template()):
        """Writes F' into ``S_out`` and the scatter record (x, m, m v + dt f, A) into ``W``."""
        ti.loop_config(serialize=serial)
        for p in range(start, end):
            Cp = mat3(S, p, C)
            Fn = (ti.Matrix.identity(float, 3) + dt * Cp) @ mat3(S, p, F)
            P = stress(Fn, M[p, MU], M[p, LAM])
            put33(S_out, p, F, Fn)
            mp = M[p, MASS]
            put3(W, p, WX, vec3(S, p, X))
            W[p, WMASS] = mp
            put3(W, p, WMOM, mp * vec3(S, p, V) + dt * vec3(M, p, FORCE))
            # MLS-MPM affine momentum: stress part and APIC part (Hu et al. 2018, eq. 29)
            put33(W, p, WA, -dt * 4.0 * inv_dx * inv_dx * M[p, VOL] * P @ Fn.transpose() + mp * Cp)

    @ti.kernel
    def adjoint(S: ARR, M: ARR, dt: float, inv_dx: float, start: int, end: int, G_out: ARR, G_W: ARR, G_in: ARR, G_M: ARR, serial: ti.template()):
        """Reads dL/dF' from ``G_out`` and dL/dW from ``G_W``; accumulates dL/dx and writes dL/dv,
        dL/dC, dL/dF into ``G_in``; accumulates dL/d(mu, lambda, mass, force) into ``G_M``."""
        ti.loop_config(serialize=serial)
        for p in range(start, end):
            Fp, Cp = mat3(S, p, F), mat3(S, p, C)
            L = ti.Matrix.identity(float, 3) + dt * Cp
            Fn = L @ Fp
            mp = M[p, MASS]
            k = -dt * 4.0 * inv_dx * inv_dx * M[p, VOL]
            gA = mat3(G_W, p, WA)
            gmom = vec3(G_W, p, WMOM)
            # A = k P Fn^T + m C (P comes with its adjoint: see materials)
            P, g_Fn, gmu, glam = stress_adjoint(Fn, M[p, MU], M[p, LAM], k * gA @ Fn)
            g_Fn += mat3(G_out, p, F) + k * gA.transpose() @ P
            add3(G_in, p, X, vec3(G_W, p, WX))
            put3(G_in, p, V, mp * gmom)
            put33(G_in, p, F, L.transpose() @ g_Fn)
            put33(G_in, p, C, mp * gA + dt * g_Fn @ Fp.transpose())
            G_M[p, MU] += gmu
            G_M[p, LAM] += glam
            G_M[p, MASS] += (gA * Cp).sum() + G_W[p, WMASS] + gmom.dot(vec3(S, p, V))
            add3(G_M, p, FORCE, dt * gmom)

    return forward, adjoint


#: model name -> (forward kernel, adjoint kernel)
CONSTITUTIVE = {
    "neo_hookean": _constitutive_kernels(neo_hookean_stress, neo_hookean_stress_adjoint),
    "fixed_corotated": _constitutive_kernels(fixed_corotated_stress, fixed_corotated_stress_adjoint),
}


# --------------------------------------------------------------------------------------------
# 2. particle to grid


@ti.kernel
def bin_particles(W: ARR, ox: float, oy: float, oz: float, inv_dx: float, axis: int, bins: INT):
    """Counting sort of particles by coloured slab (serial: deterministic order, ~3 passes of N).

    Slab b = base[axis] // SLAB; colour = parity of b; slabs of one colour are stored contiguously
    (key = colour * slabs_per_colour + b // 2) so that the coloured scatter runs over them in
    parallel.  ``bins = [order (N) | key (N) | counts (n_keys) | start (n_keys + 1)]``.
    """
    origin = ti.Vector([ox, oy, oz])
    n = W.shape[0]
    n_keys = (bins.shape[0] - 2 * n - 1) // 2
    per_colour = n_keys // COLOURS
    c0 = 2 * n  # counts
    s0 = 2 * n + n_keys  # slab starts
    ti.loop_config(serialize=True)
    for k in range(n_keys):
        bins[c0 + k] = 0
    ti.loop_config(serialize=True)
    for p in range(n):
        base = ti.cast(ti.floor((vec3(W, p, WX) - origin) * inv_dx - 0.5), ti.i32)
        b = base[axis] // SLAB
        key = (b % COLOURS) * per_colour + b // COLOURS
        bins[n + p] = key
        bins[c0 + key] += 1
    ti.loop_config(serialize=True)
    for _ in range(1):
        s = 0
        for k in range(n_keys):
            bins[s0 + k] = s
            s += bins[c0 + k]
            bins[c0 + k] = bins[s0 + k]
        bins[s0 + n_keys] = s
    ti.loop_config(serialize=True)
    for p in range(n):
        k = bins[n + p]
        bins[bins[c0 + k]] = p
        bins[c0 + k] += 1


@ti.func
def _colour_range(bins: ti.template(), n, colour, b):
    """Particle slots [lo, hi) of slab ``b`` of ``colour`` in the sorted order."""
    n_keys = (bins.shape[0] - 2 * n - 1) // 2
    k = colour * (n_keys // COLOURS) + b
    s0 = 2 * n + n_keys
    return bins[s0 + k], bins[s0 + k + 1]


@ti.func
def _p2g_particle(p, W: ti.template(), origin, inv_dx, dx, grid_mv: ti.template(), grid_m: ti.template(), atomic: ti.template()):
    base, fx, w, dw = _frame(vec3(W, p, WX), origin, inv_dx)
    mp = W[p, WMASS]
    mom = vec3(W, p, WMOM)
    a = mat3(W, p, WA)
    for i in range(3):  # see STENCIL
        wx, _ = _first_axis(w, dw, i)
        for jk in ti.static(ti.grouped(ti.ndrange(3, 3))):
            o, dpos, wt = _node(i, jk, wx, w, fx, dx)
            I = base + o
            if ti.static(atomic):
                grid_mv[I] += wt * (mom + a @ dpos)
                grid_m[I] += wt * mp
            else:
                # plain read-add-write: no other thread touches this block's stencil
                grid_mv[I] = grid_mv[I] + wt * (mom + a @ dpos)
                grid_m[I] = grid_m[I] + wt * mp


@ti.kernel
def p2g_atomic(W: ARR, ox: float, oy: float, oz: float, inv_dx: float, dx: float, grid_mv: ti.template(), grid_m: ti.template(), serial: ti.template()):
    origin = ti.Vector([ox, oy, oz])
    ti.loop_config(serialize=serial)
    for p in range(W.shape[0]):
        _p2g_particle(p, W, origin, inv_dx, dx, grid_mv, grid_m, True)


@ti.kernel
def p2g_colored(
    W: ARR, bins: INT, colour: int, blocks_per_colour: int, ox: float, oy: float, oz: float, inv_dx: float, dx: float,
    grid_mv: ti.template(), grid_m: ti.template(), serial: ti.template(),
):
    """The particles of one colour, one thread per slab (launched once per colour: unrolling both in
    one kernel would double its compile time).  With the one-slab binning of ``serial_bins`` this
    is the serial scatter: one thread, no atomics, fixed order, and for a few thousand particles
    cheaper than binning plus two parallel launches (launch overhead dominates there)."""
    origin = ti.Vector([ox, oy, oz])
    n = W.shape[0]
    ti.loop_config(block_dim=1, serialize=serial)  # one slab per work item: slabs hold many particles, and few of them
    for b in range(blocks_per_colour):
        lo, hi = _colour_range(bins, n, colour, b)
        for j in range(lo, hi):
            _p2g_particle(bins[j], W, origin, inv_dx, dx, grid_mv, grid_m, False)


@ti.kernel
def transfer_adjoint(
    W: ARR, R: ARR, grid_v: ti.template(), ox: float, oy: float, oz: float, inv_dx: float, dx: float,
    g_grid_mv: ti.template(), g_grid_m: ti.template(), G_W: ARR, serial: ti.template(),
):
    """The gathers of the transfers' adjoints, one pass over each particle's stencil: p2g's adjoint
    (dL/dW from the grid's dL/dmv, dL/dm) and the part of g2p's adjoint that is a gather (dL/dx
    through the weights, from the forward grid velocities and R).  Writes dL/dW; the position
    gradient of both transfers goes to its WX column (both weigh the same position).  The scatter
    half of g2p's adjoint (into ``g_grid_v``) runs before, through the p2g kernels."""
    origin = ti.Vector([ox, oy, oz])
    ti.loop_config(serialize=serial)
    for p in range(W.shape[0]):
        base, fx, w, dw = _frame(vec3(W, p, WX), origin, inv_dx)
        mp = W[p, WMASS]
        mom = vec3(W, p, WMOM)
        a = mat3(W, p, WA)
        gnv = vec3(R, p, WMOM)
        gB = mat3(R, p, WA)
        gmom = ti.Vector.zero(float, 3)
        vsum = ti.Vector.zero(float, 3)
        gx = ti.Vector.zero(float, 3)
        gA = ti.Matrix.zero(float, 3, 3)
        gm = 0.0
        for i in range(3):  # see STENCIL
            wx, dwx = _first_axis(w, dw, i)
            for jk in ti.static(ti.grouped(ti.ndrange(3, 3))):
                o, dpos, wt = _node(i, jk, wx, w, fx, dx)
                I = base + o
                Gmv = g_grid_mv[I]
                Gm = g_grid_m[I]
                gv = grid_v[I]
                gmom += wt * Gmv
                vsum += wt * gv
                gA += wt * Gmv.outer_product(dpos)
                gm += wt * Gm
                # w depends on x (dw terms); dpos = (o - fx) dx has d dpos / dx = -I (the sums after the loop)
                gx += _node_weight_grad(wx, dwx, w, dw, jk, inv_dx) * (Gmv.dot(mom + a @ dpos) + Gm * mp + gv.dot(gnv + gB @ dpos))
        gx -= a.transpose() @ gmom + gB.transpose() @ vsum
        put3(G_W, p, WX, gx)
        G_W[p, WMASS] = gm
        put3(G_W, p, WMOM, gmom)
        put33(G_W, p, WA, gA)


# --------------------------------------------------------------------------------------------
# 3. grid update: gravity, damping, colliders, walls


@ti.func
def _collider_frame(kind: ti.template(), coll: ti.template(), c: ti.template(), xi, time, I, sdf: ti.template()):
    """Signed distance, outward unit normal and velocity of collider ``c`` at node ``I`` (position ``xi``).

    Analytic kinds are evaluated at ``xi``; a mesh collider is read from its sampled grid field ``sdf``."""
    vc = ti.Vector([coll[c, 15], coll[c, 16], coll[c, 17]])
    phi = 1.0
    n = ti.Vector([0.0, 1.0, 0.0])
    if ti.static(kind == "mesh"):
        phi = sdf[I[0], I[1], I[2], 0]
        n = ti.Vector([sdf[I[0], I[1], I[2], 1], sdf[I[0], I[1], I[2], 2], sdf[I[0], I[1], I[2], 3]])
        vc = ti.Vector([sdf[I[0], I[1], I[2], 4], sdf[I[0], I[1], I[2], 5], sdf[I[0], I[1], I[2], 6]])
    elif ti.static(kind == "plane"):
        p0 = ti.Vector([coll[c, 0], coll[c, 1], coll[c, 2]]) + vc * time
        n = ti.Vector([coll[c, 3], coll[c, 4], coll[c, 5]])
        phi = (xi - p0).dot(n)
    elif ti.static(kind == "sphere"):
        d = xi - (ti.Vector([coll[c, 0], coll[c, 1], coll[c, 2]]) + vc * time)
        r = d.norm()
        phi = r - coll[c, 3]
        if r > 0:
            n = d / r
    elif ti.static(kind == "box"):
        R = ti.Matrix([[coll[c, 6 + 3 * i + j] for j in ti.static(range(3))] for i in ti.static(range(3))])
        q = R.transpose() @ (xi - (ti.Vector([coll[c, 0], coll[c, 1], coll[c, 2]]) + vc * time))
        h = ti.Vector([coll[c, 3], coll[c, 4], coll[c, 5]])
        d = ti.abs(q) - h
        dmax = ti.max(d[0], d[1], d[2])
        outside = ti.max(d, 0.0)
        on = outside.norm()
        phi = on + ti.min(dmax, 0.0)
        nl = ti.Vector([0.0, 0.0, 0.0])
        if dmax > 0:
            nl = outside * ti.math.sign(q) / on
        else:
            # inside: the face of least penetration
            if d[0] >= d[1] and d[0] >= d[2]:
                nl[0] = ti.math.sign(q[0])
            elif d[1] >= d[2]:
                nl[1] = ti.math.sign(q[1])
            else:
                nl[2] = ti.math.sign(q[2])
        n = R @ nl
    return phi, n, vc


@ti.func
def _coulomb(v, n, vc, mu):
    """Coulomb friction against a collider moving at vc (Stomakhin et al. 2013, section 8)."""
    vrel = v - vc
    vn = vrel.dot(n)
    out = v
    if vn < 0:
        vt = vrel - vn * n
        vt_norm = vt.norm()
        if vt_norm <= -mu * vn:
            out = vc  # static friction: sticks
        else:
            out = vc + vt + mu * vn * vt / vt_norm
    return out


@ti.func
def _coulomb_adjoint(v, n, vc, mu, g):
    """(d out / d v)^T g and (d out / d mu) . g of ``_coulomb``."""
    vrel = v - vc
    vn = vrel.dot(n)
    g_v = g
    g_mu = 0.0
    if vn < 0:
        vt = vrel - vn * n
        vt_norm = vt.norm()
        if vt_norm <= -mu * vn:
            g_v = ti.Vector([0.0, 0.0, 0.0])
        else:
            u = vt / vt_norm
            ug = u.dot(g)
            # out = vt + mu vn u:  d out = P_t dv + mu (u (n.dv) + vn/|vt| (I - u u^T) P_t dv)
            wperp = g - ug * u
            g_v = (g - g.dot(n) * n) + mu * (n * ug + (vn / vt_norm) * (wperp - wperp.dot(n) * n))
            g_mu = vn * ug
    return g_v, g_mu


@ti.func
def _box_index(I, lo, hi):
    """Row-major index of node ``I`` in the box ``[lo, hi)``."""
    return ((I[0] - lo[0]) * (hi[1] - lo[1]) + (I[1] - lo[1])) * (hi[2] - lo[2]) + (I[2] - lo[2])


@functools.lru_cache(maxsize=None)
def grid_kernels(kinds: tuple):
    """The grid update and its adjoint, specialised to a tuple of collider kinds (compile-time)."""
    for k in kinds:
        if k not in ("plane", "sphere", "box", "mesh"):
            raise ValueError(f"unknown collider kind {k!r}")
    n_coll = len(kinds)

    @ti.func
    def _colliders(v, xi, coll: ti.template(), friction: ti.template(), time, I, sdf: ti.template(), upto: ti.template()):
        """Velocity after colliders 0 .. upto-1 (applied in order)."""
        out = v
        for c in ti.static(range(upto)):
            phi, n, vc = _collider_frame(kinds[c], coll, c, xi, time, I, sdf)
            if phi < 0:
                out = _coulomb(out, n, vc, friction[c])
        return out

    @ti.kernel
    def grid_update(
        grid_mv: ti.template(), grid_m: ti.template(), coll: ARR, friction: VEC, damping: VEC, dt: float, time: float,
        gvx: float, gvy: float, gvz: float, ox: float, oy: float, oz: float, dx: float, boundary: int, sdf: SDF, lo_i: int, lo_j: int, lo_k: int,
        hi_i: int, hi_j: int, hi_k: int, grid_hv: ti.template(), grid_v: ti.template(), grid_vh: ti.template(), tape: ARR,
        save: int, flip_on: ti.template(), serial: ti.template(),
    ):
        """Nodes in the box ``[lo, hi)`` (the particles' stencils); nothing outside is read this substep.

        Reads mv and m and leaves them zero for the next substep's scatter (no separate clearing
        launch, see ``Engine``); likewise FLIP's ``grid_hv`` (the scatter of the particles' momentum
        alone, m v + m C (x_i - x_p), no forces), whose velocity hv / m goes to ``grid_vh`` (see
        ``g2p``; with ``flip_on`` only: otherwise neither is touched, and may be any field); with ``save`` the node's (mv, m, v) go to row ``_box_index`` of
        ``tape [nodes, 7]`` for the backward pass (see ``load_grid_region``)."""
        origin = ti.Vector([ox, oy, oz])
        gravity = ti.Vector([gvx, gvy, gvz])
        lo = ti.Vector([lo_i, lo_j, lo_k])
        hi = ti.Vector([hi_i, hi_j, hi_k])
        res = ti.Vector(ti.static(grid_m.shape))
        s = damping[0] ** dt
        ti.loop_config(serialize=serial)
        for I in ti.grouped(ti.ndrange((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]))):
            m = grid_m[I]
            mv = grid_mv[I]
            v = ti.Vector.zero(float, 3)
            vh = ti.Vector.zero(float, 3)
            if m > MASS_EPS:
                if ti.static(flip_on):
                    vh = grid_hv[I] / m
                v = _colliders((mv / m + dt * gravity) * s, origin + I * dx, coll, friction, time, I, sdf, n_coll)
                for d in ti.static(range(3)):
                    if (I[d] < boundary and v[d] < 0) or (I[d] >= res[d] - boundary and v[d] > 0):
                        v[d] = 0.0
            grid_v[I] = v
            if ti.static(flip_on):
                grid_vh[I] = vh
            if save:
                q = _box_index(I, lo, hi)
                put3(tape, q, 0, mv)
                tape[q, 3] = m
                put3(tape, q, 4, v)
                if ti.static(flip_on):
                    put3(tape, q, 7, vh)
            grid_mv[I] = ti.Vector.zero(float, 3)
            grid_m[I] = 0.0
            if ti.static(flip_on):
                grid_hv[I] = ti.Vector.zero(float, 3)

    @ti.func
    def _node_adjoint(I, res, grid_mv: ti.template(), grid_m: ti.template(), coll: ti.template(), friction: ti.template(),
                      s, ds, dt, time, gravity, origin, dx, boundary, sdf: ti.template(), g_grid_v: ti.template(),
                      grid_vh: ti.template(), g_grid_vh: ti.template(), g_grid_mv: ti.template(), g_grid_m: ti.template(),
                      g_grid_hv: ti.template(), flip_on: ti.template()):
        """Writes the node's dL/dmv and dL/dm (from dL/dv, and from FLIP's dL/dvh in ``g_grid_vh``
        through vh = hv / m) and FLIP's dL/dhv; returns its contributions to dL/d(damping, friction_c...)."""
        acc = ti.Vector.zero(float, n_coll + 1)
        m = grid_m[I]
        gmv = ti.Vector.zero(float, 3)
        gm = 0.0
        ghv = ti.Vector.zero(float, 3)
        if m > MASS_EPS:
            mv = grid_mv[I]
            v0 = mv / m + dt * gravity
            xi = origin + I * dx
            v = _colliders(v0 * s, xi, coll, friction, time, I, sdf, n_coll)
            g = g_grid_v[I]
            for d in ti.static(range(3)):
                if (I[d] < boundary and v[d] < 0) or (I[d] >= res[d] - boundary and v[d] > 0):
                    g[d] = 0.0
            # reverse through the colliders, replaying each one's input (n_coll is small)
            for cc in ti.static(range(n_coll)):
                c = ti.static(n_coll - 1 - cc)
                phi, n, vc = _collider_frame(kinds[c], coll, c, xi, time, I, sdf)
                if phi < 0:
                    vin = _colliders(v0 * s, xi, coll, friction, time, I, sdf, c)
                    g, g_mu = _coulomb_adjoint(vin, n, vc, friction[c], g)
                    acc[1 + c] += g_mu
            acc[0] += g.dot(v0) * ds
            gv0 = g * s
            gmv = gv0 / m
            # -(gv0 . mv) / m^2 written without m^2, which underflows in float32; vh = hv / m likewise
            gm = -gv0.dot(mv / m) / m
            if ti.static(flip_on):
                gh = g_grid_vh[I]
                gm -= gh.dot(grid_vh[I]) / m
                ghv = gh / m
        g_grid_mv[I] = gmv
        g_grid_m[I] = gm
        if ti.static(flip_on):
            g_grid_hv[I] = ghv
        # leave the fields this substep's adjoint filled zero for the next one (see ``Engine``)
        g_grid_v[I] = ti.Vector.zero(float, 3)
        if ti.static(flip_on):
            g_grid_vh[I] = ti.Vector.zero(float, 3)
        grid_mv[I] = ti.Vector.zero(float, 3)
        grid_m[I] = 0.0
        return acc

    @ti.kernel
    def grid_update_adjoint(
        grid_mv: ti.template(), grid_m: ti.template(), coll: ARR, friction: VEC, damping: VEC, dt: float, time: float,
        gvx: float, gvy: float, gvz: float, ox: float, oy: float, oz: float, dx: float, boundary: int, sdf: SDF, lo_i: int, lo_j: int, lo_k: int,
        hi_i: int, hi_j: int, hi_k: int, grid_vh: ti.template(), g_grid_v: ti.template(), g_grid_vh: ti.template(),
        g_grid_mv: ti.template(), g_grid_m: ti.template(), g_grid_hv: ti.template(), g_params: ARR,
        deterministic: ti.template(), flip_on: ti.template(), serial: ti.template(),
    ):
        """Overwrites g_grid_mv, g_grid_m, g_grid_hv and zeroes g_grid_v, g_grid_vh, grid_mv, grid_m.  Parameter gradients (damping, then each collider's
        friction) go into ``g_params [rows, 1 + C]``: ``deterministic`` writes each grid slab's sum
        into its own row (``rows == res[0]``) in a fixed order, so that the result is the same on
        every run (float atomics are not); otherwise they are atomic adds into row 0 (GPUs)."""
        origin = ti.Vector([ox, oy, oz])
        gravity = ti.Vector([gvx, gvy, gvz])
        lo = ti.Vector([lo_i, lo_j, lo_k])
        hi = ti.Vector([hi_i, hi_j, hi_k])
        res = ti.Vector(ti.static(grid_m.shape))
        s = damping[0] ** dt
        ds = dt * damping[0] ** (dt - 1.0)
        if ti.static(not deterministic):
            ti.loop_config(serialize=serial)
            for I in ti.grouped(ti.ndrange((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]))):
                acc = _node_adjoint(I, res, grid_mv, grid_m, coll, friction, s, ds, dt, time, gravity, origin, dx,
                                    boundary, sdf, g_grid_v, grid_vh, g_grid_vh, g_grid_mv, g_grid_m, g_grid_hv, flip_on)
                for c in ti.static(range(n_coll + 1)):
                    g_params[0, c] += acc[c]
        else:
            ti.loop_config(serialize=serial)
            for i in range(lo[0], hi[0]):
                acc = ti.Vector.zero(float, n_coll + 1)
                for j, k in ti.ndrange((lo[1], hi[1]), (lo[2], hi[2])):
                    acc += _node_adjoint(ti.Vector([i, j, k]), res, grid_mv, grid_m, coll, friction, s, ds, dt, time,
                                         gravity, origin, dx, boundary, sdf, g_grid_v, grid_vh, g_grid_vh, g_grid_mv, g_grid_m, g_grid_hv, flip_on)
                for c in ti.static(range(n_coll + 1)):
                    g_params[i, c] += acc[c]

    return grid_update, grid_update_adjoint


@ti.kernel
def clear_region(a: ti.template(), b: ti.template(), lo_i: int, lo_j: int, lo_k: int, hi_i: int, hi_j: int, hi_k: int, serial: ti.template()):
    """Zero two grid fields inside ``[lo, hi)``; nodes outside are neither written nor read this substep."""
    lo = ti.Vector([lo_i, lo_j, lo_k])
    hi = ti.Vector([hi_i, hi_j, hi_k])
    ti.loop_config(serialize=serial)
    for I in ti.grouped(ti.ndrange((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]))):
        a[I] = ti.zero(a[I])
        b[I] = ti.zero(b[I])


@ti.kernel
def load_grid_region(
    buf: ARR, lo_i: int, lo_j: int, lo_k: int, hi_i: int, hi_j: int, hi_k: int, mv: ti.template(), m: ti.template(),
    v: ti.template(), vh: ti.template(), flip_on: ti.template(), serial: ti.template(),
):
    """Put back the grid's (mv, m, v) inside ``[lo, hi)`` from ``buf [nodes, 7]`` (row-major over the
    box), as the forward's ``grid_update`` saved it for the backward pass; and FLIP's vh from its
    three more columns with ``flip_on``."""
    lo = ti.Vector([lo_i, lo_j, lo_k])
    hi = ti.Vector([hi_i, hi_j, hi_k])
    ti.loop_config(serialize=serial)
    for I in ti.grouped(ti.ndrange((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]))):
        q = _box_index(I, lo, hi)
        mv[I] = vec3(buf, q, 0)
        m[I] = buf[q, 3]
        v[I] = vec3(buf, q, 4)
        if ti.static(flip_on):
            vh[I] = vec3(buf, q, 7)


# --------------------------------------------------------------------------------------------
# 4. grid to particle


@ti.kernel
def g2p(
    S: ARR, grid_v: ti.template(), grid_vh: ti.template(), pins: ARR, flip: float, dt: float, ox: float, oy: float, oz: float,
    inv_dx: float, dx: float, lo_x: float, lo_y: float, lo_z: float, hi_x: float, hi_y: float, hi_z: float, S_out: ARR,
    flip_on: ti.template(), serial: ti.template(),
):
    """Writes x, v and C of ``S_out`` (F was written by the constitutive kernel).

    Velocity: the APIC gather plus ``flip`` times the particle's own velocity less the gather of
    ``grid_vh``, the grid velocity of the particles' momentum alone (before gravity, damping,
    colliders and every force, which MLS-MPM scatters with the momentum): v = v_pic + flip (v_p -
    sum w vh_i), the PIC/FLIP blend of Zhu and Bridson 2005 (for MPM, Stomakhin et al. 2013 and Jiang
    et al. 2015, section 8).  ``flip`` = 0 is APIC.  (The grid's own mv / m would include the
    forces, and their impulse would then cancel out of the FLIP share: a cloth hanging under that
    rule sagged 90 mm further than under APIC, measured.)
    Positions move with the gathered (PIC) velocity, and C is the APIC gather, whatever ``flip``.
    Without ``flip_on`` (compile-time) ``grid_vh`` is not read and ``flip`` is ignored."""
    origin = ti.Vector([ox, oy, oz])
    lo = ti.Vector([lo_x, lo_y, lo_z])
    hi = ti.Vector([hi_x, hi_y, hi_z])
    ti.loop_config(serialize=serial)
    for p in range(S.shape[0]):
        xp = vec3(S, p, X)
        base, fx, w, dw = _frame(xp, origin, inv_dx)
        nv = ti.Vector.zero(float, 3)
        B = ti.Matrix.zero(float, 3, 3)
        for i in range(3):  # see STENCIL
            wx, _ = _first_axis(w, dw, i)
            for jk in ti.static(ti.grouped(ti.ndrange(3, 3))):
                o, dpos, wt = _node(i, jk, wx, w, fx, dx)
                gv = grid_v[base + o]
                nv += wt * gv
                B += wt * gv.outer_product(dpos)
        if ti.static(flip_on):
            nh = ti.Vector.zero(float, 3)
            for i in range(3):
                wx, _ = _first_axis(w, dw, i)
                for jk in ti.static(ti.grouped(ti.ndrange(3, 3))):
                    oh, _dpos, wh = _node(i, jk, wx, w, fx, dx)
                    nh += wh * grid_vh[base + oh]
            vout = nv + flip * (vec3(S, p, V) - nh)
            if pins[p, 0] != 0:
                nv = vec3(pins, p, 1)
                vout = nv
            put3(S_out, p, V, vout)
        else:
            if pins[p, 0] != 0:
                nv = vec3(pins, p, 1)
            put3(S_out, p, V, nv)
        # quadratic B-splines: D^-1 = 4 / dx^2 (Jiang et al. 2015)
        put33(S_out, p, C, 4.0 * inv_dx * inv_dx * B)
        # the walls keep particles inside; the clamp is a guard that a CFL-respecting run never hits
        put3(S_out, p, X, ti.min(ti.max(xp + dt * nv, lo), hi))


@ti.kernel
def g2p_adjoint_prepare(
    S: ARR, S_out: ARR, G_out: ARR, W: ARR, pins: ARR, dt: float, inv_dx: float, lo_x: float, lo_y: float, lo_z: float,
    hi_x: float, hi_y: float, hi_z: float, R: ARR, G_in: ARR, flip_on: ti.template(), serial: ti.template(),
):
    """Per-particle part of the g2p adjoint: the record ``R`` (x, 0, dL/dv_new, dL/dB; W's layout) for
    the scatter, and dL/dx through x' = clamp(x + dt v_gathered) written into ``G_in`` (g2p's positions
    move with the gathered velocity, not with FLIP's).  R's position is
    the scatter record's (the same as the state's; for cloth elements the centroid computed from
    the vertices), so that this scatter stays inside the substep's grid region."""
    lo = ti.Vector([lo_x, lo_y, lo_z])
    hi = ti.Vector([hi_x, hi_y, hi_z])
    ti.loop_config(serialize=serial)
    for p in range(S.shape[0]):
        gxn = vec3(G_out, p, X)
        if ti.static(flip_on):
            # the clamp test on g2p's output position (with FLIP its velocity is not the one that
            # moved x): the same as testing x + dt v_gathered, but on the boundary itself
            xo = vec3(S_out, p, X)
            for d in ti.static(range(3)):
                if xo[d] <= lo[d] or xo[d] >= hi[d]:
                    gxn[d] = 0.0
        else:
            xn = vec3(S, p, X) + dt * vec3(S_out, p, V)
            for d in ti.static(range(3)):
                if xn[d] < lo[d] or xn[d] > hi[d]:
                    gxn[d] = 0.0
        gnv = ti.Vector.zero(float, 3)
        if pins[p, 0] == 0:
            gnv = vec3(G_out, p, V) + dt * gxn
        put3(R, p, WX, vec3(W, p, WX))
        R[p, WMASS] = 0.0
        put3(R, p, WMOM, gnv)
        # C = (4/dx^2) B
        put33(R, p, WA, 4.0 * inv_dx * inv_dx * mat3(G_out, p, C))
        put3(G_in, p, X, gxn)


@ti.kernel
def flip_adjoint(
    W: ARR, G_out: ARR, pins: ARR, flip: float, grid_vh: ti.template(), ox: float, oy: float, oz: float,
    inv_dx: float, R: ARR, GX: ARR, serial: ti.template(),
):
    """The gather half of the adjoint of g2p's FLIP share (``flip`` != 0): the record ``R`` (x, 0,
    h = -flip dL/dv_out, 0) whose scatter is dL/dvh at the nodes, and in ``GX`` the position
    gradient through the weights of the gather of vh.  The direct term dL/dv += flip dL/dv_out and
    the adjoint of vh's scatter are the caller's."""
    origin = ti.Vector([ox, oy, oz])
    ti.loop_config(serialize=serial)
    for p in range(W.shape[0]):
        h = ti.Vector.zero(float, 3)
        if pins[p, 0] == 0:
            h = -flip * vec3(G_out, p, V)
        xp = vec3(W, p, WX)
        base, fx, w, dw = _frame(xp, origin, inv_dx)
        gx = ti.Vector.zero(float, 3)
        for i in range(3):  # see STENCIL
            wx, dwx = _first_axis(w, dw, i)
            for jk in ti.static(ti.grouped(ti.ndrange(3, 3))):
                gx += _node_weight_grad(wx, dwx, w, dw, jk, inv_dx) * h.dot(grid_vh[base + ti.Vector([i, jk[0], jk[1]])])
        put3(R, p, WX, xp)
        R[p, WMASS] = 0.0
        put3(R, p, WMOM, h)
        put33(R, p, WA, ti.Matrix.zero(float, 3, 3))
        put3(GX, p, 0, gx)
