"""The application layer: the ``dreamcloth`` commands (``*_cmd.py``, ``app.py``) over the pipeline.

``dreamcloth.cli.pipeline`` holds everything that is not the terminal: scene files, video I/O, the
fit, predict, simulate-and-render, morphing and batches.  The commands parse options, draw progress
and tables, and turn the pipeline's typed errors into one-line messages and exit codes.
"""

# Before torch is first imported: see pipeline/environment.py (importing it imports nothing heavy).
from .pipeline import environment as _environment

_environment.apply()
