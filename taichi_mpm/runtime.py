"""The one place that decides Taichi's arch and precision, lazily.

Nothing in dreamcloth calls ``ti.init`` at import time.  The simulator asks for a runtime that
matches the tensors it is given (``cuda`` tensors -> ``ti.cuda``, ``float64`` -> ``default_fp=f64``)
and this module initialises Taichi on first use, or re-initialises it when the request changes.
A re-initialisation invalidates every Taichi field, so objects that cache fields key them by
:func:`generation`.

Another library in the same process (the renderer) may have initialised Taichi first; if its
arch and precision already match, it is used as is.
"""

from __future__ import annotations

import dataclasses
import os

import torch

# Taichi asks the network for a newer version (a 5 s timeout on machines without internet) and
# prints a banner unless told not to; both must be set before ``import taichi``.  The application
# sets them with the rest of its environment (cli/pipeline/environment.py); this library sets the
# same defaults itself because it must also work alone.
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")

import taichi as ti  # noqa: E402
from taichi.lang import impl as _ti_impl  # noqa: E402


def _memoize_frontend() -> None:
    """Make Taichi's frontend look up each function's source, and build each source position's
    message, once per process (measured on the compile benchmark's warm-cache start, 2 cores:
    8.5 s -> ~5 s, most of the rest importing torch and Taichi and loading the cached kernels).

    Source: Taichi 1.7 re-reads a ``ti.func``'s source (``inspect``: module lookup, tokenizing,
    block search) at every call site it inlines, ~2,800 times for the engine's kernels.  A
    function's source does not change while the process runs; the lookups are cached per function.

    Positions: Taichi 1.7's AST transformer formats a source excerpt with a caret line (``get_pos_info``, two
    ``textwrap`` wraps) for every AST node it visits, and it visits a node again for every unrolled
    ``ti.static`` iteration and every inlined ``ti.func`` call: 170k messages for the engine's
    kernels, about half of the frontend's time, which a warm offline cache does not skip (the
    cache key is computed from the frontend's output).  The message depends only on the function's
    source, its offsets and the node's span, so it is cached on those; the text is unchanged.
    Installed once, for every Taichi user in the process (the renderer's kernels too).
    """
    import linecache
    import sys
    import weakref

    from taichi.lang import kernel_impl
    from taichi.lang.ast import ast_transformer_utils as atu

    for name in ("getsourcefile", "getsourcelines"):
        lookup = getattr(kernel_impl, name, None)
        if lookup is None or getattr(lookup, "_dreamcloth_memo", False):
            continue

        def cached(fn, _lookup=lookup, _memo=weakref.WeakKeyDictionary()):
            try:
                return _memo[fn]
            except (KeyError, TypeError):
                pass
            out = _lookup(fn)
            try:
                _memo[fn] = out
            except TypeError:  # not weak-referenceable: not cached
                pass
            return out

        cached._dreamcloth_memo = True
        setattr(kernel_impl, name, cached)

    # Class check: every @ti.func / @ti.kernel asks whether it is being defined in a class body by
    # reading its caller's caller's source line through ``inspect.getframeinfo``, which looks the
    # module up by scanning ``sys.modules`` (~4 ms each once torch is imported; ~0.5 s for this
    # package's kernels at every start).  The same line comes from ``linecache`` directly.
    patterns = getattr(kernel_impl, "_KERNEL_CLASS_STACKFRAME_STMT_RES", None)
    check = getattr(kernel_impl, "_inside_class", None)
    if patterns is not None and check is not None and not getattr(check, "_dreamcloth_memo", False):

        def inside_class(level_of_class_stackframe):
            try:
                frame = sys._getframe(level_of_class_stackframe)
            except ValueError:
                return False
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno, frame.f_globals).strip()
            return any(p.match(line) for p in patterns)

        inside_class._dreamcloth_memo = True
        kernel_impl._inside_class = inside_class

    # Source text: at every inlined call the frontend also re-wraps each line of the function's
    # source (``textwrap.fill``, ~34k calls per start) and dedents the whole; both are pure
    # functions of their arguments, memoised for the frontend's module alone.
    if not getattr(getattr(kernel_impl, "textwrap", None), "_dreamcloth_memo", False):
        import functools
        import textwrap
        import types

        shim = types.ModuleType("textwrap")
        shim.__dict__.update(textwrap.__dict__)
        shim.fill = functools.lru_cache(maxsize=None)(textwrap.fill)
        shim.dedent = functools.lru_cache(maxsize=None)(textwrap.dedent)
        shim._dreamcloth_memo = True
        kernel_impl.textwrap = shim

    ctx_cls = getattr(atu, "ASTTransformerContext", None)
    original = getattr(ctx_cls, "get_pos_info", None)
    if original is None or getattr(original, "_dreamcloth_memo", False):
        return
    memo: dict = {}

    def get_pos_info(self, node):
        body = getattr(node, "body", None)
        first = body[0].lineno if isinstance(body, list) and body and hasattr(body[0], "lineno") else None
        key = (self.file, self.func.func.__qualname__, self.lineno_offset, self.indent, len(self.src), type(node).__name__,
               node.lineno, getattr(node, "end_lineno", None), getattr(node, "col_offset", None),
               getattr(node, "end_col_offset", None), first)
        msg = memo.get(key)
        if msg is None:
            msg = memo[key] = original(self, node)
        return msg

    get_pos_info._dreamcloth_memo = True
    ctx_cls.get_pos_info = get_pos_info


