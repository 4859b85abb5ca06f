"""Test-session settings shared by every test package."""

# Before torch is imported: the application's environment (OMP_WAIT_POLICY, Taichi's version check
# and banner), see dreamcloth/cli/pipeline/environment.py.
from dreamcloth.cli.pipeline import environment

environment.apply()
