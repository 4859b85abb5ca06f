"""``runtime.launch``: the engine's kernel launches that skip Taichi's per-call argument analysis
must compute what Taichi's own call does, pick the right compiled instance, and refuse what
Taichi refuses."""

import pytest
import taichi as ti
import torch

from dreamcloth.taichi_mpm import runtime

ARR = ti.types.ndarray(ndim=2)


@ti.kernel
def _axpy(x: ARR, y: ARR, a: float, k: int, serial: ti.template()):
    ti.loop_config(serialize=serial)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            y[i, j] = a * x[i, j] + k + (1000 if ti.static(serial) else 0)


def _expected(x, a, k, serial):
    return a * x + k + (1000 if serial else 0)


def test_launch_matches_taichi_and_picks_the_instance_of_each_template_value():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    y = torch.zeros_like(x)
    for call in range(3):  # the first call of each kind goes through Taichi, the later ones do not
        for serial in (True, False):
            a, k = 0.5 + call, call - 1
            runtime.launch(_axpy, [x, y, a, k, serial])
            assert torch.equal(y, _expected(x, a, k, serial))
    cache = _axpy._primal._dreamcloth_launch
    assert len(cache) == 2  # one entry per template value
    # another dtype is another compiled instance
    x32, y32 = x.float(), torch.zeros(7, 3)
    for _ in range(2):
        runtime.launch(_axpy, [x32, y32, 2.0, 3, False])
        assert torch.allclose(y32, _expected(x32, 2.0, 3, False))
    assert len(cache) == 3


def test_launch_refuses_a_non_contiguous_tensor_on_either_path():
    x = torch.randn(3, 8, dtype=torch.float64)
    y = torch.zeros(8, 3, dtype=torch.float64)
    runtime.launch(_axpy, [x.t().contiguous(), y, 1.0, 0, False])
    with pytest.raises(ValueError, match="contiguous"):
        runtime.launch(_axpy, [x.t(), y, 1.0, 0, False])
