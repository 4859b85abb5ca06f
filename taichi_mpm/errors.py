"""Errors raised by the simulator."""


class SimulationError(RuntimeError):
    """A rollout produced NaN or infinite values; the message names the substep and frame."""

    def __init__(self, message: str, substep: int | None = None, frame: int | None = None):
        super().__init__(message)
        self.substep = substep
        self.frame = frame
