"""The fit's independent forward rollouts side by side: one worker process per core.

Why.  A rollout runs on about one core (Python, LAPACK's banded Cholesky and small Taichi
kernels: 11 frames of the 41x41 real-fabric drop with the implicit membrane took 18.6 s on one
thread and 17.2 s on two, 2026-12-05), and a fit makes many rollouts that do not depend on each
other: the starting points' probes (``FitConfig.starts``, 4) and each polish model's stencil (12
for three parameters, ``polish.build_model``; the identifiability analysis uses the same).  Two
such rollouts in two processes at once took 17.8 and 19.3 s on this 2-core machine.

Bit for bit.  A worker rebuilds the fit's problem from the scene, the video's frames, the fit
settings and, with each task, the appearance, the initial velocity and the substeps, and evaluates
the loss with the same code and one torch thread, as ``fit_video`` runs the fit: its values equal
the main process's to the last bit (the simulation does not depend on Taichi's thread count, and
the loss's float32 sums are torch's on one thread; the tests compare them), so the number of
workers changes no result, only the time.  Only forward losses without a video prior go to the workers (the prior's
value draws fresh noise at every call).

The report's rollout.  While one worker tries the polish's step, another renders the rollout at the
step's start over the report's frames (``speculate``): where the step fails and the fit ends there,
fit.mp4 and ``predict``'s prediction take it (``rendered``) instead of simulating it after the fit;
elsewhere it is dropped, having used a core that sat idle.  The trial runs in a worker, not in the
main process, whose threads would share the cores with it (a trial took 57 s there against 22 s).

How many: ``--workers`` on the commands, else the ``DREAMCLOTH_WORKERS`` environment variable,
else one per core this process may use, at most ``MAX_WORKERS``; 1 runs every rollout in the main
process.  Only on the CPU (on a GPU the rollouts would share one device).  Each worker runs one
thread in torch, OpenMP, OpenBLAS and Taichi (no N^2 threads, ``batch.pin_threads``).

The processes.  Each worker is ``python -m dreamcloth.cli.pipeline.rollouts`` on one end of a
socket pair, exchanging pickled messages through ``multiprocessing.connection`` (plain ``pickle``:
``Connection.send``'s pickler would share tensors' memory, which only its own children may); they start while
the main process fits the appearance.  Not ``multiprocessing``'s pools: Taichi and torch threads do
not survive a fork, and a spawned child first re-runs the caller's main script (a user's script
without an ``if __name__ == "__main__"`` guard would run its fit again in every worker).  A worker
that dies makes the remaining rollouts run in the main process, with a message: nothing is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import socket
import subprocess
import sys
from typing import Callable

#: the most worker processes a fit starts (its model stencils have 12 rollouts for three parameters)
MAX_WORKERS = 8
#: the environment variable that sets the number of workers where no option does
ENV = "DREAMCLOTH_WORKERS"
#: each worker's thread settings (read by OpenMP, OpenBLAS, MKL and Taichi when they start)
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TI_CPU_MAX_NUM_THREADS": "1"}


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int | None, device) -> int:
    """The number of rollout processes: ``workers`` if given, else ``DREAMCLOTH_WORKERS``, else one
    per usable core (at most ``MAX_WORKERS``); 1 on a GPU.  A ValueError names a bad value."""
    if workers is None:
        text = os.environ.get(ENV, "").strip()
        if text:
            try:
                workers = int(text)
            except ValueError:
                raise ValueError(f"{ENV}={text!r} is not a whole number of worker processes") from None
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if str(device).split(":")[0] != "cpu":
        return 1
    return workers if workers is not None else max(1, min(usable_cores(), MAX_WORKERS))


# -- the worker's side --------------------------------------------------------------------------------


def _problem(blob: bytes):
    """The fit's problem from the pickled scene, video and settings (``LossPool``)."""
    import torch

    from .fit import FitProblem, ParamSpace
    from .simulation import SceneRenderer, build

    torch.set_num_threads(1)
    spec = torch.load(io.BytesIO(blob), weights_only=False)
    sim = build(spec["scene"], spec["dtype"], spec["device"])
    return FitProblem(sim, SceneRenderer(sim), spec["target"], ParamSpace(spec["scene"]), spec["cfg"], None, None)


def _run(problem, kind: str, u, frames: int, appearance, v0, substeps: int):
    """One task: ``kind`` "loss", the forward loss at ``u`` over ``frames`` frames (``("ok",
    value)``), or "render", that rollout rendered (``("rendered", color, alpha)``,
    ``FitProblem.rendered_rollout``); ``("simulation", message, substep, frame)`` for a
    SimulationError (raised again in the main process), or ``("error", text)``."""
    import traceback

    from dreamcloth import taichi_mpm as M

    problem.appearance, problem.v0 = appearance, v0
    if problem.sim.config.substeps_per_frame != substeps:
        problem.with_substeps(substeps)
    try:
        if kind == "render":
            return ("rendered", *problem.rendered_rollout(u, frames))
        r = problem.loss_or_error(u, frames)
    except M.SimulationError as exc:
        return ("simulation", str(exc), exc.substep, exc.frame)
    except Exception:  # noqa: BLE001 - reported to the main process, which raises it
        return ("error", traceback.format_exc())
    if isinstance(r, M.SimulationError):
        return ("simulation", str(r), r.substep, r.frame)
    return ("ok", r)


def _serve(fd: int) -> None:
    """A worker's life: the problem from the first message, then one task per message (``_run``)
    until the main process closes its end."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    problem = _problem(conn.recv_bytes())
    while True:
        try:
            task = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        result = pickle.dumps(_run(problem, *task))
        try:
            conn.send_bytes(result)
        except (BrokenPipeError, ConnectionResetError):
            return  # the main process closed the pool during this rollout (a report it no longer needs)


# -- the main process's side -----------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A rollout worker failed in a way that is not a simulation's (its traceback is the message)."""


