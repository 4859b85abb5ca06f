"""A slow, dense, pure-PyTorch twin of one MPM substep, used only by tests and benchmarks.

It follows the kernels line by line with ordinary tensor operations (``index_add`` for the
scatter), so PyTorch's autograd gives reference vector-Jacobian products for the hand-written
adjoints.  Tiny sizes only.
"""

from __future__ import annotations

import itertools

import torch

from .colliders import pack
from .config import SimConfig
from .model import Model

OFFSETS = torch.tensor(list(itertools.product(range(3), repeat=3)))  # [27, 3], same order as ti.ndrange(3,3,3)


def polar_rotation(F: torch.Tensor, iterations: int = 8) -> torch.Tensor:
    """Scaled Newton polar iteration, as in materials.polar_rotation.  F: [N,3,3]."""
    X = F
    for _ in range(iterations):
        X_inv = torch.linalg.inv(X)
        g = torch.sqrt(torch.sqrt((X_inv**2).sum((-2, -1)) / (X**2).sum((-2, -1))))[:, None, None]
        X = 0.5 * (g * X + X_inv.transpose(-2, -1) / g)
    return X


def stress(model: str, F: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """First Piola-Kirchhoff stress [N,3,3]."""
    J = torch.linalg.det(F)[:, None, None]
    F_inv_T = torch.linalg.inv(F).transpose(-2, -1)
    mu, lam = mu[:, None, None], lam[:, None, None]
    if model == "neo_hookean":
        return mu * (F - F_inv_T) + lam * torch.log(J) * F_inv_T
    if model == "fixed_corotated":
        return 2 * mu * (F - polar_rotation(F)) + lam * (J - 1) * J * F_inv_T
    raise ValueError(model)


def _coulomb(v, n, vc, mu):
    vrel = v - vc
    vn = (vrel * n).sum(-1, keepdim=True)
    vt = vrel - vn * n
    vt_norm = vt.norm(dim=-1, keepdim=True)
    safe = torch.where(vt_norm > 0, vt_norm, torch.ones_like(vt_norm))
    slide = vc + vt + mu * vn * vt / safe
    out = torch.where(vt_norm <= -mu * vn, vc.expand_as(v), slide)
    return torch.where(vn < 0, out, v)


def _collider_frame(kind, row, xi, time):
    vc = row[15:18]
    if kind == "plane":
        n = row[3:6].expand_as(xi)
        phi = ((xi - (row[0:3] + vc * time)) * row[3:6]).sum(-1, keepdim=True)
    elif kind == "sphere":
        d = xi - (row[0:3] + vc * time)
        r = d.norm(dim=-1, keepdim=True)
        phi = r - row[3]
        n = torch.where(r > 0, d / torch.where(r > 0, r, torch.ones_like(r)), torch.tensor([0.0, 1.0, 0.0], dtype=xi.dtype))
    elif kind == "box":
        R = row[6:15].reshape(3, 3)
        q = (xi - (row[0:3] + vc * time)) @ R
        d = q.abs() - row[3:6]
        dmax = d.max(-1, keepdim=True).values
        outside = d.clamp(min=0)
        on = outside.norm(dim=-1, keepdim=True)
        phi = on + dmax.clamp(max=0)
        n_out = outside * torch.sign(q) / torch.where(on > 0, on, torch.ones_like(on))
        axis = torch.nn.functional.one_hot(d.argmax(-1), 3).to(xi.dtype)
        n_in = axis * torch.sign(q)
        n = torch.where(dmax > 0, n_out, n_in) @ R.T
    else:
        raise ValueError(kind)
    return phi, n, vc


def step(model: Model, config: SimConfig, x, v, C, F, mu, lam, mass, force, friction, damping, substep: int):
    """One substep; returns (x, v, C, F) of the next state.  Shapes as in the kernels."""
    g = config.grid
    dt, dx, inv_dx = config.dt, g.dx, g.inv_dx
    dtype = x.dtype
    origin = torch.tensor(g.origin, dtype=dtype)
    n = x.shape[0]
    eye = torch.eye(3, dtype=dtype)
    Fn = (eye + dt * C) @ F
    P = torch.empty_like(Fn)
    parts = []
    for grp in model.groups:
        sl = slice(grp.start, grp.end)
        parts.append(stress(grp.model, Fn[sl], mu[sl], lam[sl]))
    P = torch.cat(parts)
    A = -dt * 4 * inv_dx * inv_dx * model.volume[:, None, None] * P @ Fn.transpose(-2, -1) + mass[:, None, None] * C

    Xp = (x - origin) * inv_dx
    base = torch.floor(Xp - 0.5).detach()
    fx = Xp - base
    w = torch.stack([0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1) ** 2, 0.5 * (fx - 0.5) ** 2], 1)  # [N, 3(k), 3(d)]
    res = torch.tensor(g.res)
    nodes = g.num_nodes
    mv = torch.zeros(nodes, 3, dtype=dtype)
    m = torch.zeros(nodes, dtype=dtype)
    hv = torch.zeros(nodes, 3, dtype=dtype)  # FLIP: the momentum alone (kernels.g2p)
    mom = mass[:, None] * v + dt * force
    idx_list, wt_list, dpos_list = [], [], []
    for o in OFFSETS:
        wt = w[:, o[0], 0] * w[:, o[1], 1] * w[:, o[2], 2]
        dpos = (o.to(dtype) - fx) * dx
        I = base.long() + o
        idx = (I[:, 0] * res[1] + I[:, 1]) * res[2] + I[:, 2]
        mv = mv.index_add(0, idx, wt[:, None] * (mom + (A @ dpos[:, :, None])[:, :, 0]))
        m = m.index_add(0, idx, wt * mass)
        hv = hv.index_add(0, idx, wt[:, None] * mass[:, None] * (v + (C @ dpos[:, :, None])[:, :, 0]))
        idx_list.append(idx)
        wt_list.append(wt)
        dpos_list.append(dpos)

    active = m > 1e-20  # kernels.MASS_EPS
    safe_m = torch.where(active, m, torch.ones_like(m))
    gravity = torch.tensor(config.gravity, dtype=dtype)
    vg = (mv / safe_m[:, None] + dt * gravity) * damping.reshape(()) ** dt
    coords = torch.stack(torch.meshgrid(*[torch.arange(r) for r in g.res], indexing="ij"), -1).reshape(-1, 3)
    xi = origin + coords.to(dtype) * dx
    kinds, rows, _ = pack(model.colliders)
    rows = torch.tensor(rows, dtype=dtype)
    time = substep * dt
    for c, kind in enumerate(kinds):
        phi, nrm, vc = _collider_frame(kind, rows[c], xi, time)
        vg = torch.where(phi < 0, _coulomb(vg, nrm, vc, friction[c]), vg)
    lo_wall = coords < g.boundary
    hi_wall = coords >= res - g.boundary
    vg = torch.where((lo_wall & (vg < 0)) | (hi_wall & (vg > 0)), torch.zeros_like(vg), vg)
    vg = torch.where(active[:, None], vg, torch.zeros_like(vg))

    nv = torch.zeros(n, 3, dtype=dtype)
    B = torch.zeros(n, 3, 3, dtype=dtype)
    for idx, wt, dpos in zip(idx_list, wt_list, dpos_list):
        gv = vg[idx]
        nv = nv + wt[:, None] * gv
        B = B + wt[:, None, None] * gv[:, :, None] * dpos[:, None, :]
    # FLIP's share (kernels.g2p): the particle's velocity less the gather of the momentum's velocity
    vh = torch.where(active[:, None], hv / safe_m[:, None], torch.zeros_like(hv))
    nh = sum(wt[:, None] * vh[idx] for idx, wt in zip(idx_list, wt_list))
    pinned = model.pinned.bool()[:, None]
    vout = torch.where(pinned, model.pin_velocity, nv + config.flip_share * (v - nh))
    nv = torch.where(pinned, model.pin_velocity, nv)
    Cn = 4 * inv_dx * inv_dx * B
    lo = torch.tensor([o + dx for o in g.origin], dtype=dtype)
    hi = torch.tensor([o + (r - 2) * dx - 1e-6 * dx for o, r in zip(g.origin, g.res)], dtype=dtype)
    xn = torch.minimum(torch.maximum(x + dt * nv, lo), hi)
    return xn, vout, Cn, Fn
