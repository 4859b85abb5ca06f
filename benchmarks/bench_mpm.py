"""MPM core: speed against Taichi's own mpm3d example, cold compile time, memory against the horizon.

The peer is ``taichi/examples/simulation/mpm3d.py`` as shipped inside the taichi wheel, run in this
process on the same particles (our lattice written into its position field), the same 64^3 grid
and the same dt.  Only its configuration line and its ``ti.init`` call are changed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import Measurement

SECTION = "mpm"


def block_scene(n_side: int = 28, res: int = 64, dt: float = 1e-4, dtype=torch.float32, device="cpu"):
    """The issue's block: n_side^3 particles, 8 per cell (spacing dx/2), in a res^3 grid over [0,1]^3."""
    from dreamcloth.taichi_mpm import GridSpec, Model, Params, Plane, SimConfig, State

    dx = 1.0 / res
    grid = GridSpec(origin=(0.0, 0.0, 0.0), dx=dx, res=(res, res, res))
    ax = (torch.arange(n_side, dtype=dtype) + 0.5) * dx * 0.5
    x = (torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3) + 0.3).to(device)
    vol = torch.full((x.shape[0],), (dx * 0.5) ** 3, dtype=dtype, device=device)
    model = Model.create(vol, "neo_hookean", colliders=[Plane(point=(0, 0.1, 0), normal=(0, 1, 0), friction=0.5)])
    config = SimConfig(grid=grid, fps=1.0 / dt, substeps_per_frame=1)
    params = Params.create(1e5, 0.3, 1000.0, 0.9, 0.5, dtype=dtype, device=device)
    return model, State.at_rest(x), params, config


