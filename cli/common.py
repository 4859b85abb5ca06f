"""Pieces shared by the commands: option types and the progress bar (the terminal is the commands')."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .pipeline.demo import DEMO_SCENE, DEMO_TRUTH, DEMO_VIDEO  # noqa: F401 - the commands' defaults

SceneOption = Annotated[Optional[Path], typer.Option("--scene", help="Scene file (TOML). Default: the bundled demo scene.")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu or cuda: Taichi's arch and torch's device together.")]


def progress_bar():
    """A rich progress bar with elapsed and remaining time and a free-text status column."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
    )


def bar_progress(bar):
    """The pipeline's progress callback drawn on ``bar``: one task per stage, created when first reported."""
    tasks: dict[str, object] = {}

    def report(stage: str, done: int, total: int, status: str | None = None) -> None:
        fields = {} if status is None else {"status": status}
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, status=status or "")
        bar.update(tasks[stage], completed=done, total=total, **fields)

    return report


def check_output(path: Path, folder: bool, option: str = "--out") -> None:
    """Before any work: ``path`` can be written as a file (``folder`` False) or a folder, else a
    CliError naming the option (an output that turned out unwritable after minutes of training or
    rendering lost them: "Is a directory", "File exists")."""
    from .errors import CliError

    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise CliError(f"{option} {path} is a file, not a folder")
    if not folder and path.is_dir():
        raise CliError(f"{option} {path} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CliError(f"{option} {path}: {parent} is a file, not a folder")
            break
