"""Test-session settings shared by every test package."""

# Before torch is imported: the application's environment (OMP_WAIT_POLICY, Taichi's version check
# and banner), see dreamcloth/cli/pipeline/environment.py.
from dreamcloth.cli.pipeline import environment

environment.apply()

# The fit's rollouts run in this process unless a test asks for worker processes (its default is a
# process per core, cli/pipeline/rollouts.py): pytest-xdist already runs one test file per core.
import os

os.environ.setdefault("DREAMCLOTH_WORKERS", "1")