def load_mpm3d(n_particles: int, res: int, dt: float):
    """Import Taichi's mpm3d example with our sizes (Taichi must already be initialised)."""
    import taichi as ti

    src = Path(ti.__file__).parent / "examples" / "simulation" / "mpm3d.py"
    text = src.read_text()
    text = text.replace("ti.init(arch=ti.gpu)", "")
    text, n = re.subn(r"^dim, n_grid, steps, dt = 3, 32, 25, 4e-4$", f"dim, n_grid, steps, dt = 3, {res}, 25, {dt}", text, flags=re.M)
    if n != 1:
        raise RuntimeError(f"{src} changed: cannot find its configuration line")
    text = text.replace("n_particles = n_grid**dim // 2 ** (dim - 1)", f"n_particles = {n_particles}")
    folder = Path(tempfile.mkdtemp(prefix="mpm3d_"))
    path = folder / "mpm3d_peer.py"  # Taichi reads kernel source from a real file
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("mpm3d_peer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rate(n_particles: int, steps: int, seconds: float) -> float:
    return n_particles * steps / seconds


def speed(quick: bool, device: str = "cpu") -> list[Measurement]:
    """Ours against Taichi's mpm3d example on the same arch (``device`` cpu or cuda)."""
    import taichi as ti

    from dreamcloth.taichi_mpm import runtime, simulate

    n_side, steps = (12, 20) if quick else (28, 200)
    runtime.ensure(device, torch.float32)
    model, state, params, config = block_scene(n_side, device=device)
    # one output frame every 10 substeps (a 1e-4 s substep at 1000 fps): the peer keeps no frames, and
    # copying every substep's state out would measure memory traffic, not the simulator
    spf = 10
    config = dataclasses.replace(config, fps=config.fps / spf, substeps_per_frame=spf)
    frames = steps // spf + 1
    n = model.num_particles
    out = []

    # peer: Taichi's own example on the same particles
    peer = load_mpm3d(n, 64, config.dt)
    peer.init()
    peer.F_x.from_numpy(state.x.cpu().numpy())
    peer.substep()
    ti.sync()

    def peer_run():
        t = time.perf_counter()
        for _ in range(steps):
            peer.substep()
        ti.sync()
        return time.perf_counter() - t

    def sync():
        ti.sync()
        if device == "cuda":
            torch.cuda.synchronize()

    def ours_forward():
        t = time.perf_counter()
        with torch.no_grad():
            simulate(model, state, params, config, frames)
        sync()
        return time.perf_counter() - t

    E = params.young_modulus.clone().requires_grad_(True)
    p_grad = type(params)(E, params.poisson_ratio, params.density, params.damping, params.friction)

    def ours_fwd_bwd():
        t = time.perf_counter()
        traj = simulate(model, state, p_grad, config, frames)
        traj.x[-1].sum().backward()
        sync()
        return time.perf_counter() - t

    ours_forward()  # compile
    ours_fwd_bwd()
    # interleave the runs so that load from other processes hits all of them alike
    t_peer, t_fwd, t_fb = [], [], []
    for _ in range(1 if quick else 3):
        t_peer.append(peer_run())
        t_fwd.append(ours_forward())
        t_fb.append(ours_fwd_bwd())
    r_peer = _rate(n, steps, min(t_peer))
    r_fwd = _rate(n, steps, min(t_fwd))
    r_fb = _rate(n, steps, min(t_fb))
    note = f"{n} particles, 64^3 grid, dt {config.dt:g}, {steps} substeps, a frame every {spf}, {device}"
    out.append(Measurement(SECTION, "mpm3d.py forward (peer)", r_peer / 1e6, "M particle-steps/s", note))
    out.append(Measurement(SECTION, "forward", r_fwd / 1e6, "M particle-steps/s", note + "; goal >= 3.0x", "mpm3d forward",
                           r_fwd / r_peer))
    out.append(
        Measurement(SECTION, "forward+backward", r_fb / 1e6, "M particle-steps/s", note + "; goal >= 1.0x", "mpm3d forward", r_fb / r_peer)
    )
    return out


_COMPILE_SCRIPT = r"""
import json, sys, time, torch
t0 = time.perf_counter()
from dreamcloth.benchmarks.bench_mpm import compile_workload
compile_workload()
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def compile_workload() -> None:
    """One forward+backward substep through every kernel the CPU uses (both materials, every collider
    kind, both CPU scatter strategies, the cloth kernels), float32.  The atomic scatter is the
    GPU's and is not compiled here."""
    from dreamcloth.taichi_mpm import Box, GridSpec, MaterialGroup, Model, Params, Plane, SimConfig, Sphere, State, simulate

    dtype = torch.float32
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), 16)
    x = torch.rand(64, 3, generator=torch.Generator().manual_seed(0), dtype=dtype) * 0.4 + 0.3
    vol = torch.full((64,), 1e-4, dtype=dtype)
    groups = [MaterialGroup("neo_hookean", 0, 32), MaterialGroup("fixed_corotated", 32, 64)]
    colliders = [Plane(point=(0, 0.2, 0)), Sphere(center=(0.5, 0.5, 0.5), radius=0.05), Box(center=(0.2, 0.5, 0.5))]
    model = Model.create(vol, groups, colliders=colliders)
    E = torch.tensor(1e3, dtype=dtype, requires_grad=True)
    params = Params.create(E, 0.3, 1000.0, 0.9, 0.5, dtype=dtype)
    for scatter in ("colored", "serial"):
        config = SimConfig(grid=grid, fps=1000.0, substeps_per_frame=1, scatter=scatter)
        simulate(model, State.at_rest(x), params, config, 2).x[-1].sum().backward()
    from dreamcloth.taichi_mpm import ModelBuilder, Params, grid_mesh

    b = ModelBuilder(dtype)
    b.add_cloth("sheet", *grid_mesh(4, 4, (0.3, 0.3), (0.5, 0.5, 0.5)))
    cloth_model, cloth_state = b.build(colliders)
    cp = Params.create(E, 0.3, 1.0, 0.9, 0.5, shear_stiffness=100.0, normal_stiffness=100.0, dtype=dtype)
    config = SimConfig(grid=grid, fps=250.0, substeps_per_frame=10)
    simulate(cloth_model, cloth_state, cp, config, 2).x[-1].sum().backward()


