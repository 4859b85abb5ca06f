"""Test-session settings shared by every test package."""

import os

# Before torch is imported (see dreamcloth/cli/__init__.py): torch's spinning OpenMP threads starve Taichi.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Taichi asks the network for a newer version unless told not to, and prints a banner.
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")
