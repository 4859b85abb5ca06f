import pytest

from dreamcloth.taichi_mpm import runtime


@pytest.fixture(autouse=True)
def _f64_runtime():
    """Simulator tests run in float64 on the CPU (finite differences and gradcheck need it)."""
    runtime.ensure("cpu", __import__("torch").float64)
    yield