def compile_time() -> list[Measurement]:
    """Cold-cache compile of every forward and backward kernel, in a fresh process with an empty cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TI_OFFLINE_CACHE_FILE_PATH=cache)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"compile benchmark failed: {proc.stderr[-2000:]}")
        inner = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
        # and again with the cache now warm
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, check=True)
        warm = time.perf_counter() - t
    return [
        Measurement(SECTION, "cold compile, all CPU kernels + backward", inner, "s",
                    f"solids (2 materials, 3 collider kinds, 2 scatters) and cloth; process wall {wall:.1f} s; goal < 20 s"),
        Measurement(SECTION, "warm-cache start, same workload", warm, "s", "offline cache hit; goal < 5 s"),
    ]


_MEMORY_SCRIPT = r"""
import json, resource, sys, torch
from dreamcloth.benchmarks.bench_mpm import memory_workload
base, peak = memory_workload(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
print(json.dumps({"base_mb": base, "peak_mb": peak}))
"""


def _rss_mb() -> float:
    """Current resident set size (Linux /proc; the peak-ever ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _PeakSampler:
    """Samples the resident set size every few milliseconds on a background thread; ``peak`` in MB."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval):
        while not self._stop.wait(interval):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def memory_workload(n_side: int, substeps: int, segment: int) -> tuple[float, float]:
    """Forward+backward over ``substeps``; returns (resident MB before the rollout, peak resident MB during it)."""
    import dataclasses

    from dreamcloth.taichi_mpm import simulate

    import importlib

    # the checkpointing scheme itself: no forward tape kept (simulate.KEEP_TAPE_BYTES, default 1 GiB,
    # adds up to that much for a faster backward)
    importlib.import_module("dreamcloth.taichi_mpm.simulate").KEEP_TAPE_BYTES = 0
    model, state, params, config = block_scene(n_side)
    spf = 100  # one output frame every 100 substeps: outputs stay small next to the tape
    config = dataclasses.replace(config, fps=config.fps / spf, substeps_per_frame=spf, segment_substeps=segment or None)
    E = params.young_modulus.clone().requires_grad_(True)
    params = type(params)(E, params.poisson_ratio, params.density, params.damping, params.friction)
    # warm up (compile) on a short run so that compiler memory is in the baseline
    short = dataclasses.replace(config, segment_substeps=None)
    simulate(model, state, params, short, 2).x[-1].sum().backward()
    import gc

    gc.collect()
    base = _rss_mb()
    with _PeakSampler() as sampler:
        traj = simulate(model, state, params, config, substeps // spf + 1)
        traj.x[-1].sum().backward()
    return base, sampler.peak


def memory(quick: bool) -> list[Measurement]:
    out = []
    n_side = 8 if quick else 27  # 27^3 = 19683 ~ 20k particles
    horizons = (200, 400) if quick else (1000, 2000, 4000)
    for label, seg_of in (("checkpointed (K=sqrt T)", lambda t: 0), ("one segment (no checkpoints)", lambda t: t)):
        for T in horizons:
            proc = subprocess.run(
                [sys.executable, "-c", _MEMORY_SCRIPT, str(n_side), str(T), str(seg_of(T))],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"memory benchmark failed: {proc.stderr[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            out.append(
                Measurement(
                    SECTION, f"peak memory, {label}, T={T}", r["peak_mb"] - r["base_mb"], "MB",
                    f"{n_side ** 3} particles; growth of the resident set during forward+backward; no kept tape "
                    "(by default up to 1 GiB more is kept for speed, DREAMCLOTH_KEEP_TAPE_MB)",
                )
            )
    return out


def run(quick: bool = False) -> list[Measurement]:
    """The MPM section of ``dreamcloth bench``."""
    return speed(quick) + compile_time() + memory(quick)
