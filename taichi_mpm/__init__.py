"""Differentiable MLS-MPM in Taichi, bridged to PyTorch with exact long-horizon gradients."""
