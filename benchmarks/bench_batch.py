"""Batch fits on Ray: four small fits with one and with two workers, and the plain fit one after another.

The figure is the wall time of the whole batch as a user sees it (Ray's start and stop, each job's
Taichi start-up and kernel loading from the offline cache, the fits, the summary), with the kernels
compiled beforehand.  The goal is >= 1.7x from one worker to
two on a 2-core machine; the plain fits run in this process with Taichi's default thread count,
one after another, which is what a user without ``fit-batch`` would do.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

from .common import Measurement

SECTION = "batch"


def _make_jobs(folder: Path, quick: bool):
    """Four jobs on one small drape video (the accuracy suite's drape), differing in the seed of their starting points."""
    from dreamcloth.cli.pipeline import batch as B
    from dreamcloth.cli.pipeline.simulate import run_simulation

    from .accuracy import SCENARIOS, scene_text

    dims = dict(frames=8, grid=16, n=8, width=64, height=48) if quick else dict(frames=12, grid=16, n=8, width=96, height=72)
    sc = dataclasses.replace(SCENARIOS["drape"], small=dims, fit={"young_modulus": (20.0, 400.0)})
    (folder / "truth.toml").write_text(scene_text(sc, "small", {"young_modulus": 60.0, "damping": 0.3}, with_fit=True))
    (folder / "fit.toml").write_text(scene_text(sc, "small", {"young_modulus": 90.0, "damping": 0.3}, with_fit=True))
    run_simulation(folder / "truth.toml", folder / "truth")
    iterations, appearance = (4, 20) if quick else (12, 60)
    lines = ["name,video,scene,seed,iterations,appearance_steps,starts,identify"]
    lines += [f"drape{k},truth/video.mp4,fit.toml,{k},{iterations},{appearance},2,false" for k in range(4)]
    (folder / "jobs.csv").write_text("\n".join(lines) + "\n")
    return B.read_jobs(folder / "jobs.csv")


def run(quick: bool = False) -> list[Measurement]:
    from dreamcloth.cli.pipeline import batch as B

    folder = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    jobs = _make_jobs(folder, quick)
    size = f"{len(jobs)} drape fits, {jobs[0].fit_config().iterations} iterations"

    # Taichi's offline cache did not serve a plain fit (default threads) the kernels that
    # single-thread jobs had cached: it compiled them again (184 s for the first quick fit, 39 s for
    # the next).  Compile both kinds first (one plain fit here, one single-thread job on Ray), or
    # the first timed run would carry minutes of compilation that the others do not
    B.run_job(jobs[0], folder / "warmup_plain", threads=None)
    B.run_batch(jobs[:1], folder / "warmup_ray", workers=1, threads=1)
    t = time.perf_counter()
    plain = [B.run_job(job, folder / "plain", threads=None) for job in jobs]
    t_plain = time.perf_counter() - t
    walls = {}
    for workers in (1, 2):
        t = time.perf_counter()
        batch = B.run_batch(jobs, folder / f"workers{workers}", workers=workers, threads=1)
        walls[workers] = time.perf_counter() - t
        if batch.failed:
            raise RuntimeError(f"bench_batch: {batch.failed} jobs failed: {[r.error for r in batch.results if r.error]}")
    if any(r.status != "done" for r in plain):
        raise RuntimeError(f"bench_batch: plain fits failed: {[r.error for r in plain if r.error]}")
    cores = os.cpu_count()
    same = all(a.loss == b.loss for a, b in zip(plain, batch.results))
    return [
        Measurement(SECTION, "plain fit, one after another", t_plain, "s",
                    f"{size}; in this process, Taichi's default threads ({cores} cores)"),
        Measurement(SECTION, "fit-batch, 1 worker", walls[1], "s", f"{size}; Ray start and stop included",
                    ratio_to="plain fit", ratio=t_plain / walls[1]),
        Measurement(SECTION, "fit-batch, 2 workers", walls[2], "s",
                    f"{size}; goal >= 1.7x vs 1 worker; losses {'equal to' if same else 'differ from'} the plain fits'",
                    ratio_to="1 worker", ratio=walls[1] / walls[2]),
    ]
