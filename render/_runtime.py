"""The Taichi runtime as the renderer sees it: use one that exists, start one only if none does.

``dreamcloth.taichi_mpm`` also runs on Taichi and the two libraries never import each other, so
neither may own the runtime.  The rule: if Taichi is already initialised (by the simulator, a test,
the user), use it as it is - whatever its arch and ``default_fp`` - and never call ``ti.init``
again (that would invalidate the other library's fields).  Otherwise start one on the arch of the
tensors being rendered, in float32 with the offline cache on.

Kernels here therefore never rely on ``default_fp``: every value has an explicit dtype.
"""

from __future__ import annotations

import os

import torch


def taichi_initialised() -> bool:
    """Whether a Taichi program (runtime) exists in this process."""
    import taichi.lang.impl as impl

    return impl.get_runtime().prog is not None


def ensure_runtime(device: torch.device) -> torch.device:
    """Make sure a Taichi runtime exists; return the torch device its kernels can read directly.

    ``device`` is where the tensors live; it picks the arch only when no runtime exists yet.  The
    returned device may differ from ``device`` (e.g. a CPU runtime started by someone else while
    the tensors are on CUDA): the caller then moves the data there and back.
    """
    import taichi as ti

    if not taichi_initialised():
        # The version check would try the network (5 s timeout offline) and the banner is noise (the
        # application's defaults, cli/pipeline/environment.py, repeated: this library works alone).
        os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
        os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")
        arch = ti.cuda if device.type == "cuda" else ti.cpu
        # without Taichi's extra IR passes, as the simulator's runtime (taichi_mpm/runtime.py): the
        # cold compile is ~3x faster and the kernels measured as fast
        ti.init(arch=arch, default_fp=ti.f32, offline_cache=True, log_level=ti.WARN, advanced_optimization=False)
    return runtime_device()


def runtime_device() -> torch.device:
    """The torch device whose memory the current Taichi runtime's kernels access zero-copy."""
    import taichi as ti
    import taichi.lang.impl as impl

    arch = impl.current_cfg().arch
    if arch == ti.cuda:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for Taichi kernels on a GPU before torch reads their outputs (no-op on CPU)."""
    if device.type != "cpu":
        import taichi as ti

        ti.sync()
