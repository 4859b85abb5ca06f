"""Gaussians from the simulation and a differentiable rasterizer (portable Taichi and CUDA 3DGS)."""
