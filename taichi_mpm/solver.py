"""The engine: sequencing the kernels, one substep forward, one substep backward, whole segments.

``Engine`` owns the grid fields and scratch buffers of one model/config and runs substeps forward
(:meth:`Engine.run`) and a segment's adjoint (:meth:`Engine.backward_segment`, which re-simulates
the segment and walks back through it).  The PyTorch bridge above it is ``segment._Segment``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Sequence

import numpy as np
import taichi as ti
import torch

from . import cloth as CL
from . import cloth_forces as CF
from . import kernels as K
from . import runtime
from . import cloth_contact as CC
from . import mesh_kernels as MK
from . import strain_limit as SLM
from .colliders import pack
from .config import SimConfig
from .errors import SimulationError
from .layout import pack_material, pack_state, unpack_state  # noqa: F401 - pack_material, unpack_state: this module's surface too
from .model import Model


@dataclasses.dataclass(frozen=True)
class StepParams:
    """What one substep reads besides the state: ``material [N, 14]`` (see ``pack_material``),
    ``friction [max(C, 1)]`` and ``damping [1]``; torch tensors of the runtime dtype."""

    material: torch.Tensor
    friction: torch.Tensor
    damping: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [self.material, self.friction, self.damping]


#: up to this many particles the CPU scatter runs on one thread (see kernels.p2g_colored): measured
#: on a 2-core machine, forward+backward of a block took 0.87 s serial vs 1.01 s coloured at 4,096
#: particles, and 1.35 s vs 1.33 s at 8,000 (the coloured scatter also bins the particles every substep)
SERIAL_SCATTER_MAX = 8000

#: up to this many particles every kernel loop runs serially on the CPU (see Engine.serial)
SERIAL_LOOPS_MAX = 8000
#: cloths up to this many vertices run their bending and drag as ``mesh_kernels`` (one launch each
#: way), larger ones with torch and scipy.  Measured 2026-12-03 (2 cores, float32, alternating runs):
#: the demo's 12 x 12 cloth, full-horizon fit iteration 7.4 s with the kernels vs 7.9 s without;
#: a 41 x 41 cloth (bandwidth ~300 after RCM) forward 15.7-16.1 s vs 9.4-10.1 s, backward 29-33 vs
#: 18 s: the kernels' serial banded substitutions walked the factor with a stride of V (LAPACK's
#: blocked solve took 0.5 ms).  With the factor stored by column (2026-12-04, same script, under
#: load from tests): forward 10.8-15.2 s vs 9.0-12.7 s, backward 22.2-27.4 vs 16.8-19.5 s, still
#: 1.2-1.4x slower, so big meshes keep scipy's
MESH_KERNEL_MAX_VERTICES = 400

#: values per grid node kept for the backward pass: mv (3), m, v (3)
GRID_TAPE_DIM = 7
#: with FLIP on, the tape also keeps each node's vh (see kernels.grid_update)
GRID_TAPE_DIM_FLIP = 10


def serial_bins(n: int, device) -> torch.Tensor:
    """The coloured scatter's binning (see ``kernels.bin_particles``) with every particle in slab 0
    of colour 0, in index order: run as colour 0 over one slab, the coloured kernel is the serial
    scatter, so no separate serial kernels are compiled."""
    n_keys = K.COLOURS  # one slab per colour
    bins = torch.zeros(2 * n + 2 * n_keys + 1, dtype=torch.int32)
    bins[:n] = torch.arange(n, dtype=torch.int32)
    bins[2 * n + n_keys + 1 :] = n  # slab starts: [0, n, ..., n]
    return bins.to(device)


class Launcher:
    """A kernel called by argument names, with the arguments that are fixed for an engine bound once.

    Taichi kernels take vectors as scalars (a ``ti.math.vec3`` argument costs ~60 us of Python per
    launch here, three floats ~15 us), which makes long positional lists where one reordering would
    silently swap two parameters.  ``Launcher(kernel, ox=..., dx=...)(S=..., grid_v=...)`` checks
    every name against the kernel's signature and passes them in its order (Taichi's own keyword
    path costs more per launch)."""

    def __init__(self, kernel, **fixed):
        self.kernel = kernel
        self.names = tuple(inspect.signature(kernel).parameters)
        self.fixed = fixed
        self._check(fixed)

    def _check(self, args: dict) -> None:
        unknown = sorted(set(args) - set(self.names))
        if unknown:
            raise TypeError(f"{self.kernel.__name__} has no argument {unknown[0]!r}")

    def _ordered(self, args: dict) -> list:
        merged = {**self.fixed, **args}
        if len(merged) != len(self.names):
            self._check(args)
            missing = [n for n in self.names if n not in merged]
            raise TypeError(f"{self.kernel.__name__} is missing {', '.join(missing)}")
        return [merged[n] for n in self.names]

    def __call__(self, **args) -> None:
        runtime.launch(self.kernel, self._ordered(args))

    def grad(self, **args) -> None:
        """The kernel's Taichi autodiff (``kernel.grad``) with the same arguments."""
        runtime.launch(self.kernel, self._ordered(args), grad=True)


class _Grid:
    """Dense grid fields (and their adjoints) of one resolution, allocated once per Taichi runtime.

    Between substeps ``mv``, ``m`` and ``g_v`` (and FLIP's ``hv`` and ``g_vh``) are zero everywhere: the kernels that read them last
    in a substep (``grid_update``, ``grid_update_adjoint``) zero them, which saves a clearing launch
    per pass (a launch costs more than the clearing on small scenes).  ``clean`` is False while a
    substep is under way; a substep that finds it False (one that was interrupted, say by Ctrl-C)
    clears the whole grid first.
    """

    def __init__(self, res: tuple[int, int, int], dtype):
        self.res = res
        self.clean = True
        fb = ti.FieldsBuilder()
        self.mv = ti.Vector.field(3, dtype)
        self.m = ti.field(dtype)
        self.v = ti.Vector.field(3, dtype)
        self.g_v = ti.Vector.field(3, dtype)
        self.g_mv = ti.Vector.field(3, dtype)
        self.g_m = ti.field(dtype)
        fb.dense(ti.ijk, res).place(self.mv, self.m, self.v, self.g_v, self.g_mv, self.g_m)
        self._tree = fb.finalize()
        self.dtype = dtype
        self._flip = None

    def flip_fields(self) -> tuple:
        """FLIP's fields (hv, vh, g_vh, g_hv), allocated on first use: the scatter of the particles'
        momentum alone, its velocity hv / m, and their adjoints (see ``kernels.g2p``).  ``hv`` and
        ``g_vh`` are zero between substeps like ``mv`` and ``g_v``."""
        if self._flip is None:
            fb = ti.FieldsBuilder()
            fields = tuple(ti.Vector.field(3, self.dtype) for _ in range(4))
            fb.dense(ti.ijk, self.res).place(*fields)
            self._flip = (fields, fb.finalize())
        return self._flip[0]


