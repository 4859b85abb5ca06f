"""The packed data layouts every kernel shares, and the ``ti.func`` accessors of packed rows.

Particle data travels packed (see ``kernels``: every array handed to a kernel costs launch time):
a state is one ``[N, 24]`` array, the per-particle material one ``[N, 14]``, the pins ``[N, 4]`` and
the scatter record ``[N, 16]``.  The solid kernels (``kernels``), the cloth kernels (``cloth``) and
the engine (``solver``) all read the column offsets from here.
"""

import taichi as ti
import torch

# state layout [N, 24]
X, V, C, F = 0, 3, 6, 15
STATE_DIM = 24
# material layout [N, 14]: mu, lambda, rest volume (area for cloth elements), mass, external force,
# and for cloth elements the shear and normal stiffness, the friction of the return mapping, the
# bending stiffness, the drag coefficient, the maximum stretch and the drag's tangential share (read
# by the mesh forces and the strain limit: mesh_kernels, cloth_forces, strain_limit)
MU, LAM, VOL, MASS, FORCE, SHEAR, NORMAL, CFRIC, BEND, DRAG, LIMIT, DRAG_T = 0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13
MAT_DIM = 14
# pins [N, 4]: flag (0/1), prescribed velocity
PIN_DIM = 4
# scatter record [N, 16]: position, mass, momentum m v + dt f, affine matrix A
WX, WMASS, WMOM, WA = 0, 3, 4, 7
W_DIM = 16
# The adjoint of g2p's transfer is a scatter of the same form as p2g (``g_v_i += w_ip (g_v + g_B dpos)``),
# so its record R has W's layout and runs through the same scatter kernels: position (WX), zero (WMASS),
# dL/dv_new (WMOM), (4/dx^2) dL/dC (WA; B = sum w v_i dpos^T)


ARR = ti.types.ndarray(ndim=2)
SDF = ti.types.ndarray(ndim=4)  # a mesh collider's field [X, Y, Z, 7]: phi, normal, velocity
VEC = ti.types.ndarray(ndim=1)
INT = ti.types.ndarray(dtype=ti.i32, ndim=1)


# --------------------------------------------------------------------------------------------
# packed-array access


@ti.func
def vec3(a: ti.template(), p, col: ti.template()):
    return ti.Vector([a[p, col], a[p, col + 1], a[p, col + 2]])


@ti.func
def mat3(a: ti.template(), p, col: ti.template()):
    return ti.Matrix([[a[p, col + 3 * i + j] for j in ti.static(range(3))] for i in ti.static(range(3))])


@ti.func
def put3(a: ti.template(), p, col: ti.template(), v):
    for i in ti.static(range(3)):
        a[p, col + i] = v[i]


@ti.func
def put33(a: ti.template(), p, col: ti.template(), m):
    for i, j in ti.static(ti.ndrange(3, 3)):
        a[p, col + 3 * i + j] = m[i, j]


@ti.func
def add3(a: ti.template(), p, col: ti.template(), v):
    for i in ti.static(range(3)):
        a[p, col + i] += v[i]


# --------------------------------------------------------------------------------------------
# packing torch tensors into the layouts


def pack_state(x, v, C, F) -> torch.Tensor:
    """``[N, 24]`` packed state (see the state layout above)."""
    n = x.shape[0]
    return torch.cat([x, v, C.reshape(n, 9), F.reshape(n, 9)], dim=1).contiguous()


def unpack_state(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x [N,3], v [N,3], C [N,3,3], F [N,3,3]) as fresh tensors."""
    n = S.shape[0]
    return (
        S[:, X : X + 3].clone(), S[:, V : V + 3].clone(),
        S[:, C : C + 9].reshape(n, 3, 3).clone(), S[:, F : F + 9].reshape(n, 3, 3).clone(),
    )


def pack_material(mu, lam, vol, mass, force, shear=None, normal=None, cloth_friction=None, bending=None, drag=None,
                  max_stretch=None, drag_tangential=None) -> torch.Tensor:
    """``[N, 14]`` packed per-particle material: mu, lambda, rest volume, mass, force, and the cloth
    elements' shear stiffness, normal stiffness, friction, bending stiffness, drag coefficient,
    maximum stretch and drag's tangential share (zeros where not given; a zero switches that term off)."""
    z = torch.zeros_like(mu)
    cols = [mu, lam, vol, mass]
    extra = [t if t is not None else z for t in (shear, normal, cloth_friction, bending, drag, max_stretch, drag_tangential)]
    return torch.cat([c[:, None] for c in cols] + [force] + [e[:, None] for e in extra], dim=1).contiguous()
