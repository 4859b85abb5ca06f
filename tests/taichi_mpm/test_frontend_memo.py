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


def test_kernels_defined_in_a_class_are_still_methods():
    """Taichi asks whether a kernel is defined in a class body (read from the caller's source line,
    a lookup ``_memoize_frontend`` replaces): a data-oriented class's kernel must get ``self``."""
    runtime.ensure(torch.device("cpu"), torch.float32)

    @ti.data_oriented
    class Scaler:
        def __init__(self, k):
            self.k = k

        @ti.kernel
        def scale(self, x: ti.types.ndarray()):
            for i in range(x.shape[0]):
                x[i] = x[i] * self.k

    x = torch.ones(4)
    Scaler(3.0).scale(x)
    assert torch.equal(x, torch.full((4,), 3.0))


def test_the_frontends_textwrap_is_memoised_and_unchanged():
    import textwrap

    from taichi.lang import kernel_impl

    tw = kernel_impl.textwrap
    assert getattr(tw, "_dreamcloth_memo", False)
    for line in ("\tx = 1  # a tab", "        y = f(x, " + "z, " * 40 + ")", ""):
        assert tw.fill(line, tabsize=4, width=9999) == textwrap.fill(line, tabsize=4, width=9999)
    src = "    def f():\n        return 1\n"
    assert tw.dedent(src) == textwrap.dedent(src)
    assert tw.indent is textwrap.indent  # everything else is the module's own
