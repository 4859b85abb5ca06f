"""What every benchmark section returns, and how the suite prints and saves it."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Iterable


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One figure of a benchmark run.

    ``ratio_to`` names the peer measured in the same run that ``value`` is compared against (speed
    figures on this shared, noisy machine only mean something as ratios to a peer run alongside).
    """

    section: str
    name: str
    value: float
    unit: str
    note: str = ""
    ratio_to: str | None = None
    ratio: float | None = None


def write_json(measurements: Iterable[Measurement], path: Path) -> None:
    """Save measurements with the machine they were taken on."""
    rows = [dataclasses.asdict(m) for m in measurements]
    meta = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "processor": platform.processor(),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"meta": meta, "measurements": rows}, indent=2))