class LossPool:
    """Worker processes that evaluate a fit's forward loss (module docstring)."""

    def __init__(self, scene, target, cfg, dtype, device, workers: int, log: Callable[[str], None] = lambda m: None):
        import torch
        from multiprocessing.connection import Connection

        self.log = log
        buf = io.BytesIO()
        cpu_target = dataclasses.replace(target, frames=target.frames.cpu(), masks=target.masks.cpu())
        torch.save({"scene": scene, "target": cpu_target, "cfg": cfg, "dtype": dtype, "device": str(device)}, buf)
        env = {**os.environ, **WORKER_ENV}
        self._procs, self._conns = [], []
        for _ in range(workers):
            ours, theirs = socket.socketpair()
            proc = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            theirs.close()
            conn = Connection(ours.detach())
            conn.send_bytes(buf.getvalue())
            self._procs.append(proc)
            self._conns.append(conn)
        #: the report's rollout (``speculate``), worker -> [u, frames, substeps, its message or None]
        self._specs: dict[int, list] = {}
        #: frames of the fit's report rollout (``fit_video`` sets it; 0: nothing to speculate on)
        self.report_frames = 0

    @property
    def workers(self) -> int:
        return len(self._conns)

    def _receive(self, k: int):
        return pickle.loads(self._conns[k].recv_bytes())

    @staticmethod
    def _context(problem) -> tuple:
        return (problem.appearance, problem.v0.detach().cpu(), problem.sim.config.substeps_per_frame)

    def losses(self, problem, us: list, horizon: int) -> list:
        """The forward losses at ``us`` (normalised coordinates) over ``horizon`` frames, in order:
        each a float or the SimulationError its rollout raised.  Where a worker has died, the
        rollouts run in the main process."""
        from multiprocessing.connection import wait

        from dreamcloth import taichi_mpm as M

        if self._conns:
            try:
                context = self._context(problem)
                out: list = [None] * len(us)
                todo = list(range(len(us)))
                # worker -> task index (-1: a report's rollout, ``speculate``)
                busy: dict = {k: -1 for k, spec in self._specs.items() if spec[3] is None}
                while todo or any(i >= 0 for i in busy.values()):
                    for k in range(len(self._conns)):
                        if k not in busy and todo:
                            i = todo.pop(0)
                            self._conns[k].send_bytes(pickle.dumps(("loss", us[i].detach().cpu(), horizon, *context)))
                            busy[k] = i
                    for conn in wait([self._conns[k] for k in busy]):
                        k = self._conns.index(conn)
                        r = self._receive(k)
                        i = busy.pop(k)
                        if i < 0:
                            self._specs[k][3] = r
                        elif r[0] == "ok":
                            out[i] = r[1]
                        elif r[0] == "simulation":
                            out[i] = M.SimulationError(r[1], substep=r[2], frame=r[3])
                        else:
                            raise WorkerError(f"a rollout worker failed:\n{r[1]}")
                return out
            except (EOFError, OSError) as exc:
                self.log(f"a rollout worker stopped ({type(exc).__name__}: {exc}); the fit goes on in this process alone")
                self.close()
        return [problem.loss_or_error(u, horizon) for u in us]

    def speculate(self, problem, u) -> None:
        """Start rendering the rollout at ``u`` over ``report_frames`` frames on a worker (the fit's
        report, should the fit end at ``u``: the polish calls this before it tries a step, on the
        other worker meanwhile); :meth:`rendered` collects it.  One at a time (while one
        is running, a new one is not started: it would hold a second worker from the next model's
        rollouts)."""
        if not self._conns or not self.report_frames or any(spec[3] is None for spec in self._specs.values()):
            return
        context = self._context(problem)  # every worker is idle here: losses() waits for its own
        try:
            self._conns[0].send_bytes(pickle.dumps(("render", u.detach().cpu(), self.report_frames, *context)))
        except OSError:
            return  # the next losses() finds the pool broken and says so
        self._specs = {0: [u.detach().cpu().clone(), self.report_frames, context[2], None]}

    def rendered(self, problem, u, frames: int):
        """The rendered rollout ``(color, alpha)`` that :meth:`speculate` started at ``u`` over
        ``frames`` frames with the problem's present substeps, once it has come back without an
        error (waiting for it); else None (the caller rolls it out)."""
        import torch

        for k, spec in self._specs.items():
            if spec[1] == frames and spec[2] == problem.sim.config.substeps_per_frame and torch.equal(spec[0], u.detach().cpu()):
                if spec[3] is None:
                    try:
                        spec[3] = self._receive(k)
                    except (EOFError, OSError):
                        return None
                if spec[3][0] == "rendered":
                    return spec[3][1], spec[3][2]
        return None

    def close(self) -> None:
        """End the workers (closing their connection ends them; a worker still in a rollout is killed)."""
        for conn in self._conns:
            conn.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._conns, self._procs = [], []


@contextlib.contextmanager
def loss_pool(scene, target, cfg, dtype, device, workers: int | None, log: Callable[[str], None] = lambda m: None):
    """A :class:`LossPool` of :func:`resolve_workers` processes for the with-block, or None when
    that is 1 (every rollout in this process)."""
    n = resolve_workers(workers, device)
    if n <= 1:
        yield None
        return
    pool = LossPool(scene, target, cfg, dtype, device, n, log)
    try:
        yield pool
    finally:
        pool.close()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
