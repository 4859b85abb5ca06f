"""Differentiable MLS-MPM in Taichi, bridged to PyTorch with exact long-horizon gradients.

    from dreamcloth.taichi_mpm import GridSpec, SimConfig, Model, State, Params, Plane, simulate
"""

from .cfl import SolidBounds, max_dt, stable_config, substeps_for
from .colliders import Box, Plane, Sphere
from .config import GridSpec, SimConfig
from .errors import SimulationError
from .model import MaterialGroup, Model, Params, State
from .simulate import Trajectory, lame, simulate

__all__ = [
    "Box", "GridSpec", "MaterialGroup", "Model", "Params", "Plane", "SimConfig", "SimulationError", "SolidBounds",
    "Sphere", "State", "Trajectory", "lame", "max_dt", "simulate", "stable_config", "substeps_for",
]
