"""Where the pipeline runs: the torch device of a ``--device`` name, and torch's thread count."""

from __future__ import annotations

import contextlib

from .errors import InputError


def resolve_device(name: str):
    """torch device for ``--device``; a clear error when CUDA is asked for but absent."""
    import torch

    if name not in ("cpu", "cuda"):
        raise InputError(f"--device must be 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device on this machine")
    return torch.device(name)


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
