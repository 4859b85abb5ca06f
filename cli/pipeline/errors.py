"""The pipeline's exceptions: typed, so that a command maps each to a one-line message and an exit code.

Input problems are ``ValueError`` subclasses (as are the libraries' own configuration errors), so
callers that only know ``ValueError`` still catch them; a run that started and could not finish is
a ``RuntimeError``.  The pipeline never exits the process and never prints: the commands do.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class InputError(PipelineError, ValueError):
    """Bad input: a file, a scene, a video or a setting that cannot be used (the message says which)."""


class RunFailedError(PipelineError, RuntimeError):
    """A run that started and could not finish (a NaN that survives dt halving, a failed morph, ...)."""


def not_a_file(path) -> str:
    """How a path that should be a file fails: ``"is a directory"`` or ``"does not exist"``."""
    from pathlib import Path

    return "is a directory" if Path(path).is_dir() else "does not exist"


def one_line(exc: BaseException) -> str:
    """The exception's message squeezed onto one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text
