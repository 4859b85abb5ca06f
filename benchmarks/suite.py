"""The benchmark suite: sections, each a module with ``run(quick: bool) -> list[Measurement]``.

Run with ``dreamcloth bench`` (all sections) or ``dreamcloth bench --section mpm``.  Speed figures
are reported next to a peer measured in the same process (see ``Measurement.ratio_to``).
"""

from __future__ import annotations

import importlib

from .common import Measurement

#: section name -> module (relative to ``dreamcloth.benchmarks``) with ``run(quick) -> list[Measurement]``
SECTIONS: dict[str, str] = {
    "mpm": "bench_mpm",
    "cloth": "bench_cloth",
    "fit": "bench_fit",
    "render": "bench_render",
    "prior": "bench_prior",
    "accuracy": "accuracy",
    "morph": "bench_morph",
    "batch": "bench_batch",
}


def run_section(name: str, quick: bool = False) -> list[Measurement]:
    """Run one section by name."""
    if name not in SECTIONS:
        raise ValueError(f"unknown benchmark section {name!r}; choose from {', '.join(SECTIONS)}")
    module = importlib.import_module(f"dreamcloth.benchmarks.{SECTIONS[name]}")
    return list(module.run(quick=quick))
