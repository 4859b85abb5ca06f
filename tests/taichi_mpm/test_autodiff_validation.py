"""Taichi's global-data-access validation (``ti.ad.Tape(validation=True)``, debug mode) on the one
kernel body that Taichi's autodiff differentiates: the cloth element.  Every other kernel has a
hand-written adjoint checked against the PyTorch twin and finite differences.

``Tape(validation=True)`` needs fields (it crashed on ndarray kernels here), so the element body
(``cloth.cloth_element``, the same function the ndarray kernel calls) runs in a field kernel, in a
subprocess because debug mode needs its own ``ti.init``.
"""

import json
import subprocess
import sys

SCRIPT = r'''
import json, math, numpy as np, taichi as ti
ti.init(arch=ti.cpu, default_fp=ti.f64, debug=True, offline_cache=False, log_level=ti.ERROR)
from dreamcloth.taichi_mpm.builder import ModelBuilder
from dreamcloth.taichi_mpm.cloth import cloth_element, grid_mesh
from dreamcloth.taichi_mpm import kernels as K
import torch

b = ModelBuilder(torch.float64)
verts, faces = grid_mesh(4, 4, (0.3, 0.3), (0.5, 0.5, 0.5))
b.add_cloth("sheet", verts, faces)
model, state = b.build([])
c = model.cloth[0]
n, E = model.num_particles, c.num_elements
rng = np.random.default_rng(0)
S0 = np.zeros((n, 24)); S0[:, 0:3] = state.x.numpy(); S0[:, 3:6] = rng.normal(0, 0.1, (n, 3))
S0[:, 6:15] = rng.normal(0, 2.0, (n, 9)); S0[:, 15:24] = state.F.reshape(n, 9).numpy()
S0[c.element_start:, 15:24] += rng.normal(0, 0.05, (E, 9))
M0 = np.zeros((n, 10)); M0[:, 0] = 40.0; M0[:, 1] = 60.0; M0[:, 2] = model.volume.numpy(); M0[:, 3] = 1e-3
M0[:, 7] = 300.0; M0[:, 8] = 200.0; M0[:, 9] = 0.3
f = c.faces.numpy().reshape(-1, 3)
EX0 = S0[f, 0:3].reshape(E, 9) + rng.normal(0, 0.003, (E, 9))

def field(shape):
    return ti.field(ti.f64, shape=shape, needs_grad=True)

EX, S, M, rest = field((E, 9)), field((n, 24)), field((n, 10)), field((E, 4))
S_out, W, EF, loss = field((n, 24)), field((n, 16)), field((E, 9)), ti.field(ti.f64, shape=(), needs_grad=True)
EX.from_numpy(EX0); S.from_numpy(S0); M.from_numpy(M0); rest.from_numpy(c.rest_inverse.numpy())

@ti.kernel
def elements(dt: ti.f64, inv_dx: ti.f64, e0: ti.i32):
    for e in range(E):
        cloth_element(e, EX, S, M, rest, dt, inv_dx, e0, S_out, W, EF)

@ti.kernel
def reduce():
    for i, j in S_out:
        loss[None] += ti.sin(1.0 + i + 0.7 * j) * S_out[i, j]
    for i, j in W:
        loss[None] += ti.cos(0.3 * i + j) * W[i, j]
    for i, j in EF:
        loss[None] += ti.sin(0.5 * i - j) * EF[i, j]

with ti.ad.Tape(loss=loss, validation=True):
    elements(1e-3, 32.0, c.element_start)
    reduce()
g = EX.grad.to_numpy()
gm = M.grad.to_numpy()[:, [0, 1, 7, 8, 9]]  # read before the next Tape clears every gradient

# the check is live: a kernel that overwrites what it read is caught
a, bb, l2 = field(4), field(4), ti.field(ti.f64, shape=(), needs_grad=True)

@ti.kernel
def violates():
    for i in range(4):
        bb[i] = a[i] * 2.0
        a[i] = bb[i] + 1.0

@ti.kernel
def reduce2():
    for i in range(4):
        l2[None] += a[i]

caught = False
try:
    with ti.ad.Tape(loss=l2, validation=True):
        violates()
        reduce2()
except Exception as exc:
    caught = "global data access rule" in str(exc)
print(json.dumps({"finite": bool(np.isfinite(g).all()), "nonzero": float(np.abs(g).max()),
                  "param_grad": float(np.abs(gm).max()), "violation_caught": caught}))
'''


def test_cloth_element_obeys_the_global_data_access_rule(tmp_path):
    script = tmp_path / "validate_cloth.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["finite"] and result["nonzero"] > 0 and result["param_grad"] > 0
    assert result["violation_caught"], "the validation did not flag a kernel that breaks the rule"