_memoize_frontend()


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Which Taichi backend runs the kernels and at what floating-point precision."""

    arch: str  # "cpu" | "cuda"
    precision: str  # "f32" | "f64"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.precision == "f64" else torch.float32

    @property
    def ti_dtype(self):
        return ti.f64 if self.precision == "f64" else ti.f32

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda" if self.arch == "cuda" else "cpu")


_current: RuntimeConfig | None = None
_generation = 0


def _initialised() -> bool:
    return _ti_impl.get_runtime().prog is not None


def _live_config() -> RuntimeConfig | None:
    """The config Taichi is running with now, whoever initialised it."""
    if not _initialised():
        return None
    cfg = _ti_impl.current_cfg()
    arch = "cuda" if cfg.arch == ti.cuda else ("cpu" if cfg.arch in (ti.x64, ti.arm64) else str(cfg.arch))
    precision = "f64" if cfg.default_fp == ti.f64 else "f32"
    return RuntimeConfig(arch, precision)


def config_for(device: torch.device | str, dtype: torch.dtype) -> RuntimeConfig:
    """The runtime config that tensors on ``device`` with ``dtype`` need."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device}: dreamcloth's Taichi kernels run on cpu or cuda")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"unsupported dtype {dtype}: use torch.float32 or torch.float64")
    if device.type == "cuda" and dtype == torch.float64:
        # Measured on an H200 (CUDA 13.0 driver, Taichi 1.7.4, 2026-12-04): every float64 rollout
        # on CUDA - cloth and solid blocks, atomic and coloured scatters, the grid's fields in one
        # dense SNode or six, advanced_optimization on or off, our launch path or Taichi's - stopped
        # in the particle-to-grid scatter with CUDA_ERROR_MISALIGNED_ADDRESS, which poisons the
        # process's CUDA context.  float32 on CUDA matched the CPU (tests/taichi_mpm/test_cuda.py).
        raise ValueError(
            "float64 simulation on CUDA is not supported: Taichi 1.7.4's CUDA backend faults "
            "(misaligned address) in the particle-to-grid scatter; use float32 on CUDA, or float64 on the CPU"
        )
    return RuntimeConfig("cuda" if device.type == "cuda" else "cpu", "f64" if dtype == torch.float64 else "f32")


