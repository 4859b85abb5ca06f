"""Differentiable MLS-MPM in Taichi, bridged to PyTorch with exact long-horizon gradients.

A physics library: it imports neither the renderer, the prior nor the application.  Layers,
top-down: ``simulate`` (the public rollout) -> ``segment`` (the autograd Function of one
checkpointed segment) -> ``solver.Engine`` (sequences the kernels) -> ``kernels``/``cloth``
(Taichi kernels on the packed layouts of ``layout``).  Scenes are built with ``ModelBuilder``,
colliders and sampling; ``parameters`` is the table of material parameters.

    from dreamcloth.taichi_mpm import GridSpec, SimConfig, Model, State, Params, Plane, simulate
"""

# first: it speeds up Taichi's frontend for every kernel defined after it (runtime._memoize_frontend)
from . import runtime  # noqa: F401, I001
from .builder import ModelBuilder, ObjectRange
from .cfl import Bounds, max_dt, stable_config, substeps_for
from .cloth import ClothGroup, grid_mesh
from .colliders import Box, MeshCollider, Plane, Sphere
from .config import GridSpec, SimConfig
from .errors import SimulationError
from .geometry import euler_xyz, load_mesh
from .model import MaterialGroup, Model, Params, State
from .parameters import PARAMETERS, Parameter, parameters_of
from .sampling import ParticleSet, sample_box, sample_mesh, sample_sphere
from .simulate import Trajectory, check_cfl, lame, min_rest_edge, simulate

__all__ = [
    "ClothGroup", "MeshCollider", "ModelBuilder", "ObjectRange", "euler_xyz", "grid_mesh", "min_rest_edge",
    "Box", "GridSpec", "MaterialGroup", "Model", "Params", "Plane", "SimConfig", "SimulationError", "Bounds",
    "Sphere", "State", "Trajectory", "lame", "max_dt", "simulate", "stable_config", "substeps_for",
    "ParticleSet", "load_mesh", "sample_box", "sample_mesh", "sample_sphere", "PARAMETERS", "Parameter", "parameters_of",
]
