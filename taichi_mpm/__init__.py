"""Differentiable MLS-MPM in Taichi, bridged to PyTorch with exact long-horizon gradients.

    from dreamcloth.taichi_mpm import GridSpec, SimConfig, Model, State, Params, Plane, simulate
"""

from .builder import ModelBuilder, ObjectRange
from .cfl import Bounds, max_dt, stable_config, substeps_for
from .cloth import ClothGroup, grid_mesh
from .colliders import Box, MeshCollider, Plane, Sphere, euler_xyz
from .config import GridSpec, SimConfig
from .errors import SimulationError
from .model import MaterialGroup, Model, Params, State
from .parameters import PARAMETERS, Parameter, parameters_of
from .sampling import ParticleSet, load_mesh, sample_box, sample_mesh, sample_sphere
from .simulate import Trajectory, bending_rate, lame, min_rest_edge, simulate

__all__ = [
    "ClothGroup", "MeshCollider", "ModelBuilder", "ObjectRange", "euler_xyz", "grid_mesh", "min_rest_edge",
    "Box", "GridSpec", "MaterialGroup", "Model", "Params", "Plane", "SimConfig", "SimulationError", "Bounds",
    "Sphere", "State", "Trajectory", "bending_rate", "lame", "max_dt", "simulate", "stable_config", "substeps_for",
    "ParticleSet", "load_mesh", "sample_box", "sample_mesh", "sample_sphere", "PARAMETERS", "Parameter", "parameters_of",
]