_GRIDS: dict[tuple, _Grid] = {}


def _grid_for(res: tuple[int, int, int], rt: runtime.RuntimeConfig) -> _Grid:
    # Keyed by runtime generation: a ti.init invalidates every field.
    key = (res, rt, runtime.generation())
    if key not in _GRIDS:
        for k in [k for k in _GRIDS if k[2] != runtime.generation()]:
            del _GRIDS[k]
        _GRIDS[key] = _Grid(res, rt.ti_dtype)
    return _GRIDS[key]


class Engine:
    """Runs substeps of one model under one config, forward and adjoint, on packed ``[N, 24]`` states."""

    def __init__(self, model: Model, config: SimConfig):
        self.model = model
        self.config = config
        vol = model.volume
        self.rt = runtime.ensure(vol.device, vol.dtype)
        self.device, self.dtype = vol.device, vol.dtype
        g = config.grid
        self.grid = _grid_for(g.res, self.rt)
        self.kinds, rows, _ = pack(model.colliders)
        if rows.shape[0] == 0:
            rows = np.zeros((1, rows.shape[1]))
        self.coll = torch.tensor(rows, dtype=self.dtype, device=self.device).contiguous()
        # cloth-only scenes: analytic colliders act on the cloth's vertices, and the grid sees them
        # shrunk by the stencil's reach (see cloth_contact); self.coll is then the grid's copy
        self.contact = CC.enabled(self.kinds, len(model.groups), len(model.cloth))
        self.coll_true = self.coll
        if self.contact:
            self.coll = CC.grid_rows(self.kinds, self.coll_true, config.grid.dx).contiguous()
        grid_update, grid_update_adjoint = K.grid_kernels(self.kinds)
        self.mesh_collider = next((c for c in model.colliders if c.kind == "mesh"), None)
        self._sdf_frame = None
        self.sdf = torch.zeros((1, 1, 1, 7), dtype=self.dtype, device=self.device)
        # Vectors go to the kernels as plain scalars: a ti.math.vec3 argument costs ~60 us of Python
        # per launch here, three float arguments ~15 us, and small scenes are launch-bound.
        self.origin = tuple(float(o) for o in g.origin)
        self.gravity = tuple(float(a) for a in config.gravity)
        # particles stay where their 3x3x3 stencil lies inside the grid (see kernels.g2p)
        self.clamp = g.stencil_box[0] + g.stencil_box[1]
        # the same box as two [3] tensors, for the strain limit's positions (see _limit)
        box = torch.tensor(self.clamp, dtype=self.dtype, device=self.device)
        self.box = (box[:3], box[3:])
        self.pins = torch.cat([model.pinned.to(self.dtype)[:, None], model.pin_velocity], dim=1).contiguous()
        n = model.num_particles
        # On the CPU each parallel loop costs a round trip through Taichi's thread pool (the caller
        # wakes the workers and sleeps until they finish: 70-100 us here, more than the whole loop
        # of a small scene); up to SERIAL_LOOPS_MAX particles every loop runs on the calling thread.
        self.serial = self.rt.arch == "cpu" and n <= SERIAL_LOOPS_MAX
        # the kernels' arguments that are fixed for this engine, bound by name once
        ox, oy, oz = self.origin
        at_origin = dict(ox=ox, oy=oy, oz=oz, inv_dx=g.inv_dx)
        transfer = dict(at_origin, dx=g.dx, serial=self.serial)
        inside = dict(zip(("lo_x", "lo_y", "lo_z", "hi_x", "hi_y", "hi_z"), self.clamp))
        gvx, gvy, gvz = self.gravity
        grid = dict(coll=self.coll, dt=config.dt, gvx=gvx, gvy=gvy, gvz=gvz, ox=ox, oy=oy, oz=oz, dx=g.dx, boundary=g.boundary,
                    serial=self.serial)
        self.clear_region = Launcher(K.clear_region, serial=self.serial)
        self.p2g_atomic = Launcher(K.p2g_atomic, **transfer)
        self.p2g_colored = Launcher(K.p2g_colored, **transfer)
        self.transfer_adjoint = Launcher(K.transfer_adjoint, **transfer)
        self.bin_particles = Launcher(K.bin_particles, **at_origin)
        # FLIP's grid fields, or (off) any field in their place: the kernels then never touch them
        self.flip_on = config.flip != 0
        self.hv, self.vh, self.g_vh, self.g_hv = self.grid.flip_fields() if self.flip_on else (self.grid.v,) * 4
        self.grid_update = Launcher(grid_update, flip_on=self.flip_on, **grid)
        self.grid_update_adjoint = Launcher(grid_update_adjoint, flip_on=self.flip_on, **grid)
        self.load_grid_region = Launcher(K.load_grid_region, flip_on=self.flip_on, serial=self.serial)
        self.g2p = Launcher(K.g2p, pins=self.pins, flip=config.flip_share, flip_on=self.flip_on, dt=config.dt, **transfer, **inside)
        self.flip_adjoint = Launcher(K.flip_adjoint, pins=self.pins, flip=config.flip_share, serial=self.serial, **at_origin)
        self.unpinned = (self.pins[:, 0:1] == 0).to(self.dtype)
        self.g2p_adjoint_prepare = Launcher(K.g2p_adjoint_prepare, pins=self.pins, flip_on=self.flip_on, dt=config.dt, inv_dx=g.inv_dx,
                                            serial=self.serial, **inside)
        # per material group: its constitutive kernel and adjoint over its particle range
        step = dict(dt=config.dt, inv_dx=g.inv_dx, serial=self.serial)
        self.constitutive = [tuple(Launcher(k, start=grp.start, end=grp.end, **step) for k in K.CONSTITUTIVE[grp.model])
                             for grp in model.groups]
        # per cloth: its element and vertex kernels (and their adjoints) over its particle ranges
        # (always a parallel loop: Taichi's autodiff of a serialized loop gave NaN gradients)
        self.cloth_elements = [Launcher(CL.cloth_elements, rest=c.rest_inverse, e0=c.element_start, dt=config.dt, inv_dx=g.inv_dx)
                               for c in model.cloth]
        self.cloth_vertices = [Launcher(CL.cloth_vertices, incidence=c.incidence, offsets=c.offsets, v0=c.vertex_start,
                                        dt=config.dt, serial=self.serial) for c in model.cloth]
        self.cloth_vertices_adjoint = [Launcher(CL.cloth_vertices_adjoint, incidence=c.incidence, offsets=c.offsets,
                                                v0=c.vertex_start, dt=config.dt, serial=self.serial) for c in model.cloth]
        self.n = n
        scatter = config.scatter
        if scatter == "auto":
            scatter = "atomic" if self.rt.arch == "cuda" else ("serial" if n <= SERIAL_SCATTER_MAX else "colored")
        self.scatter = scatter
        self.colored = scatter == "colored"
        if self.colored:
            self.blocks_per_colour = math.ceil(math.ceil(max(g.res) / K.SLAB) / K.COLOURS)
            self.colours = range(K.COLOURS)
            n_keys = K.COLOURS * self.blocks_per_colour
            self.bins = torch.zeros(2 * n + 2 * n_keys + 1, dtype=torch.int32, device=self.device)
        elif scatter == "serial":
            self.blocks_per_colour, self.colours = 1, range(1)
            self.bins = serial_bins(n, self.device)
        else:
            self.bins = None
        self._scratch: dict[str, torch.Tensor] = {}
        # per cloth: which mesh forces (bending, drag) act, or None; decided from the material at
        # the first substep (see set_mesh_forces): a term that is zero everywhere costs nothing
        self.mesh_forces: list[tuple[bool, bool] | None] = [None] * len(model.cloth)
        # the mesh forces on a pinned vertex are reactions of the pin: scattered to the grid they
        # would push the free vertices that share its nodes (a clamped strip bent ~1.6x too far)
        self.free = [(1 - model.pinned[c.vertex_start : c.vertex_start + c.num_vertices]).to(self.dtype)[:, None]
                     for c in model.cloth]
        # per cloth: the banded system of its backward-Euler bending step (cloth_forces.ImplicitBending),
        # built at the first substep with bending on
        self.implicit: list[CF.ImplicitBending | None] = [None] * len(model.cloth)
        # the mesh-force kernels, and per cloth their fixed arguments (see _mesh_kernel_args), built when first used
        self.mesh_forces_kernel = Launcher(MK.mesh_forces)
        self.mesh_forces_adjoint_kernel = Launcher(MK.mesh_forces_adjoint)
        self.mesh_kernel_data: list[dict | None] = [None] * len(model.cloth)
        # per cloth with vertex contact on: its particle rows and which may move (see _contact_rows)
        self.contact_rows = []
        for i, c in enumerate(model.cloth if self.contact else ()):
            assert c.element_start == c.vertex_start + c.num_vertices
            free = torch.cat([self.free[i][:, 0], torch.ones(c.num_elements, dtype=self.dtype, device=self.device)]).contiguous()
            self.contact_rows.append((slice(c.vertex_start, c.element_start + c.num_elements), free))
        if self.contact:
            contact, contact_adjoint = CC.vertex_kernels(self.kinds)
            at = dict(coll=self.coll_true, dt=config.dt, serial=self.serial, **inside)
            self.vertex_contact = Launcher(contact, **at)
            self.vertex_contact_adjoint = Launcher(contact_adjoint, **at)
            self._touched = torch.zeros(1, dtype=torch.int32, device=self.device)
        # per cloth: whether its strain limit is on (``max_stretch`` non-zero somewhere; see
        # set_mesh_forces) and its projection's mesh data (strain_limit.LimitMesh), built when first used
        self.limits: list[bool] = [False] * len(model.cloth)
        self.limit_mesh: list[SLM.LimitMesh | None] = [None] * len(model.cloth)
        self._no_tape = torch.zeros((1, GRID_TAPE_DIM), dtype=self.dtype, device=self.device)
        #: which per-particle parameter gradients of the mesh forces the caller wants: (bending
        #: stiffness, drag coefficient, mass); the others are not computed (``simulate`` sets it
        #: from what requires grad; a False here leaves zeros in those columns of dL/d(material))
        self.mesh_param_grads = (True, True, True)

    def set_mesh_forces(self, material: torch.Tensor) -> None:
        """Switch each cloth's bending, drag and strain limit on where its (element rows of)
        ``material`` are non-zero."""
        flags, limits = [], []
        for c in self.model.cloth:
            el = material[c.element_start : c.element_start + c.num_elements]
            bend, drag = bool((el[:, K.BEND] != 0).any()), bool((el[:, K.DRAG] != 0).any())
            flags.append((bend, drag) if (bend or drag) else None)
            limits.append(bool((el[:, K.LIMIT] != 0).any()))
        self.mesh_forces = flags
        self.limits = limits

    def _limit_mesh(self, i: int) -> SLM.LimitMesh:
        if self.limit_mesh[i] is None:
            c = self.model.cloth[i]
            self.limit_mesh[i] = SLM.LimitMesh(c.faces_local, c.rest_inverse, self.free[i][:, 0])
        return self.limit_mesh[i]

    def _limit(self, i: int, S_out: torch.Tensor, material: torch.Tensor) -> torch.Tensor | None:
        """Cloth ``i``'s strain limit on ``S_out``'s vertices, in place (see ``strain_limit``).

        Returns the vertices' pre-limit ``[V, 6]`` positions and velocities for the adjoint, or
        None where no triangle exceeds its limit (the projection is then the identity)."""
        c = self.model.cloth[i]
        vs = slice(c.vertex_start, c.vertex_start + c.num_vertices)
        ms = SLM.element_limits(material[c.element_start : c.element_start + c.num_elements, K.LIMIT])
        mesh = self._limit_mesh(i)
        x = S_out[vs, K.X : K.X + 3]
        if not SLM.violated(x, ms, mesh):
            return None
        pre = S_out[vs, K.X : K.X + 6].clone()
        xl, vl = SLM.limit(pre[:, 0:3], pre[:, 3:6], ms, mesh, self.config.dt, box=self.box)
        S_out[vs, K.X : K.X + 3] = xl
        S_out[vs, K.V : K.V + 3] = vl
        return pre

    def _limit_adjoint(self, i: int, pre: torch.Tensor, P: StepParams, GP: StepParams, G_next: torch.Tensor) -> None:
        """Adjoint of :meth:`_limit`, in place on ``G_next = dL/dS_next`` (vertex x and v rows); the
        max_stretch gradient accumulates into ``GP.material``.  Recomputes the projection from the
        pre-limit state under autograd."""
        c = self.model.cloth[i]
        vs = slice(c.vertex_start, c.vertex_start + c.num_vertices)
        el = slice(c.element_start, c.element_start + c.num_elements)
        with torch.enable_grad():
            x = pre[:, 0:3].detach().requires_grad_(True)
            v = pre[:, 3:6].detach().requires_grad_(True)
            raw = P.material[el, K.LIMIT].detach().requires_grad_(True)
            xl, vl = SLM.limit(x, v, SLM.element_limits(raw), self._limit_mesh(i), self.config.dt, box=self.box)
            gx, gv, gm = torch.autograd.grad((xl, vl), (x, v, raw), (G_next[vs, K.X : K.X + 3], G_next[vs, K.V : K.V + 3]))
        G_next[vs, K.X : K.X + 3] = gx
        G_next[vs, K.V : K.V + 3] = gv
        GP.material[el, K.LIMIT] += gm

    def _contact_rows(self, i: int) -> tuple[slice, torch.Tensor]:
        """Cloth ``i``'s particle rows (its vertices, then its elements: contiguous) and which may move
        (1) or not (0).

        The element particles (half of the cloth's mass) take the contact's velocity rule as well, so
        that the momentum they send to the grid next substep does not push into the collider; their
        positions are the vertices' centroids again right after (``sync_centroids``)."""
        return self.contact_rows[i]

    def _contact(self, i: int, S_out: torch.Tensor, P: StepParams, substep: int) -> torch.Tensor | None:
        """Cloth ``i``'s vertex contact with the analytic colliders on ``S_out``, in place (see
        ``cloth_contact``: one kernel launch).  Returns, for the adjoint, the pre-contact ``[V + E,
        6]`` positions and velocities, or None where no free vertex was inside a collider (the map
        was then the identity)."""
        vs, free = self._contact_rows(i)
        pre = torch.empty((vs.stop - vs.start, 6), dtype=self.dtype, device=self.device)
        self._touched.zero_()
        # g2p has moved the vertices to the end of the substep
        self.vertex_contact(S=S_out, start=vs.start, free=free, friction=P.friction, time=(substep + 1) * self.config.dt,
                            pre=pre, touched=self._touched)
        return pre if int(self._touched[0]) else None

    def _contact_adjoint(self, i: int, pre: torch.Tensor, P: StepParams, substep: int, G_next: torch.Tensor,
                         g_params: torch.Tensor) -> None:
        """Adjoint of :meth:`_contact`, in place on ``G_next`` (vertex x and v rows); the friction
        gradients accumulate into row 0 of ``g_params`` (columns 1..C), summed in a fixed order."""
        vs, free = self._contact_rows(i)
        g_mu = self._buf(f"g_mu{i}", (pre.shape[0], len(self.kinds)))
        self.vertex_contact_adjoint(G=G_next, start=vs.start, free=free, friction=P.friction,
                                    time=(substep + 1) * self.config.dt, pre=pre, g_mu=g_mu)
        g_params[0, 1:] += g_mu.sum(0)

    def _implicit(self, i: int, mass: torch.Tensor):
        """``cloth_forces.mesh_forces``'s ``implicit`` argument for cloth ``i`` (vertex ``mass [V]``)."""
        if self.implicit[i] is None:
            self.implicit[i] = CF.ImplicitBending(self.model.cloth[i].bending, self.free[i][:, 0])
        return self.implicit[i], mass, self.free[i][:, 0], self.config.dt

    def _mesh_force(self, i: int, S: torch.Tensor, material: torch.Tensor, flags: tuple[bool, bool]):
        """Bending and drag forces on cloth ``i``'s vertices ``[V, 3]`` and elements ``[E, 3]`` or None (``cloth_forces``)."""
        c = self.model.cloth[i]
        vs = slice(c.vertex_start, c.vertex_start + c.num_vertices)
        el = material[c.element_start : c.element_start + c.num_elements]
        return CF.mesh_forces(S[vs, K.X : K.X + 3], S[vs, K.V : K.V + 3], el[:, K.BEND], el[:, K.DRAG], c.bending,
                              c.faces_local, CL.ELEMENT_MASS_FRACTION, *flags,
                              implicit=self._implicit(i, material[vs, K.MASS]) if flags[0] else None,
                              tangential=el[:, K.DRAG_T])

    def _mesh_kernels_apply(self, i: int) -> bool:
        """Whether cloth ``i``'s mesh forces run as ``mesh_kernels``: a flat-rest mesh of at most
        ``MESH_KERNEL_MAX_VERTICES`` vertices; a mesh with rest curvature, or a larger one, takes the
        torch and scipy path of ``cloth_forces``."""
        c = self.model.cloth[i]
        return (self.mesh_forces[i] is not None and c.num_vertices <= MESH_KERNEL_MAX_VERTICES
                and not (self.mesh_forces[i][0] and c.bending.curved.numel()))

    def _mesh_kernel_data(self, i: int) -> dict:
        """Cloth ``i``'s fixed mesh-kernel data: ``args`` (the arguments shared by both kernels, with
        placeholders for those of the bending step), ``row_weight``, and the last banded factor
        (numpy) with its tensor."""
        data = self.mesh_kernel_data[i]
        if data is not None:
            return data
        c, op = self.model.cloth[i], self.model.cloth[i].bending
        t = dict(dtype=self.dtype, device=self.device)
        i32 = dict(dtype=torch.int32, device=self.device)
        lp, li, lv = MK.csr_arrays(op.matrix, self.dtype)
        tp, ti_, tv = MK.csr_arrays(op.matrix_t, self.dtype)
        rows, nv = max(op.num_rows, 1), c.num_vertices  # kernels take no empty arrays
        no_perm = torch.zeros(nv, **i32)
        args = dict(v0=c.vertex_start, e0=c.element_start, free=self.free[i][:, 0].contiguous(), l_ptr=lp, l_idx=li,
                    l_val=lv, lt_ptr=tp, lt_idx=ti_, lt_val=tv, faces=c.faces_local.to(**i32).contiguous(),
                    incidence=c.incidence, offsets=c.offsets, dt=self.config.dt, share=CL.ELEMENT_MASS_FRACTION,
                    serial=self.serial, LZ=torch.zeros((rows, 3), **t),
                    Y=torch.zeros((nv, 3), dtype=torch.float64, device=self.device),
                    k_row=torch.zeros(rows, **t), band=torch.zeros((1, 1), dtype=torch.float64, device=self.device),
                    perm=no_perm, inverse_perm=no_perm)
        row_weight = op.row_weight.to(**t).contiguous() if op.num_rows else args["k_row"]
        data = dict(args=args, row_weight=row_weight, factor=None, band=None)
        self.mesh_kernel_data[i] = data
        return data

    def _mesh_kernel_args(self, i: int, material: torch.Tensor) -> dict:
        """The arguments of ``mesh_kernels.mesh_forces`` (the adjoint's, less its own scratch) for
        cloth ``i`` this substep: the fixed mesh data, and the row stiffnesses and banded factor of
        ``material``."""
        c, (bend, drag) = self.model.cloth[i], self.mesh_forces[i]
        op = c.bending
        data = self._mesh_kernel_data(i)
        bend = bend and op.num_rows > 0
        args = dict(data["args"], bend=bend, drag=drag)
        if bend:
            el = slice(c.element_start, c.element_start + c.num_elements)
            vs = slice(c.vertex_start, c.vertex_start + c.num_vertices)
            k = CF.row_stiffness(material[el, K.BEND], op)
            system, mass, _, dt = self._implicit(i, material[vs, K.MASS])
            system.factor(mass, k, dt)
            if data["factor"] is not system._factor:  # refactored (another stiffness, mass or dt)
                data["factor"] = system._factor
                # by column (see mesh_kernels._solve): [V, u + 1]
                data["band"] = torch.from_numpy(system._factor).T.to(self.device).contiguous()
                data["perm"] = torch.from_numpy(system.perm).to(device=self.device, dtype=torch.int32)
                data["inverse_perm"] = torch.from_numpy(system.inverse_perm).to(device=self.device, dtype=torch.int32)
            args.update(k_row=k.contiguous(), band=data["band"], perm=data["perm"], inverse_perm=data["inverse_perm"])
        return args

    def _begin_substep(self) -> None:
        """Mark the grid busy; clear it whole if an earlier substep did not finish (see :class:`_Grid`)."""
        G = self.grid
        if not G.clean:
            full = (0, 0, 0, *G.res)
            region = dict(zip(("lo_i", "lo_j", "lo_k", "hi_i", "hi_j", "hi_k"), full))
            self.clear_region(a=G.mv, b=G.m, **region)
            self.clear_region(a=G.g_v, b=G.g_m, **region)
            if G._flip is not None:  # whichever engine left them (an engine with FLIP off never touches them)
                hv, _, g_vh, _ = G.flip_fields()
                self.clear_region(a=hv, b=G.m, **region)
                self.clear_region(a=g_vh, b=G.g_m, **region)
        G.clean = False

    def _buf(self, name: str, shape: tuple[int, ...], dtype=None) -> torch.Tensor:
        t = self._scratch.get(name)
        if t is None or tuple(t.shape) != tuple(shape):
            t = torch.zeros(shape, dtype=dtype or self.dtype, device=self.device)
            self._scratch[name] = t
        return t

    def _scatter(self, rec, bins, grid_a, grid_b) -> None:
        """p2g-form scatter of a ``[N, 16]`` record into two grid fields (p2g itself, and the
        scatter half of g2p's adjoint)."""
        if self.scatter == "atomic":
            self.p2g_atomic(W=rec, grid_mv=grid_a, grid_m=grid_b)
            return
        for colour in self.colours:
            self.p2g_colored(W=rec, bins=bins, colour=colour, blocks_per_colour=self.blocks_per_colour, grid_mv=grid_a, grid_m=grid_b)

    # ------------------------------------------------------------------ forward

    def _to_grid(self, S, S_out, P: StepParams, substep: int, W=None, bins=None, keep: list | None = None) -> None:
        """Constitutive update (F into ``S_out``), p2g and the grid update (velocities in ``grid.v``).

        The scatter record goes into ``W [N, 16]`` and the coloured binning into ``bins`` when given,
        else into scratch buffers.  With ``keep`` (a list) the backward pass's record of this substep,
        ``(W, bins, region, grid)``, is appended to it (``grid [nodes, 7]``: mv, m, v in the region);
        :meth:`step` adds a fifth and sixth element when a strain limit or vertex contact is on (each
        cloth's pre-limit and pre-contact vertices or None)."""
        cfg, G = self.config, self.grid
        W = self._buf("W", (self.n, K.W_DIM)) if W is None else W
        bins = self.bins if bins is None else bins
        for forward, _ in self.constitutive:
            forward(S=S, M=P.material, S_out=S_out, W=W)
        for i, c in enumerate(self.model.cloth):
            EX = self._buf(f"EX{i}", (c.num_elements, 9))
            EF = self._buf(f"EF{i}", (c.num_elements, 9))
            CL.gather_vertices(S, c.faces, EX)
            self.cloth_elements[i](EX=EX, S=S, M=P.material, S_out=S_out, W=W, EF=EF)
            self.cloth_vertices[i](S=S, M=P.material, EF=EF, S_out=S_out, W=W)
            if self._mesh_kernels_apply(i):
                self.mesh_forces_kernel(**self._mesh_kernel_args(i, P.material), S=S, M=P.material, W=W,
                                        T=self._buf(f"mesh_T{i}", (c.num_elements, 3)))
            elif self.mesh_forces[i] is not None:
                fv, fe = self._mesh_force(i, S, P.material, self.mesh_forces[i])
                W[c.vertex_start : c.vertex_start + c.num_vertices, K.WMOM : K.WMOM + 3] += cfg.dt * fv * self.free[i]
                if fe is not None:
                    W[c.element_start : c.element_start + c.num_elements, K.WMOM : K.WMOM + 3] += cfg.dt * fe
        self._region(W)
        self._begin_substep()
        if self.colored:
            r = self.region  # slabs across the longest side of the particles' box
            axis = max(range(3), key=lambda d: r[3 + d] - r[d])
            self.bin_particles(W=W, axis=axis, bins=bins)
        self._scatter(W, bins, G.mv, G.m)
        if self.flip_on:
            # the momentum alone into hv (its zero mass column adds nothing to g_m, which the adjoint overwrites)
            self._scatter(self._flip_record(S, W), bins, self.hv, G.g_m)
        self._update_sdf(substep)
        tape = self._no_tape
        if keep is not None:
            r = self.region
            nodes = max(r[3] - r[0], 0) * max(r[4] - r[1], 0) * max(r[5] - r[2], 0)
            dim = GRID_TAPE_DIM_FLIP if self.flip_on else GRID_TAPE_DIM
            tape = torch.empty((max(nodes, 1), dim), dtype=self.dtype, device=self.device)
            keep.append((W, bins, r, tape))
        self.grid_update(
            grid_mv=G.mv, grid_m=G.m, friction=P.friction, damping=P.damping, time=substep * cfg.dt, sdf=self.sdf,
            **self._region_args(), grid_hv=self.hv, grid_v=G.v, grid_vh=self.vh, tape=tape, save=int(keep is not None),
        )
        G.clean = True

    def _flip_record(self, S: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """FLIP's scatter record ``[N, 16]``: (x, 0, m v, m C), the APIC transfer of the momentum
        without the forces that ``W`` carries with it (see ``kernels.g2p``)."""
        R = self._buf("W_h", (self.n, K.W_DIM))
        m = W[:, K.WMASS : K.WMASS + 1]
        R[:, K.WX : K.WX + 3] = W[:, K.WX : K.WX + 3]
        R[:, K.WMASS] = 0.0
        R[:, K.WMOM : K.WMOM + 3] = m * S[:, K.V : K.V + 3]
        R[:, K.WA : K.WA + 9] = m * S[:, K.C : K.C + 9]
        return R

    def _region(self, W) -> None:
        """The node box ``[lo, hi)`` covering every particle's 3x3x3 stencil this substep.

        Grid passes run over this box only: most of a scene's grid is empty (a cloth in a room),
        and stale values outside the box are never read.
        """
        g = self.config.grid
        x = W[:, K.WX : K.WX + 3]
        # numpy on the CPU (a few torch ops cost more than the pass itself here), over a contiguous
        # [3, N] copy: a column reduction over the strided [N, 3] view took 1.4 ms for 22k particles, this 0.09 ms
        if x.device.type == "cpu":
            xs = np.ascontiguousarray(x.numpy().T)
            mn, mx = xs.min(axis=1), xs.max(axis=1)
        else:
            mn, mx = (t.cpu().numpy() for t in x.aminmax(dim=0))
        if not (np.isfinite(mn).all() and np.isfinite(mx).all()):
            self.region = (0, 0, 0, *g.res)  # a NaN is reported after the segment; keep the kernels in bounds
            return
        lo = np.floor((mn - self.origin) / g.dx - 0.5).astype(np.int64)
        hi = np.floor((mx - self.origin) / g.dx - 0.5).astype(np.int64) + 3
        self.region = (*(max(int(v), 0) for v in lo), *(min(int(h), r) for h, r in zip(hi, g.res)))

    def _region_args(self) -> dict[str, int]:
        """This substep's node box (see :meth:`_region`) as the grid kernels' arguments."""
        return dict(zip(("lo_i", "lo_j", "lo_k", "hi_i", "hi_j", "hi_k"), self.region))

    def _update_sdf(self, substep: int) -> None:
        """Load the mesh collider's field for the animation frame of this substep (cached per frame)."""
        if self.mesh_collider is None:
            return
        frame = min(self.mesh_collider.frame_at(substep * self.config.dt), len(self.mesh_collider.frames) - 1)
        if frame != self._sdf_frame:
            field = self.mesh_collider.field(self.config.grid, frame)
            self.sdf = torch.as_tensor(field, dtype=self.dtype, device=self.device).contiguous()
            self._sdf_frame = frame

    def step(self, S: torch.Tensor, P: StepParams, substep: int, S_out: torch.Tensor, W=None, bins=None,
             keep: list | None = None) -> None:
        """One substep from packed state ``S [N, 24]`` into ``S_out`` (must not alias ``S``); see
        :meth:`_to_grid` for the optional arguments."""
        self._to_grid(S, S_out, P, substep, W, bins, keep)
        self.g2p(S=S, grid_v=self.grid.v, grid_vh=self.vh, S_out=S_out)
        if any(self.limits) or self.contact:
            pre = [self._limit(i, S_out, P.material) if on else None for i, on in enumerate(self.limits)]
            touch = [self._contact(i, S_out, P, substep) if self.contact else None for i in range(len(self.model.cloth))]
            if keep is not None:
                keep[-1] = (*keep[-1], pre, touch)  # the adjoint's record of this substep (see step_adjoint)
        for c in self.model.cloth:
            CL.sync_centroids(c.faces, c.element_start, S_out)

    def run(self, S: torch.Tensor, P: StepParams, start: int, count: int, record: Sequence[int] = ()):
        """Advance ``count`` substeps from global substep ``start``.

        Returns the packed end state (a fresh tensor) and copies of the packed states after each
        local substep listed in ``record`` (1-based).
        """
        self.set_mesh_forces(P.material)
        bufs = (self._buf("S0", tuple(S.shape)), self._buf("S1", tuple(S.shape)))
        rec = set(record)
        frames = []
        cur = S
        for j in range(count):
            nxt = bufs[j % 2]
            self.step(cur, P, start + j, nxt)
            cur = nxt
            if (j + 1) in rec:
                frames.append(cur.clone())
        return cur.clone(), frames

    # ------------------------------------------------------------------ adjoint

    def step_adjoint(self, S, S_next, G_next, P: StepParams, GP: StepParams, substep: int, G_out, g_params, taped) -> None:
        """Adjoint of :meth:`step`: ``G_next = dL/dS_next`` -> ``G_out = dL/dS`` (overwritten).

        ``taped = (W, bins, region, grid)`` is what the forward substep left (see
        :meth:`backward_segment`): nothing of the forward is recomputed here.  Per-particle parameter
        gradients accumulate into ``GP.material``; damping and friction gradients into
        ``g_params [rows, 1 + C]`` (see ``grid_update_adjoint``).
        """
        cfg, Gr = self.config, self.grid
        W, bins, self.region, grid = taped[:4]
        self._begin_substep()
        self.load_grid_region(buf=grid, **self._region_args(), mv=Gr.mv, m=Gr.m, v=Gr.v, vh=self.vh)
        self._update_sdf(substep)
        for c in self.model.cloth:
            # element particles were moved to their vertices' centroid after g2p
            CL.sync_centroids_adjoint(c.faces, c.element_start, G_next)
        limited = [(i, pre) for i, pre in enumerate(taped[4]) if pre is not None] if len(taped) > 4 else []
        touched = [(i, pre) for i, pre in enumerate(taped[5]) if pre is not None] if len(taped) > 5 else []
        if limited or touched:
            # the strain limit, then vertex contact, ran after g2p: back through them (in reverse)
            # to dL/d(g2p's output), whose velocities g2p's adjoint reads (its clamp test) in place
            # of the corrected ones
            S_next = S_next.clone()
            for i, rec in touched:
                self._contact_adjoint(i, rec, P, substep, G_next, g_params)
                S_next[self._contact_rows(i)[0], K.X : K.X + 6] = rec
            for i, pre in limited:
                self._limit_adjoint(i, pre, P, GP, G_next)
                c = self.model.cloth[i]
                S_next[c.vertex_start : c.vertex_start + c.num_vertices, K.X : K.X + 6] = pre
        R = self._buf("R", (self.n, K.W_DIM))
        G_W = self._buf("G_W", (self.n, K.W_DIM))
        self.g2p_adjoint_prepare(S=S, S_out=S_next, G_out=G_next, W=W, R=R, G_in=G_out)
        # into g_v (zero between substeps); R's mass column is zero, and grid_update_adjoint overwrites g_m
        self._scatter(R, bins, Gr.g_v, Gr.g_m)
        flip = self.flip_on
        if flip:
            # FLIP's share flip (v - gather(vh)): the scatter of its record into g_vh (zero between
            # substeps), its position gradient through the gather's weights (GX), its direct dL/dv
            R_h = self._buf("R_h", (self.n, K.W_DIM))
            GX = self._buf("GX", (self.n, 3))
            self.flip_adjoint(W=W, G_out=G_next, grid_vh=self.vh, R=R_h, GX=GX)
            self._scatter(R_h, bins, self.g_vh, Gr.g_m)
            g_v_direct = cfg.flip_share * G_next[:, K.V : K.V + 3] * self.unpinned
        self.grid_update_adjoint(
            grid_mv=Gr.mv, grid_m=Gr.m, friction=P.friction, damping=P.damping, time=substep * cfg.dt, sdf=self.sdf,
            **self._region_args(), grid_vh=self.vh, g_grid_v=Gr.g_v, g_grid_vh=self.g_vh, g_grid_mv=Gr.g_mv, g_grid_m=Gr.g_m,
            g_grid_hv=self.g_hv, g_params=g_params, deterministic=g_params.shape[0] > 1,
        )
        Gr.clean = True
        self.transfer_adjoint(W=W, R=R, grid_v=Gr.v, g_grid_mv=Gr.g_mv, g_grid_m=Gr.g_m, G_W=G_W)
        if flip:
            # vh's scatter (x, 0, m v, m C) back to the particles: transfer_adjoint's p2g half, with
            # a zero g2p record (its mass column is zero, so g_m's values do not enter)
            W_h = self._flip_record(S, W)
            G_Wh = self._buf("G_Wh", (self.n, K.W_DIM))
            self.transfer_adjoint(W=W_h, R=self._buf("R_zero", (self.n, K.W_DIM)), grid_v=Gr.v, g_grid_mv=self.g_hv,
                                  g_grid_m=Gr.g_m, G_W=G_Wh)
            # both position gradients through the scatter record's position (for cloth elements the
            # vertices' centroid), which the constitutive and cloth adjoints carry back
            G_W[:, K.WX : K.WX + 3] += GX + G_Wh[:, K.WX : K.WX + 3]
        for _, adjoint in self.constitutive:
            adjoint(S=S, M=P.material, G_out=G_next, G_W=G_W, G_in=G_out, G_M=GP.material)
        for i, c in enumerate(self.model.cloth):
            self._cloth_adjoint(i, c, S, W, P, GP, G_next, G_W, G_out)
        if flip:
            m = W[:, K.WMASS : K.WMASS + 1]
            g_mom, g_a = G_Wh[:, K.WMOM : K.WMOM + 3], G_Wh[:, K.WA : K.WA + 9]
            G_out[:, K.V : K.V + 3] += g_v_direct + m * g_mom
            G_out[:, K.C : K.C + 9] += m * g_a
            GP.material[:, K.MASS] += (g_mom * S[:, K.V : K.V + 3]).sum(1) + (g_a * S[:, K.C : K.C + 9]).sum(1)

    def _cloth_adjoint(self, i, c, S, W, P: StepParams, GP: StepParams, G_next, G_W, G_out) -> None:
        G_EF = self._buf(f"G_EF{i}", (c.num_elements, 9))
        EX = self._buf(f"EX{i}", (c.num_elements, 9))
        CL.gather_vertices(S, c.faces, EX)  # the element kernel's input, from this substep's state
        self.cloth_vertices_adjoint[i](S=S, M=P.material, G_out=G_next, G_W=G_W, G_in=G_out, G_M=GP.material, G_EF=G_EF)
        if self.mesh_forces[i] is not None:
            # after cloth_vertices_adjoint, which overwrites the vertices' dL/dv, and before the
            # element kernel's autodiff, which may consume dL/dW of the element rows
            self._mesh_force_adjoint(i, S, P, GP, G_W, G_out)

        # The element kernel is differentiated by Taichi's autodiff, which reads and writes the
        # ``.grad`` of torch tensors that require grad: these scratch leaves only carry those
        # adjoint buffers (they are not part of any autograd graph).
        def leaf(t, grad=None):
            t = t.detach().clone().requires_grad_(True)
            t.grad = torch.zeros_like(t) if grad is None else grad
            return t

        EX = leaf(EX)
        S_in = leaf(S)
        M = leaf(P.material, GP.material)  # parameter gradients accumulate in place
        S_out = leaf(S, G_next)  # outputs' values are not read by the adjoint, only their .grad
        W = leaf(W, G_W)
        EF = leaf(self._scratch[f"EF{i}"], G_EF)
        self.cloth_elements[i].grad(EX=EX, S=S_in, M=M, S_out=S_out, W=W, EF=EF)
        el = slice(c.element_start, c.element_start + c.num_elements)
        G_out[el, K.V : K.V + 3] = S_in.grad[el, K.V : K.V + 3]
        G_out[el, K.C : K.C + 9] = S_in.grad[el, K.C : K.C + 9]
        G_out[el, K.F : K.F + 9] = S_in.grad[el, K.F : K.F + 9]
        CL.gather_vertices_adjoint(EX.grad, c.faces, G_out)

    def _mesh_force_adjoint(self, i: int, S, P: StepParams, GP: StepParams, G_W, G_out) -> None:
        """The mesh forces entered the vertices' momentum as ``dt f``: their vector-Jacobian product
        with ``dt dL/d(momentum)``: ``mesh_kernels.mesh_forces_adjoint`` for a flat-rest mesh, else
        written out in torch (``cloth_forces.mesh_forces_adjoint``) or, where that does not cover
        the mesh, by torch's autograd on a recomputation from this substep's state."""
        c, flags, free = self.model.cloth[i], self.mesh_forces[i], self.free[i]
        if self._mesh_kernels_apply(i):
            args = self._mesh_kernel_args(i, P.material)
            rows = args["LZ"].shape[0]
            want_k, want_drag, want_mass = self.mesh_param_grads
            want_k, want_mass = want_k and args["bend"], want_mass and args["bend"]
            g_k = self._buf(f"mesh_g_k{i}", (rows,))
            self.mesh_forces_adjoint_kernel(**args, S=S, M=P.material, G_W=G_W, G_out=G_out, G_M=GP.material,
                                            row_weight=self.mesh_kernel_data[i]["row_weight"],
                                            LG=self._buf(f"mesh_LG{i}", (rows, 3)),
                                            Y2=self._buf(f"mesh_Y2{i}", (c.num_vertices, 3), torch.float64),
                                            GC=self._buf(f"mesh_GC{i}", (c.num_elements, 18)), g_k=g_k, want_k=want_k,
                                            want_drag=want_drag and flags[1], want_mass=want_mass)
            if want_k:
                el = slice(c.element_start, c.element_start + c.num_elements)
                GP.material[el, K.BEND] += CF.rows_to_elements(g_k, c.bending, c.num_elements)
            return
        vs = slice(c.vertex_start, c.vertex_start + c.num_vertices)
        el = slice(c.element_start, c.element_start + c.num_elements)
        dt = self.config.dt
        g_f = dt * G_W[vs, K.WMOM : K.WMOM + 3] * free
        g_fe = dt * G_W[el, K.WMOM : K.WMOM + 3] if flags[1] else None
        x, v = S[vs, K.X : K.X + 3], S[vs, K.V : K.V + 3]
        bend, drag, mass = P.material[el, K.BEND], P.material[el, K.DRAG], P.material[vs, K.MASS]
        tan = P.material[el, K.DRAG_T]
        implicit = self._implicit(i, mass) if flags[0] else None
        grads = CF.mesh_forces_adjoint(x, v, bend, drag, c.bending, c.faces_local, CL.ELEMENT_MASS_FRACTION, *flags,
                                       implicit=implicit, g_f=g_f, g_fe=g_fe, params=self.mesh_param_grads, tangential=tan)
        if grads is None:
            grads = self._mesh_force_vjp(i, x, v, bend, drag, mass, tan, g_f, g_fe)
        gx, gv, gb, gd, gm, gt = grads
        for rows, col, g in ((vs, K.X, gx), (vs, K.V, gv)):
            if g is not None:
                G_out[rows, col : col + 3] += g
        for col, g in ((K.BEND, gb), (K.DRAG, gd), (K.DRAG_T, gt)):
            if g is not None:
                GP.material[el, col] += g
        if gm is not None:
            GP.material[vs, K.MASS] += gm

    def _mesh_force_vjp(self, i: int, x, v, bend, drag, mass, tan, g_f, g_fe):
        """:meth:`_mesh_force_adjoint` by torch's autograd (meshes with rest curvature): dL/d(x, v,
        bending, drag, mass, tangential share)."""
        c, flags = self.model.cloth[i], self.mesh_forces[i]
        with torch.enable_grad():
            x, v, bend, drag, mass, tan = (t.detach().requires_grad_(True) for t in (x, v, bend, drag, mass, tan))
            fv, fe = CF.mesh_forces(x, v, bend, drag, c.bending, c.faces_local, CL.ELEMENT_MASS_FRACTION, *flags,
                                    implicit=self._implicit(i, mass) if flags[0] else None, tangential=tan)
            outs, grads = [fv], [g_f]
            if fe is not None:
                outs.append(fe)
                grads.append(g_fe)
            return torch.autograd.grad(outs, (x, v, bend, drag, mass, tan), grads, allow_unused=True)

    def record_segment(self, S0: torch.Tensor, P: StepParams, start: int, count: int, scratch: bool = True) -> Tape:
        """Simulate ``count`` substeps from ``S0`` keeping what the adjoint reads (see :class:`Tape`).

        ``scratch`` puts the tape in the engine's reusable buffers (a backward pass that
        re-simulates); otherwise it is fresh memory that outlives the next segment (a forward pass
        that keeps its tape for the backward pass, see ``segment``)."""
        buf = self._buf if scratch else (lambda name, shape, dtype=None: torch.empty(shape, dtype=dtype or self.dtype,
                                                                                      device=self.device))
        with torch.no_grad():
            states = buf("tape", (count + 1,) + tuple(S0.shape))
            W = buf("tape_W", (count, self.n, K.W_DIM))
            bins = buf("tape_bins", (count,) + tuple(self.bins.shape), torch.int32) if self.colored else None
            P = StepParams(*[t.detach().contiguous() for t in P.tensors()])
            self.set_mesh_forces(P.material)
            states[0].copy_(S0.detach())
            taped: list = []
            for j in range(count):
                self.step(states[j], P, start + j, states[j + 1], W=W[j], bins=bins[j] if self.colored else self.bins,
                          keep=taped)
        return Tape(states, W, bins, taped)

    def backward_segment(self, S0: torch.Tensor, P: StepParams, start: int, count: int, record: Sequence[int],
                         G_end: torch.Tensor, G_frames: torch.Tensor | None, tape: Tape | None = None):
        """Gradients of a segment: ``(dL/dS0, GP)``.

        ``G_end [N, 24]`` is dL/d(end state); ``G_frames [k, N, 24]`` dL/d(recorded states).
        ``tape`` is the segment's forward pass as :meth:`record_segment` kept it; without it the
        segment is re-simulated first (keeping every substep's state, scatter record, binning and
        grid region, so that the adjoint recomputes nothing of the forward: recomputing the grid of
        each substep cost ~13% of forward+backward on the 22k-particle block).
        """
        with torch.no_grad():
            if tape is None:
                tape = self.record_segment(S0, P, start, count)
            P = StepParams(*[t.detach().contiguous() for t in P.tensors()])
            self.set_mesh_forces(P.material)
            GP = StepParams(*[torch.zeros_like(t) for t in P.tensors()])
            # deterministic per-slab partial sums on CPUs; atomics on GPUs (see grid_update_adjoint)
            rows = self.config.grid.res[0] if self.rt.arch == "cpu" else 1
            g_params = torch.zeros(rows, 1 + len(self.kinds), dtype=self.dtype, device=self.device)
            G = [G_end.contiguous().clone(), torch.empty_like(G_end)]
            rec_index = {r: i for i, r in enumerate(record)}
            for j in range(count - 1, -1, -1):
                if (j + 1) in rec_index:
                    G[0] += G_frames[rec_index[j + 1]]
                self.step_adjoint(tape.states[j], tape.states[j + 1], G[0], P, GP, start + j, G[1], g_params, tape.taped[j])
                G.reverse()
            sums = g_params.sum(dim=0)
            GP.damping.add_(sums[0:1])
            if self.kinds:
                GP.friction.add_(sums[1:])
            return G[0], GP


@dataclasses.dataclass
class Tape:
    """A segment's forward pass as the adjoint reads it: the ``[count + 1, N, 24]`` states, the
    ``[count, N, 16]`` scatter records, the coloured binnings (or None) and, per substep, what
    ``Engine.step(keep=...)`` appended (record, binning, grid region, grid values, and with a strain
    limit or vertex contact on, each cloth's pre-limit ``[V, 6]`` positions and velocities and its
    pre-contact ``[V + E, 6]`` ones with the colliders that acted, or None)."""

    states: torch.Tensor
    W: torch.Tensor
    bins: torch.Tensor | None
    taped: list

    def nbytes(self) -> int:
        grids = sum(t[3].numel() * t[3].element_size() for t in self.taped)
        # with a strain limit or vertex contact, substeps also keep their cloths' pre-limit and
        # pre-contact vertices (see Engine.step)
        kept = [p if isinstance(p, torch.Tensor) else p[0] for t in self.taped for extra in t[4:] for p in extra if p is not None]
        grids += sum(p.numel() * p.element_size() for p in kept)
        bins = 0 if self.bins is None else self.bins.numel() * self.bins.element_size()
        return self.states.numel() * self.states.element_size() + self.W.numel() * self.W.element_size() + bins + grids


def locate_nonfinite(engine: Engine, state, P: StepParams, start: int, count: int) -> int | None:
    """Re-run a segment substep by substep; the first global substep whose result is not finite."""
    with torch.no_grad():
        cur = pack_state(*[t.detach() for t in state])
        for j in range(count):
            cur, _ = engine.run(cur, P, start + j, 1)
            if not torch.isfinite(cur).all():
                return start + j + 1
    return None


def raise_nonfinite(engine, state, P, start, count):
    sub = locate_nonfinite(engine, state, P, start, count)
    spf = engine.config.substeps_per_frame
    if sub is None:
        sub = start + count
    frame = (sub + spf - 1) // spf
    raise SimulationError(
        f"simulation produced NaN/inf at substep {sub} (during frame {frame}); "
        f"dt={engine.config.dt:.3g} s may be above the stability limit for these parameters",
        substep=sub,
        frame=frame,
    )
