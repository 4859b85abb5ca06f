"""The memoised Taichi frontend (``runtime._memoize_frontend``): compile errors still point at the
right line and column, every time, and source lookups are cached per function."""

import inspect

import pytest
import taichi as ti
import torch

from dreamcloth.taichi_mpm import runtime


def _broken_twice():
    @ti.func
    def helper(a):
        return a + undefined_name  # noqa: F821 - the error under test

    @ti.kernel
    def k(x: ti.types.ndarray()):
        for i in range(x.shape[0]):
            x[i] = helper(x[i])

    return k, helper


def test_compile_errors_still_name_the_right_source_line():
    runtime.ensure(torch.device("cpu"), torch.float32)
    x = torch.zeros(3)
    messages = []
    for _ in range(2):  # the second build reads the memoised messages
        k, helper = _broken_twice()
        with pytest.raises(ti.TaichiCompilationError) as err:
            k(x)
        messages.append(str(err.value))
    src, start = inspect.getsourcelines(_broken_twice)
    line = start + next(i for i, s in enumerate(src) if "undefined_name" in s)
    for msg in messages:
        assert f"line {line}" in msg, msg
        assert "return a + undefined_name" in msg
        assert "^^^^^^^^^^^^^^" in msg  # the caret under the name
        assert "undefined_name" in msg.splitlines()[-1] or "not defined" in msg


def test_source_lookups_are_cached_and_equal_to_inspect():
    from taichi.lang import kernel_impl

    assert getattr(kernel_impl.getsourcelines, "_dreamcloth_memo", False)
    first = kernel_impl.getsourcelines(_broken_twice)
    assert first == inspect.getsourcelines(_broken_twice)
    assert kernel_impl.getsourcelines(_broken_twice) is first
    assert kernel_impl.getsourcefile(_broken_twice) == inspect.getsourcefile(_broken_twice)
