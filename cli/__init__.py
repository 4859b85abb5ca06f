"""The application layer: scene files, video I/O, the fit pipeline and the ``dreamcloth`` commands."""

import os

# torch's OpenMP threads spin after each op and starve Taichi's worker threads on small machines
# (backward 2.4x slower here, the renderer up to 20x): they must sleep instead.  This has to be
# set before torch is first imported, which is why it lives at the top of the package.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Taichi asks the network for a newer version (5 s timeout offline) and prints a banner otherwise.
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")
