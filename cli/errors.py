"""One-line errors for the command line.

Library and pipeline code raise ordinary, typed exceptions (``ValueError`` subclasses with a message
that names the offending key, value and file; the pipeline's ``InputError`` and ``RunFailedError``).
The commands turn every expected failure into ``error: <message>`` on stderr and a non-zero exit
code, so a user never has to read a traceback for bad input.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer

from .pipeline.errors import RunFailedError, one_line

F = TypeVar("F", bound=Callable[..., object])

#: Exit code for bad input (unreadable files, invalid scenes, out-of-range values).
EXIT_BAD_INPUT = 2
#: Exit code for a run that started but could not finish (NaN that survives dt halving, ...).
EXIT_RUN_FAILED = 3
#: Exit code of ``fit-batch`` when one or more of its jobs failed (the others still ran).
EXIT_JOBS_FAILED = 4


class CliError(Exception):
    """An error of a command's own (its options, its terminal) reported as one line; exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


def _simulation_error():
    from dreamcloth.taichi_mpm.errors import SimulationError

    return SimulationError


def report_errors(func: F) -> F:
    """Decorator for Typer commands: expected failures become one line on stderr and an exit code.

    ``ValueError`` (which our configuration and input errors subclass), ``OSError`` (missing or
    unreadable files), ``CliError`` and the pipeline's ``RunFailedError`` are expected; anything
    else is a bug and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CliError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            raise typer.Exit(exc.code) from None
        except (RunFailedError, _simulation_error()) as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            raise typer.Exit(EXIT_RUN_FAILED) from None
        except (ValueError, OSError) as exc:
            prefix = "" if isinstance(exc, ValueError) else f"{type(exc).__name__}: "
            print(f"error: {prefix}{one_line(exc)}", file=sys.stderr)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper  # type: ignore[return-value]
