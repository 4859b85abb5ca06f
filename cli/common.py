"""Pieces shared by the commands: option types, device selection, progress bars, masks."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import CliError

DATA = Path(__file__).parent / "data"
DEMO_SCENE = DATA / "demo_drape.toml"
DEMO_VIDEO = DATA / "demo_drape.mp4"
DEMO_TRUTH = DATA / "demo_drape.truth.json"

SceneOption = Annotated[Optional[Path], typer.Option("--scene", help="Scene file (TOML). Default: the bundled demo scene.")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu or cuda: Taichi's arch and torch's device together.")]


def resolve_device(name: str):
    """torch device for ``--device``; a clear error when CUDA is asked for but absent."""
    import torch

    if name not in ("cpu", "cuda"):
        raise CliError(f"--device must be 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: torch sees no CUDA device on this machine")
    return torch.device(name)


def progress_bar():
    """A rich progress bar with elapsed and remaining time and a free-text status column."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
    )


def foreground_masks(frames, background, threshold: float = 0.08):
    """Foreground masks ``[T, 1, H, W]`` (float 0/1) where a pixel differs from the background colour.

    ``frames``: ``[T, 3, H, W]`` in [0, 1]; the distance is the max over channels (robust to
    H.264 chroma noise, which stays below ~0.05 at our quality settings).
    """
    import torch

    bg = torch.as_tensor(background, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    return ((frames - bg).abs().amax(dim=1, keepdim=True) > threshold).to(frames.dtype)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch threads (Taichi does the heavy work; idle torch threads only compete)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