def ensure(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> RuntimeConfig:
    """Make sure Taichi runs on the arch and precision that ``device``/``dtype`` tensors need.

    Initialises Taichi on first use; re-initialises (invalidating fields, see :func:`generation`)
    only when the request differs from what is running.
    """
    global _current, _generation
    want = config_for(device, dtype)
    live = _live_config()
    if live == want:
        _current = want
        return want
    if live is not None:
        ti.reset()
    arch = ti.cuda if want.arch == "cuda" else ti.cpu
    ti.init(
        arch=arch,
        default_fp=want.ti_dtype,
        offline_cache=True,
        # Kernel argument checks are cheap; debug mode (bounds checks) is for tests that ask for it.
        check_out_of_bound=False,
        # Taichi's extra IR optimisation passes: without them the cold compile of every CPU kernel
        # (bench_mpm.compile_workload) took 17.7 s instead of 49.8 s, and the kernels ran as fast
        # within the noise (2026-12-02, 2 cores, interleaved runs: 22k-particle block forward
        # 4.82 vs 4.70 M particle-steps/s, forward+backward 1.22 vs 1.23; 41x41 cloth substep
        # forward 4.3-5.1 vs 4.9-5.4 ms, forward+backward 15.8-17.6 vs 17.2-18.9 ms)
        advanced_optimization=False,
        log_level=ti.WARN,
    )
    _current = want
    _generation += 1
    return want


def generation() -> int:
    """Increases every time this module (re-)initialises Taichi; cached fields are keyed by it."""
    return _generation


def current() -> RuntimeConfig | None:
    """What Taichi is running with now (``None`` before the first kernel)."""
    return _live_config()


# ---------------------------------------------------------------------------------------------
# launching a compiled kernel without Taichi's per-call argument analysis


#: marks an argument signature that must go through Taichi's own call path
_SLOW = object()


def _signature(args, templates) -> tuple:
    """What decides which compiled instance of a kernel runs: each tensor's dtype, rank, grad flag
    (Taichi's template key) and device, each template argument (``templates``: their positions)
    by value or identity, and the type of each scalar."""
    sig = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            sig.append((a.dtype, a.dim(), a.requires_grad, a.device.type))
        elif i in templates:
            sig.append((type(a), a) if isinstance(a, (bool, int, float, str)) else id(a))
        else:
            sig.append(type(a))
    return tuple(sig)


def _setters(kernel_obj, args):
    """Per-argument setters of a launch context for ``args`` (the kernel's own order), or ``_SLOW``
    where an argument needs more than this path does (host copies, element-shaped arrays, returns)."""
    from taichi.lang.util import cook_dtype
    from taichi.types import ndarray_type, template
    from taichi.types import primitive_types as pt
    from taichi.types.utils import is_signed

    if kernel_obj.return_type is not None or kernel_obj.has_print:
        return _SLOW
    arch = "cuda" if _ti_impl.current_cfg().arch == ti.cuda else "cpu"
    out = []
    slot = 0
    for i, (arg, a) in enumerate(zip(kernel_obj.arguments, args)):
        anno = arg.annotation
        if isinstance(anno, template):
            continue
        idx = (slot,)
        slot += 1
        if id(anno) in pt.real_type_ids:
            out.append((i, idx, "f"))
        elif id(anno) in pt.integer_type_ids:
            out.append((i, idx, "i" if is_signed(cook_dtype(anno)) else "u"))
        elif isinstance(anno, ndarray_type.NdarrayType) and isinstance(a, torch.Tensor):
            if not (anno.dtype is None or id(anno.dtype) in pt.type_ids) or a.device.type != arch:
                return _SLOW
            out.append((i, idx, "a"))
        else:
            return _SLOW
    return out


def launch(kernel, args: list, grad: bool = False) -> None:
    """``kernel(*args)`` (or ``kernel.grad(*args)``), for kernels launched many times with the
    same kinds of arguments.

    Taichi 1.7 analyses every argument of every call in Python (template key, dtype and shape
    checks, an environment lookup per tensor): ~20 us per array argument and ~150 us per launch of
    the engine's kernels, most of a small scene's substep.  The first call with a new kind of
    arguments goes through Taichi's own path (which compiles and checks them); later calls with
    the same kinds (see :func:`_signature`) fill a launch context directly.  Anything this path
    does not cover (host copies of device tensors, element-shaped arrays, return values, a Taichi
    tape) takes Taichi's path every time.
    """
    k = kernel._adjoint if grad else kernel._primal
    prog = _ti_impl.get_runtime().prog
    cache = k.__dict__.setdefault("_dreamcloth_launch", {})
    sig = _signature(args, k.template_slot_locations)
    entry = cache.get(sig)
    rt = k.runtime
    if entry is None or entry[0] is not prog or entry[2] is _SLOW or rt.target_tape or rt.fwd_mode_manager:
        (kernel.grad if grad else kernel)(*args)
        if entry is None or entry[0] is not prog:
            key = k.ensure_compiled(*args)
            cache[sig] = (prog, k.compiled_kernels[key], _setters(k, args))
        return
    _, kernel_cpp, setters = entry
    ctx = kernel_cpp.make_launch_context()
    for i, idx, kind in setters:
        a = args[i]
        if kind == "a":
            if not a.is_contiguous():
                raise ValueError(f"argument {k.arguments[i].name} of {k.func.__name__} is not contiguous")
            g = a.grad if a.requires_grad else None
            if a.requires_grad and (g is None or not g.is_contiguous()):
                raise ValueError(f"argument {k.arguments[i].name} of {k.func.__name__} requires grad without a contiguous .grad")
            ctx.set_arg_external_array_with_shape(idx, a.data_ptr(), a.element_size() * a.nelement(), tuple(a.shape),
                                                  g.data_ptr() if g is not None else 0)
        elif kind == "f":
            ctx.set_arg_float(idx, float(a))
        elif kind == "i":
            ctx.set_arg_int(idx, int(a))
        else:
            ctx.set_arg_uint(idx, int(a))
    prog.launch_kernel(prog.compile_kernel(prog.config(), prog.get_device_caps(), kernel_cpp), ctx)
