"""The cloth's in-plane (membrane) energy on its triangles, for the grid-free solver
(``mesh_cloth``, whose docstring gives the energy and its force): the stencil that maps vertex
positions to the triangles' deformation gradients, the force written out on it, and the energy it
derives from (for the tests)."""

from __future__ import annotations

import dataclasses

import torch
from scipy import sparse

from . import cloth_forces as CF

#: floor of det(F^T F) in the membrane force: a triangle squashed to a line keeps a finite force
_DET_FLOOR = 1e-12


def membrane_energy(x, faces, dm_inv, area, mu, lam) -> torch.Tensor:
    """The membrane energy (``mesh_cloth`` module docstring) by the singular values of F: the
    definition that :func:`stencil_membrane_forces` is tested against."""
    x0, x1, x2 = x[faces[:, 0]], x[faces[:, 1]], x[faces[:, 2]]
    F = torch.stack([x1 - x0, x2 - x0], 2) @ dm_inv
    s = torch.linalg.svdvals(F)
    return (area * (mu * ((s - 1) ** 2).sum(1) + 0.5 * lam * (s.prod(1) - 1) ** 2)).sum()


@dataclasses.dataclass(frozen=True)
class MembraneStencil:
    """The linear map from vertex positions to the triangles' ``F = [x1 - x0, x2 - x0] Dm^-1``:
    ``L [2E, V]`` (row 2t + j: column j of triangle t's F) as sparse CSR tensors with its transpose,
    and ``coef [E, 2, 3]``, L's entries on each triangle's three vertices."""

    coef: torch.Tensor
    matrix: torch.Tensor
    matrix_t: torch.Tensor


def membrane_stencil(faces: torch.Tensor, dm_inv: torch.Tensor, num_vertices: int) -> MembraneStencil:
    """The :class:`MembraneStencil` of triangles ``faces [E, 3]`` with rest inverses ``dm_inv [E, 2, 2]``."""
    ne = int(faces.shape[0])
    # column j of F: Dm^-1[0, j] (x1 - x0) + Dm^-1[1, j] (x2 - x0)
    a, c = dm_inv[:, 0, :], dm_inv[:, 1, :]  # [E, 2]: Dm^-1[0, j], Dm^-1[1, j]
    coef = torch.stack([-(a + c), a, c], 2)  # [E, 2 (column), 3 (vertex)]
    rows = torch.arange(2 * ne).reshape(ne, 2, 1).expand(ne, 2, 3).reshape(-1)
    cols = faces.cpu()[:, None, :].expand(ne, 2, 3).reshape(-1)
    m = sparse.csr_matrix((coef.detach().cpu().double().numpy().reshape(-1), (rows.numpy(), cols.numpy())),
                          shape=(2 * ne, num_vertices))
    return MembraneStencil(coef, CF.torch_csr(m, coef.dtype, coef.device), CF.torch_csr(m.T.tocsr(), coef.dtype, coef.device))


def stencil_membrane_forces(x: torch.Tensor, stencil: MembraneStencil, area: torch.Tensor, mu: torch.Tensor,
                            lam: torch.Tensor) -> torch.Tensor:
    """Vertex forces ``[V, 3]`` of the in-plane fixed-corotated membrane (``mesh_cloth`` module
    docstring) for positions ``x [V, 3]``, rest ``area [E]`` and Lame ``mu, lam [E]``, as two sparse
    products: F's columns ``L x`` and the forces ``-L^T (A dpsi/dF)`` (the force is the transpose of
    the map from positions to F; 3x faster on a 41x41 cloth than gathers and ``index_add``)."""
    return _energy_forces(x, stencil, area, mu, lam, False)[1]


def stencil_membrane_energy_forces(x: torch.Tensor, stencil: MembraneStencil, area: torch.Tensor, mu: torch.Tensor,
                                   lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The membrane energy (a scalar) and :func:`stencil_membrane_forces` from one evaluation of F
    (what the implicit step's line search needs at each trial point)."""
    return _energy_forces(x, stencil, area, mu, lam, True)


def _energy_forces(x, stencil, area, mu, lam, with_energy: bool):
    fr = CF.sparse_product(x, stencil.matrix, stencil.matrix_t)  # [2E, 3]: rows 2t + j, column j of F_t
    f0, f1 = fr[0::2], fr[1::2]
    a, b, d = (f0 * f0).sum(1), (f0 * f1).sum(1), (f1 * f1).sum(1)  # C = F^T F
    J = (a * d - b * b).clamp_min(_DET_FLOOR).sqrt()
    root = (a + d + 2 * J).sqrt()  # s1 + s2, the singular values' sum
    c = 2 * mu / root
    l = lam * (J - 1) / J
    # psi = mu ((s1 - 1)^2 + (s2 - 1)^2) + lam/2 (J - 1)^2 with s1^2 + s2^2 = tr C
    energy = (area * (mu * (a + d - 2 * root + 2) + 0.5 * lam * (J - 1) ** 2)).sum() if with_energy else None
    # S = 2 mu I - c (I + adj(C) / J) + lam (J - 1) adj(C) / J,  adj(C) = [[d, -b], [-b, a]]
    s00 = 2 * mu - c * (1 + d / J) + l * d
    s11 = 2 * mu - c * (1 + a / J) + l * a
    s01 = (c / J - l) * b
    w = area[:, None]
    p = torch.stack([w * (f0 * s00[:, None] + f1 * s01[:, None]), w * (f0 * s01[:, None] + f1 * s11[:, None])], 1)
    return energy, -CF.sparse_product(p.reshape(-1, 3), stencil.matrix_t, stencil.matrix)
