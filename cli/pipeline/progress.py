"""How the pipeline reports progress without owning a terminal.

A long pipeline step takes ``progress(stage, done, total, status)``: ``stage`` names a bar
(``"simulate"``, ``"render"``, ``"fit"``...), ``done`` of ``total`` units are finished and
``status`` (None: unchanged) says what is happening.  The commands draw it; batch jobs and
benchmarks pass nothing.
"""

from __future__ import annotations

from typing import Callable, Optional

Progress = Callable[[str, int, int, Optional[str]], None]


def silent(stage: str, done: int, total: int, status: str | None = None) -> None:
    """A progress callback that reports nothing."""
