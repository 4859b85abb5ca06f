"""Many fits at once: a job file in, one fit (or predict) per job as a Ray task, a summary out.

The pipeline behind ``dreamcloth fit-batch`` (the command itself is ``batch_cmd``):

- :func:`read_jobs` parses a CSV or TOML job list into :class:`Job` s (errors name the file, the row
  and the key, on one line);
- :func:`run_batch` runs the jobs that are not finished yet on a Ray cluster (a local one by
  default), each in its own folder under the output folder, and writes ``results.csv`` and
  ``results.json``;
- :func:`run_job` is one job, run in-process: what every Ray task calls, and the plain sequential
  fit the benchmark compares against.

Resuming is the fit's own ``--resume``: a job folder with ``job_result.json`` marked done (and the
same job settings) is skipped, one with a ``checkpoint.pt`` continues from it, and a failed job is
retried.  A job never raises: its failure is a :class:`JobResult` with a one-line error.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
import tomllib
from collections import deque
from pathlib import Path
from typing import Any, Callable

from .errors import PipelineError, not_a_file, one_line
from .fit import FitConfig
from .scene import load_scene

#: keys of a job besides the fit settings: paths are relative to the job file's folder
JOB_KEYS = ("name", "video", "scene", "masks", "context", "horizon", "identify", "time_step_check")
#: fit settings a job may override (every FitConfig field)
FIT_KEYS = tuple(f.name for f in dataclasses.fields(FitConfig))
#: the file each job folder gets when the job ends (done or failed); ``job.json`` holds its settings
RESULT_FILE = "job_result.json"
SPEC_FILE = "job.json"
INSTALL_HINT = "fit-batch needs Ray: pip install 'dreamcloth[cluster]'"


class JobFileError(ValueError):
    """A job file that cannot be read: the message names the file, the row or job, and the key."""


class RayNotInstalledError(ImportError):
    """Ray (the ``cluster`` extra) is not installed."""

    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


class JobSettingsChangedError(ValueError):
    """A job folder was made by a job with other settings: resuming it would mix two fits."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One fit (or predict) of a batch.

    ``overrides``: FitConfig fields set for this job (the rest keep FitConfig's defaults);
    ``context``/``horizon``: frames fitted and predicted when ``predict`` is set;
    ``time_step_check``: a predict also simulates its prediction at half the time step
    (``predict.check_time_step``, ~13% of a job).  It does not change the fit, so it is not part of
    the job's settings (:meth:`spec`): a finished job is not run again to add or drop it.
    """

    name: str
    video: Path
    scene: Path
    masks: Path | None = None
    predict: bool = False
    context: int = 11
    horizon: int = 11
    identify: bool = True
    overrides: tuple[tuple[str, Any], ...] = ()
    time_step_check: bool = True

    def fit_config(self) -> FitConfig:
        """The job's FitConfig (predict starts with a horizon no longer than its context, as ``dreamcloth predict``)."""
        kwargs = dict(self.overrides)
        if self.predict:
            kwargs.setdefault("horizon_start", min(6, self.context))
        return FitConfig(**kwargs)

    def spec(self) -> dict:
        """Everything that decides the job's outcome, as JSON: a folder is resumed only by the same spec."""
        return {"name": self.name, "video": str(self.video), "scene": str(self.scene),
                "masks": str(self.masks) if self.masks else None, "predict": self.predict,
                "context": self.context if self.predict else None, "horizon": self.horizon if self.predict else None,
                "identify": self.identify, "config": dataclasses.asdict(self.fit_config())}


@dataclasses.dataclass
class JobResult:
    """What one job ended with.

    ``status``: ``done``, ``failed`` (``error`` says why, on one line) or ``interrupted`` (stopped
    with a checkpoint to resume from).  ``parameters``: one dict per fitted parameter with ``name``,
    ``value``, ``range`` and ``identifiable`` (None when not analysed).  ``mask_iou``: the fit's last
    frame, or with ``predict`` the mean over the predicted frames.  ``seconds``: this run's wall
    time of the job.  ``resumed``: continued from a checkpoint; ``skipped``: finished by an earlier
    run and not run again.  ``time_step_agreement``: with ``predict``, the predicted frames' mean
    silhouette IoU against the same prediction at half the time step, and ``sensitive`` whether it is
    below ``predict.STEP_AGREEMENT`` (None: not checked, or the check's rollout failed).
    """

    name: str
    status: str
    out: str
    parameters: list[dict] = dataclasses.field(default_factory=list)
    loss: float | None = None
    mask_iou: float | None = None
    seconds: float = 0.0
    error: str | None = None
    resumed: bool = False
    skipped: bool = False
    time_step_agreement: float | None = None
    sensitive: bool | None = None


@dataclasses.dataclass
class BatchResult:
    """Every job's result in job-file order, and where the summary was written."""

    results: list[JobResult]
    csv_path: Path
    json_path: Path

    def count(self, status: str) -> int:
        """How many jobs ended with ``status``."""
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> int:
        return self.count("failed")


# ------------------------------------------------------------------------------------------------
# job files


def _coerce(value: Any, kind: type, where: str, key: str) -> Any:
    """``value`` (a CSV string or a TOML value) as ``kind``; a JobFileError that names the key otherwise."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes"):
            return True
        if text in ("0", "false", "no"):
            return False
        raise JobFileError(f"{where}: {key} = {value!r} is not true/false")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise JobFileError(f"{where}: {key} = {value!r} is not an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise JobFileError(f"{where}: {key} = {value!r} is not an integer") from None
    if kind is float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise JobFileError(f"{where}: {key} = {value!r} is not a number") from None
        if not math.isfinite(out):
            raise JobFileError(f"{where}: {key} = {value!r} is not finite")
        return out
    return str(value)


def _fit_key_type(key: str) -> type:
    default = next(f.default for f in dataclasses.fields(FitConfig) if f.name == key)
    return int if default is None else type(default)  # polish_iterations: None means "automatic"


def _make_job(entry: dict[str, Any], where: str, base: Path, predict: bool) -> Job:
    unknown = [k for k in entry if k not in JOB_KEYS and k not in FIT_KEYS]
    if unknown:
        raise JobFileError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(JOB_KEYS + FIT_KEYS)})")
    for key in ("video", "scene"):
        if entry.get(key) in (None, ""):
            raise JobFileError(f"{where}: {key} is missing")

    def path(key: str) -> Path | None:
        v = entry.get(key)
        if v in (None, ""):
            return None
        p = Path(str(v)).expanduser()
        # absolute paths: Ray workers do not share the driver's working directory
        return (p if p.is_absolute() else base / p).resolve()

    video, scene = path("video"), path("scene")
    name = str(entry.get("name") or video.stem).strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise JobFileError(f"{where}: name {name!r} cannot be a folder name")
    overrides = tuple((k, _coerce(entry[k], _fit_key_type(k), where, k)) for k in FIT_KEYS if entry.get(k) not in (None, ""))
    kw: dict[str, Any] = {}
    for key, kind in (("context", int), ("horizon", int), ("identify", bool), ("time_step_check", bool)):
        if entry.get(key) not in (None, ""):
            kw[key] = _coerce(entry[key], kind, where, key)
    job = Job(name, video, scene, path("masks"), predict, overrides=overrides, **kw)
    try:
        job.fit_config()
    except ValueError as exc:
        raise JobFileError(f"{where}: {one_line(exc)}") from None
    if predict and job.context < 3:
        raise JobFileError(f"{where}: context must be at least 3 frames, got {job.context}")
    if predict and job.horizon < 1:
        raise JobFileError(f"{where}: horizon must be at least 1 frame, got {job.horizon}")
    # what a job needs on disk, before any job runs (a cluster's workers see the same paths)
    for key, p in (("video", video), ("scene", scene), ("masks", job.masks)):
        if p is not None and not p.is_file():
            raise JobFileError(f"{where}: {key} {p} {not_a_file(p)}")
    try:
        load_scene(scene)
    except (ValueError, OSError) as exc:  # SceneError names the scene file and the key
        raise JobFileError(f"{where}: {one_line(exc)}") from None
    return job


def read_jobs(path: Path, predict: bool = False, defaults: dict[str, Any] | None = None) -> list[Job]:
    """The jobs of a CSV or TOML job file.

    CSV: a header row naming the columns, one job per row; empty cells keep the default; lines
    starting with ``#`` are comments.  TOML: ``[[job]]`` tables, and an optional ``[defaults]``
    table applied to every job.  Keys: ``video`` and ``scene`` (required), ``masks``, ``name``
    (the job's folder; default: the video's file name without suffix), ``context``/``horizon``
    (predict), ``time_step_check`` (predict), ``identify``, and any FitConfig field (``iterations``, ``lr``, ``seed``, ...).
    ``defaults`` (e.g. from the command line) are overridden by the file's.
    """
    path = Path(path)
    if not path.is_file():
        raise JobFileError(f"job file {path} {not_a_file(path)}")
    base = path.resolve().parent
    entries: list[tuple[str, dict[str, Any]]] = []
    file_defaults: dict[str, Any] = {}
    if path.suffix.lower() == ".csv":
        try:
            # utf-8-sig: a CSV saved by a spreadsheet starts with a byte-order mark
            lines = [l for l in path.read_text(encoding="utf-8-sig").splitlines() if l.strip() and not l.lstrip().startswith("#")]
        except UnicodeDecodeError as exc:
            raise JobFileError(f"{path}: not a text file ({exc.reason})") from None
        rows = list(csv.reader(lines))
        if not rows:
            raise JobFileError(f"{path}: no header row (expected columns such as video,scene)")
        header = [h.strip() for h in rows[0]]
        for i, row in enumerate(rows[1:], start=2):
            if len(row) > len(header):
                raise JobFileError(f"{path}: row {i}: {len(row)} cells but the header has {len(header)} columns")
            entries.append((f"{path}: row {i}", {h: c.strip() for h, c in zip(header, row)}))
    elif path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise JobFileError(f"{path}: not valid TOML ({one_line(exc)})") from None
        extra = [k for k in data if k not in ("job", "defaults")]
        if extra:
            raise JobFileError(f"{path}: unknown key {extra[0]!r} (expected [[job]] tables and an optional [defaults])")
        file_defaults = data.get("defaults", {})
        if not isinstance(file_defaults, dict):
            raise JobFileError(f"{path}: defaults must be a table")
        jobs = data.get("job", [])
        if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
            raise JobFileError(f"{path}: job must be an array of tables ([[job]])")
        entries = [(f"{path}: job {i + 1}", j) for i, j in enumerate(jobs)]
    else:
        raise JobFileError(f"{path}: a job file must end in .csv or .toml")
    if not entries:
        raise JobFileError(f"{path}: no jobs")
    out: list[Job] = []
    seen: dict[str, str] = {}
    for where, entry in entries:
        merged = {**(defaults or {}), **file_defaults, **{k: v for k, v in entry.items() if v not in (None, "")}}
        job = _make_job(merged, where, base, predict)
        if job.name in seen:
            raise JobFileError(f"{where}: job name {job.name!r} is also used by {seen[job.name].split(': ', 1)[1]}; give each job a distinct name")
        seen[job.name] = where
        out.append(job)
    return out


# ------------------------------------------------------------------------------------------------
# one job


def pin_threads(threads: int) -> None:
    """Make this process use ``threads`` CPU threads in torch, OpenMP and Taichi.

    Left alone, each of N jobs on N cores starts a thread per core in Taichi and in torch: N^2
    busy threads on N cores, where idle spinning threads already made Taichi's backward 2.4x slower
    (DESIGN.md).  Taichi reads ``TI_CPU_MAX_NUM_THREADS`` at every ``ti.init`` (the simulator's
    and the renderer's runtimes both start Taichi lazily), so the variable reaches both without
    either knowing about batches.
    """
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["TI_CPU_MAX_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    from taichi.lang import impl

    if impl.get_runtime().prog is not None and impl.current_cfg().cpu_max_num_threads != threads:
        import taichi as ti

        ti.reset()  # the next kernel re-initialises Taichi with the new thread count


def _error_line(exc: BaseException) -> str:
    # our input errors read well on their own; anything else needs its type to make sense
    from dreamcloth.taichi_mpm.errors import SimulationError

    if isinstance(exc, (PipelineError, ValueError, SimulationError)):
        return one_line(exc)
    return f"{type(exc).__name__}: {one_line(exc)}"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished_result(job: Job, out: Path) -> JobResult | None:
    """The result of an earlier run of the same job when it finished, else None."""
    folder = Path(out) / job.name
    spec, res = _read_json(folder / SPEC_FILE), _read_json(folder / RESULT_FILE)
    if spec != job.spec() or res is None or res.get("status") != "done":
        return None
    return JobResult(**{**res, "skipped": True, "resumed": False, "seconds": res.get("seconds", 0.0)})


def run_job(job: Job, out: Path, threads: int | None = 1, stop_after: int | None = None,
            release_taichi: bool = False) -> JobResult:
    """Run one job in this process, into ``out / job.name``; never raises for a failed job.

    ``threads``: pin the process to this many threads first (None: leave it as it is).
    ``stop_after``: end a fit after that many material iterations with its checkpoint, as if it
    had been killed there (status ``interrupted``); the next run resumes it.
    ``release_taichi``: end Taichi's program after the job (what a Ray task does, see below).
    """
    from .fit_video import fit_video
    from .predict import predict_video

    folder = (Path(out) / job.name).resolve()
    t0 = time.perf_counter()
    resumed = False
    try:
        if threads is not None:
            pin_threads(threads)
        folder.mkdir(parents=True, exist_ok=True)
        spec = job.spec()
        old = _read_json(folder / SPEC_FILE)
        # a checkpoint or a result of other settings would be mixed into this job's; a bare
        # folder (a job that failed before its first checkpoint) can take the new settings
        if old is not None and old != spec and ((folder / "checkpoint.pt").is_file() or (folder / "params.json").is_file()):
            raise JobSettingsChangedError(f"{folder} holds a job with other settings; remove it or use another --out")
        (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2))
        (folder / RESULT_FILE).unlink(missing_ok=True)
        resumed = (folder / "checkpoint.pt").is_file()
        if not job.video.is_file():
            raise FileNotFoundError(f"video {job.video} does not exist")
        cfg = job.fit_config()
        checked: dict[str, Any] = {}  # a predict's time-step check (JobResult)
        if job.predict:
            # a batch runs its jobs side by side: each job's rollouts stay in its own process
            prediction = predict_video(job.video, job.scene, folder, job.context, job.horizon, cfg, job.masks, resume=resumed,
                                       workers=1, time_step_check=job.time_step_check)
            doc = prediction.fit.doc
            mask_iou = prediction.report["mean_mask_iou"]
            check = prediction.report.get("time_step_check") or {}
            checked = {"time_step_agreement": check.get("mean_mask_iou"), "sensitive": check.get("sensitive")}
        else:
            outcome = fit_video(job.video, job.scene, folder, cfg, job.masks, identify=job.identify, resume=resumed,
                                stop_after=stop_after, workers=1)
            if outcome.stopped_at is not None:
                return JobResult(job.name, "interrupted", str(folder), seconds=round(time.perf_counter() - t0, 2), resumed=resumed)
            doc = outcome.doc
            mask_iou = doc["mask_iou_last_frame"]
        params = [{"name": p["name"], "value": p["value"], "range": p["range"], "identifiable": p.get("identifiable")}
                  for p in doc["parameters"]]
        result = JobResult(job.name, "done", str(folder), params, doc["loss"], mask_iou, round(time.perf_counter() - t0, 2),
                           resumed=resumed, **checked)
    except Exception as exc:  # noqa: BLE001 - a job's failure is data: it must not stop the batch
        result = JobResult(job.name, "failed", str(folder), seconds=round(time.perf_counter() - t0, 2), error=_error_line(exc),
                           resumed=resumed)
    if folder.is_dir():
        (folder / RESULT_FILE).write_text(json.dumps(dataclasses.asdict(result), indent=2))
    if release_taichi:
        from taichi.lang import impl

        if impl.get_runtime().prog is not None:
            import taichi as ti

            # Taichi writes newly compiled kernels to its offline cache only when its program
            # ends, and Ray kills idle workers without that: every worker of every batch then
            # compiled the backward kernels from scratch (~170 s of a 220 s tiny fit here).
            # Taichi is not started again in this process after this (run_batch: one job per worker).
            ti.reset()
    return result


# ------------------------------------------------------------------------------------------------
# the batch


def import_ray():
    """The ``ray`` module, or RayNotInstalledError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayNotInstalledError() from None
    return ray


def _worker_env(threads: int) -> dict[str, str]:
    # set when a worker process starts, before torch or Taichi are imported (on every node of a
    # cluster, whose workers do not inherit this shell's environment)
    from .environment import DEFAULTS

    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TI_CPU_MAX_NUM_THREADS": n, **DEFAULTS}


def _connect(ray, address: str | None, workers: int, threads: int) -> None:
    common = dict(log_to_driver=False, logging_level=logging.ERROR, runtime_env={"env_vars": _worker_env(threads)})
    if address:
        ray.init(address=address, **common)  # an existing cluster: its resources are its own
    else:
        # a local cluster sized to the batch; the dashboard is a web server we do not need
        ray.init(num_cpus=workers * threads, include_dashboard=False, object_store_memory=100 * 2**20, **common)


#: ``on_event(kind, job, result)`` with kind ``skipped``, ``started`` or ``finished`` (result None for ``started``)
EventCallback = Callable[[str, Job, "JobResult | None"], None]


def run_batch(jobs: list[Job], out: Path, workers: int | None = None, threads: int = 1, address: str | None = None,
              stop_after: int | None = None, on_event: EventCallback | None = None) -> BatchResult:
    """Run every unfinished job as a Ray task, at most ``workers`` at a time, and write the summary.

    ``workers``: jobs at once (default: the cores of this machine, or of the cluster at
    ``address``, divided by ``threads``); ``threads``: CPU threads per job; ``address``: an
    existing Ray cluster (``ray start --head`` prints it); None starts a local one for this
    batch.  Jobs finished by an earlier run into ``out`` are skipped, interrupted ones resume from
    their checkpoints, failed ones run again.  ``stop_after``: see :func:`run_job`.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out).resolve()
    notify = on_event or (lambda kind, job, result: None)
    results: dict[str, JobResult] = {}
    pending: deque[Job] = deque()
    for job in jobs:
        done = finished_result(job, out)
        if done is not None:
            results[job.name] = done
            notify("skipped", job, done)
        else:
            pending.append(job)
    out.mkdir(parents=True, exist_ok=True)
    if pending:
        ray = import_ray()
        local_workers = workers or max(1, (os.cpu_count() or 1) // threads)
        _connect(ray, address, local_workers, threads)
        try:
            limit = workers or max(1, int(ray.cluster_resources().get("CPU", threads)) // threads)
            # one retry: a worker lost with its node resumes from the checkpoint elsewhere; a job
            # that crashes its worker deterministically should not cost four attempts.  One job
            # per worker process: a job ends Taichi's program (see run_job), and a second job that
            # started Taichi again in the same process crashed it (SIGSEGV, Taichi 1.7.4)
            task = ray.remote(num_cpus=threads, max_retries=1, max_calls=1)(run_job)
            in_flight: dict[Any, Job] = {}
            try:
                while pending or in_flight:
                    while pending and len(in_flight) < limit:
                        job = pending.popleft()
                        in_flight[task.remote(job, out, threads, stop_after, True)] = job
                        notify("started", job, None)
                    ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                    for ref in ready:
                        job = in_flight.pop(ref)
                        try:
                            result = ray.get(ref)
                        except Exception as exc:  # noqa: BLE001 - the worker died (crash, out of memory): record it
                            result = JobResult(job.name, "failed", str(out / job.name), error=_error_line(exc).split(" Traceback")[0])
                        results[job.name] = result
                        notify("finished", job, result)
            except KeyboardInterrupt:
                for ref, job in in_flight.items():
                    ray.cancel(ref, force=True)
                    results[job.name] = JobResult(job.name, "interrupted", str(out / job.name))
                for job in pending:
                    results[job.name] = JobResult(job.name, "interrupted", str(out / job.name))
                write_summary(out, [results[j.name] for j in jobs])
                raise
        finally:
            ray.shutdown()
    ordered = [results[j.name] for j in jobs]
    csv_path, json_path = write_summary(out, ordered)
    return BatchResult(ordered, csv_path, json_path)


def write_summary(out: Path, results: list[JobResult]) -> tuple[Path, Path]:
    """``results.json`` (every job with its parameters) and ``results.csv`` (one row per job; per
    parameter its value, range and identifiability flag, in columns named after it)."""
    out = Path(out)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "failed", "interrupted")}
    json_path = out / "results.json"
    json_path.write_text(json.dumps({"jobs": len(results), **counts, "results": [dataclasses.asdict(r) for r in results]}, indent=2))
    names: list[str] = []
    for r in results:
        names += [p["name"] for p in r.parameters if p["name"] not in names]
    fixed = ["name", "status", "loss", "mask_iou", "time_step_agreement", "sensitive", "seconds", "resumed", "skipped", "error", "out"]
    header = fixed + [f"{n}{suffix}" for n in names for suffix in ("", "_low", "_high", "_identifiable")]
    csv_path = out / "results.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in results:
            row = dataclasses.asdict(r)
            cells = ["" if row[k] is None else row[k] for k in fixed]
            by_name = {p["name"]: p for p in r.parameters}
            for n in names:
                p = by_name.get(n)
                ident = "" if p is None or p["identifiable"] is None else p["identifiable"]
                cells += ["", "", "", ""] if p is None else [p["value"], p["range"][0], p["range"][1], ident]
            w.writerow(cells)
    return csv_path, json_path
