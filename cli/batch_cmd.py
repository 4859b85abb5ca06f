"""``dreamcloth fit-batch``: many fits (or predicts) as Ray tasks, resumable; the pipeline is ``batch``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import EXIT_JOBS_FAILED, CliError, report_errors


@report_errors
def fit_batch(
    jobs: Annotated[Path, typer.Argument(help="Job list: CSV (header video,scene[,masks,name,iterations,...]) or TOML (an array of tables named job).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one folder per job, results.csv, results.json.")],
    workers: Annotated[Optional[int], typer.Option(help="Jobs at once (default: cores / --threads, of this machine or the cluster).")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads per job (torch, OpenMP and Taichi are pinned to it).")] = 1,
    address: Annotated[Optional[str], typer.Option(help="Join this Ray cluster (from `ray start --head`) instead of starting a local one.")] = None,
    predict: Annotated[bool, typer.Option("--predict", help="Each job is a predict: fit the first --context frames, predict --horizon more.")] = False,
    context: Annotated[int, typer.Option(help="With --predict: frames the fit sees (a job's own context wins).")] = 11,
    horizon: Annotated[int, typer.Option(help="With --predict: frames predicted after the context (a job's own horizon wins).")] = 11,
    iterations: Annotated[Optional[int], typer.Option(help="Material-stage iterations of every job that does not set its own (default 30).")] = None,
    time_step_check: Annotated[bool, typer.Option("--time-step-check/--no-time-step-check",
                                                  help="With --predict: simulate each prediction again at half the time step and report "
                                                       "whether it agrees (~13% of a job; a job's own time_step_check wins).")] = True,
) -> None:
    """Fit many videos: each job of JOBS is one fit (or predict) run as a Ray task; re-run to resume."""
    from rich.console import Console
    from rich.table import Table

    from .pipeline import batch as B
    from .common import progress_bar

    # the command line's own values, named as options (the job file's rows are checked by read_jobs)
    if iterations is not None and iterations < 1:
        raise CliError(f"--iterations must be >= 1, got {iterations}")
    if predict and context < 3:
        raise CliError(f"--context must be at least 3 frames, got {context}")
    if predict and horizon < 1:
        raise CliError(f"--horizon must be at least 1 frame, got {horizon}")
    defaults: dict = {"context": context, "horizon": horizon, "time_step_check": time_step_check}
    if iterations is not None:
        defaults["iterations"] = iterations
    job_list = B.read_jobs(jobs, predict=predict, defaults=defaults)
    try:
        B.import_ray()  # before the progress view, so that its absence is the only line printed
    except B.RayNotInstalledError as exc:
        raise CliError(str(exc)) from None
    console = Console()
    counts = {"done": 0, "running": 0, "failed": 0, "interrupted": 0, "skipped": 0}

    def status() -> str:
        return (f"[green]{counts['done']} done[/] ({counts['skipped']} from earlier runs)  [yellow]{counts['running']} running[/]  "
                f"[red]{counts['failed']} failed[/]")

    with progress_bar() as bar:
        task = bar.add_task("jobs", total=len(job_list), status=status())

        def on_event(kind: str, job, result) -> None:
            if kind == "started":
                counts["running"] += 1
                bar.console.print(f"[dim]started[/] {job.name}")
            else:
                if kind == "finished":
                    counts["running"] -= 1
                else:
                    counts["skipped"] += 1
                counts[result.status] += 1
                if result.status == "failed":
                    bar.console.print(f"[red]failed[/] {job.name}: {result.error}")
                elif kind == "finished":
                    how = " (resumed)" if result.resumed else ""
                    bar.console.print(f"[green]{result.status}[/] {job.name}{how} in {result.seconds:.0f} s")
            bar.update(task, completed=counts["done"] + counts["failed"] + counts["interrupted"], status=status())

        try:
            batch = B.run_batch(job_list, out, workers=workers, threads=threads, address=address, on_event=on_event)
        except KeyboardInterrupt:
            raise CliError(f"interrupted: run the same command again to resume ({out})", 130) from None
    table = Table(title=f"fit-batch: {len(job_list)} jobs")
    columns = ["job", "status", "parameters", "loss", "mask IoU", "seconds"]
    if predict:
        columns.insert(5, "at dt/2")  # the time-step check: the prediction against itself at half the time step
    for col in columns:
        table.add_column(col)
    for r in batch.results:
        params = ", ".join(f"{p['name']}={p['value']:.4g}" + ("" if p["identifiable"] in (None, True) else " (not identifiable)")
                           for p in r.parameters)
        cells = [r.name, r.status + (" (earlier run)" if r.skipped else ""), params if r.status != "failed" else r.error or "",
                 f"{r.loss:.4f}" if r.loss is not None else "", f"{r.mask_iou:.3f}" if r.mask_iou is not None else "", f"{r.seconds:.0f}"]
        if predict:
            agree = "" if r.time_step_agreement is None else f"{r.time_step_agreement:.3f}" + (" sensitive" if r.sensitive else "")
            cells.insert(5, agree)
        table.add_row(*cells)
    console.print(table)
    sensitive = [r.name for r in batch.results if r.sensitive]
    if sensitive:
        from .pipeline.predict import STEP_AGREEMENT

        console.print(f"[yellow]{len(sensitive)} prediction(s) change with the time step (mean IoU against dt/2 below "
                      f"{STEP_AGREEMENT}): {', '.join(sensitive)}; their frame-by-frame motion cannot be trusted[/]")
    console.print(f"wrote {batch.csv_path}, {batch.json_path}")
    if batch.failed:
        raise CliError(f"{batch.failed} of {len(job_list)} jobs failed (see {batch.csv_path})", EXIT_JOBS_FAILED)
