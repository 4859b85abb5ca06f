"""The process environment dreamcloth runs best in: one table, applied before torch and Taichi start.

- ``OMP_WAIT_POLICY=PASSIVE``: torch's OpenMP threads spin after each op and starve Taichi's worker
  threads on small machines (backward 2.4x slower here, the renderer up to 20x): they must sleep
  instead.  It only works when set before torch is first imported.
- ``TI_SKIP_VERSION_CHECK=ON``: ``ti.init`` otherwise asks the network for a newer version (a 5 s
  timeout offline).
- ``ENABLE_TAICHI_HEADER_PRINT=0``: no banner.

The application applies it when ``dreamcloth.cli`` is imported; Ray workers of ``fit-batch``, test
sessions and benchmark subprocesses get the same table.  The two Taichi libraries, which must work
on their own and never import each other or this package, each keep the two Taichi settings as a
fallback where they start Taichi.
"""

from __future__ import annotations

import os

#: variable -> value; ``apply`` never overrides what the user set
DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "TI_SKIP_VERSION_CHECK": "ON", "ENABLE_TAICHI_HEADER_PRINT": "0"}


def apply(environ=os.environ) -> None:
    """Set every default that ``environ`` does not set yet."""
    for key, value in DEFAULTS.items():
        environ.setdefault(key, value)
