"""``dreamcloth fit-batch``: a local Ray cluster runs tiny fits; a broken job is recorded, an interrupted
batch resumes to the uninterrupted result, job files with mistakes are one-line errors."""

import csv
import dataclasses
import json
import sys

import pytest
from typer.testing import CliRunner

from dreamcloth.cli.app import app
from dreamcloth.cli.pipeline import batch as B
from dreamcloth.cli.pipeline.batch import FIT_KEYS, JobFileError, JobResult, read_jobs, run_batch, run_job, write_summary
from dreamcloth.cli.pipeline.predict import STEP_AGREEMENT
from dreamcloth.cli.errors import EXIT_JOBS_FAILED
from dreamcloth.cli.pipeline.simulate import run_simulation

from .scenes import drape_text, write_drape

# the smallest fit that still runs every stage: 4 material iterations (1 Adam, 3 of the Newton polish), 2 starts
SETTINGS = "iterations,appearance_steps,starts,horizon_start,identify"
TINY = "4,10,2,4,false"


def _run(args):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def batch_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batchdata")
    # 6 frames, and a narrower range than the scenes' [20, 400]: the CFL time step from its upper
    # bound is longer (36 substeps per frame, not 53).  The grid stays at 16: its size is compiled
    # into the kernels, and the other fit tests have compiled (and cached) these ones
    small = {"young_modulus = [20.0, 400.0]": "young_modulus = [20.0, 100.0]"}

    def text(E):
        t = drape_text(E=E, frames=6)
        for a, b in small.items():
            t = t.replace(a, b)
        return t

    truth = write_drape(folder, "truth.toml", text=text(60.0))
    run_simulation(truth, folder / "sim")
    write_drape(folder, "fit.toml", text=text(100.0))
    (folder / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 500)
    jobs = folder / "jobs.csv"
    jobs.write_text(
        f"name,video,scene,lr,{SETTINGS}\n"
        f"soft,sim/video.mp4,fit.toml,,{TINY}\n"
        f"fast,sim/video.mp4,fit.toml,0.3,{TINY}\n"
        f"broken,corrupt.mp4,fit.toml,,{TINY}\n"
    )
    return folder, jobs


def _values(doc):
    return {r["name"]: (r["status"], r["loss"], [(p["name"], p["value"]) for p in r["parameters"]]) for r in doc["results"]}


@pytest.mark.slow
def test_batch_records_failure_and_resumes_to_the_same_results(batch_data, tmp_path):
    pytest.importorskip("ray", reason="Ray is the cluster extra: pip install -e '.[test,cluster]' (CI does)")
    folder, jobs = batch_data
    code, output = _run(["fit-batch", str(jobs), "--out", str(tmp_path / "full"), "--workers", "2"])
    assert code == EXIT_JOBS_FAILED, output
    errors = [l for l in output.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "1 of 3 jobs failed" in errors[0], output
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    assert (full["done"], full["failed"]) == (2, 1)
    by_name = {r["name"]: r for r in full["results"]}
    assert "corrupt.mp4" in by_name["broken"]["error"] and "\n" not in by_name["broken"]["error"]
    for name in ("soft", "fast"):
        r = by_name[name]
        (p,) = r["parameters"]
        assert r["status"] == "done" and p["name"] == "young_modulus" and 20.0 <= p["value"] <= 100.0
        assert p["range"] == [20.0, 100.0] and 0.0 < r["mask_iou"] <= 1.0
        assert (tmp_path / "full" / name / "params.json").is_file() and (tmp_path / "full" / name / "fit.mp4").is_file()
    with (tmp_path / "full" / "results.csv").open() as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["broken"]["status"] == "failed" and rows["soft"]["young_modulus_high"] == "100.0"
    assert float(rows["fast"]["young_modulus"]) == by_name["fast"]["parameters"][0]["value"]

    # interrupted after the first iteration of every job (their checkpoints stay), then the same command:
    # with 1 Adam iteration the Newton polish may converge by the second
    split = tmp_path / "split"
    stopped = run_batch(read_jobs(jobs), split, workers=2, stop_after=1)
    assert [r.status for r in stopped.results] == ["interrupted", "interrupted", "failed"]
    assert (split / "soft" / "checkpoint.pt").is_file() and not (split / "soft" / "params.json").exists()
    code, output = _run(["fit-batch", str(jobs), "--out", str(split), "--workers", "2"])
    assert code == EXIT_JOBS_FAILED, output
    resumed = json.loads((split / "results.json").read_text())
    assert all(r["resumed"] for r in resumed["results"] if r["name"] != "broken")
    assert _values(resumed) == _values(full)  # bit-identical values and losses

    # the finished jobs again: nothing to run (Ray is not even started), the same summary
    finished = read_jobs(jobs)[:2]
    again = run_batch(finished, split, workers=2)
    assert [(r.status, r.skipped) for r in again.results] == [("done", True), ("done", True)]
    assert _values(json.loads(again.json_path.read_text())) == {k: v for k, v in _values(full).items() if k != "broken"}


def test_job_file_errors_are_one_line(batch_data, tmp_path):
    folder, jobs = batch_data
    cases = {
        "missing.csv": (None, "missing.csv does not exist"),
        "unknown.csv": ("video,scene,iters\nsim/video.mp4,fit.toml,3\n", "row 2: unknown key 'iters'"),
        "novideo.csv": ("name,scene\na,fit.toml\n", "row 2: video is missing"),
        "badint.csv": ("video,scene,iterations\nsim/video.mp4,fit.toml,many\n", "iterations = 'many' is not an integer"),
        "range.csv": ("video,scene,iterations\nsim/video.mp4,fit.toml,0\n", "iterations must be >= 1"),
        "twice.csv": ("video,scene\nsim/video.mp4,fit.toml\nsim/video.mp4,fit.toml\n", "job name 'video' is also used by row 2"),
        "unknown.toml": ("[[job]]\nvideo = 'sim/video.mp4'\nscene = 'fit.toml'\nspeed = 2\n", "job 1: unknown key 'speed'"),
        "toplevel.toml": ("[[jobs]]\nvideo = 'a.mp4'\n", "unknown key 'jobs'"),
        "broken.toml": ("[[job]\n", "not valid TOML"),
        "jobs.txt": ("video,scene\n", "must end in .csv or .toml"),
        # what a job needs is checked before anything runs (these files sit next to the data)
        "novid.csv": ("video,scene\nsim/nope.mp4,fit.toml\n", "row 2: video"),
        "noscene.csv": ("video,scene\nsim/video.mp4,nope.toml\n", "row 2: scene"),
        "badscene.csv": ("video,scene\nsim/video.mp4,bad_scene.toml\n", "row 2: " + str(folder / "bad_scene.toml")),
        "negweight.csv": ("video,scene,w_mask\nsim/video.mp4,fit.toml,-1\n", "row 2: w_mask must be >= 0, got -1.0"),
        "badlr.toml": ("[[job]]\nvideo = 'sim/video.mp4'\nscene = 'fit.toml'\nappearance_lr = -1.0\n", "appearance_lr must be positive"),
    }
    next_to_data = {"twice.csv", "novid.csv", "noscene.csv", "badscene.csv", "negweight.csv", "badlr.toml"}
    (folder / "bad_scene.toml").write_text((folder / "fit.toml").read_text().replace("size = [0.6, 0.6]", "size = [[0.6], [0.6]]"))
    for name, (text, expected) in cases.items():
        path = (folder if name in next_to_data else tmp_path) / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(JobFileError, match=expected.replace("(", r"\(")):
            read_jobs(path)
        code, output = _run(["fit-batch", str(path), "--out", str(tmp_path / "o")])
        errors = [l for l in output.splitlines() if l.startswith("error:")]
        assert code == 2 and len(errors) == 1 and expected in errors[0], (name, output)
        assert len(output.strip().splitlines()) == 1, output
    assert not (tmp_path / "o").exists()
    # the command line's own mistakes are named as options, not blamed on the job file's rows
    for args, expected in ((["--iterations", "0"], "--iterations must be >= 1, got 0"),
                           (["--predict", "--context", "2"], "--context must be at least 3 frames, got 2"),
                           (["--predict", "--horizon", "0"], "--horizon must be at least 1 frame, got 0")):
        code, output = _run(["fit-batch", str(jobs), "--out", str(tmp_path / "o"), *args])
        assert code == 2 and output.strip() == f"error: {expected}", output
    # a CSV saved by a spreadsheet starts with a byte-order mark
    bom = folder / "bom.csv"
    bom.write_bytes("video,scene\nsim/video.mp4,fit.toml\n".encode("utf-8-sig"))
    (job,) = read_jobs(bom)
    assert job.name == "video"


def test_toml_jobs_with_defaults_and_overrides(batch_data, tmp_path):
    folder, _ = batch_data
    path = folder / "jobs.toml"
    path.write_text("[defaults]\niterations = 7\nlr = 0.1\n\n[[job]]\nname = 'one'\nvideo = 'sim/video.mp4'\nscene = 'fit.toml'\n"
                    "\n[[job]]\nvideo = 'corrupt.mp4'\nscene = 'fit.toml'\niterations = 3\ncontext = 5\n")
    one, two = read_jobs(path, predict=True, defaults={"iterations": 30, "seed": 2})
    assert (one.name, two.name) == ("one", "corrupt")
    assert one.video == (folder / "sim" / "video.mp4").resolve() and one.predict and one.context == 11
    assert (one.fit_config().iterations, one.fit_config().lr, one.fit_config().seed) == (7, 0.1, 2)
    assert (two.fit_config().iterations, two.context, two.fit_config().horizon_start) == (3, 5, 5)
    assert one.spec() != two.spec() and one.spec()["config"]["iterations"] == 7
    assert "iterations" in FIT_KEYS


@pytest.mark.slow
def test_predict_jobs_report_the_time_step_check(batch_data, tmp_path, monkeypatch):
    folder, _ = batch_data
    path = tmp_path / "predict.csv"
    path.write_text(f"name,video,scene,context,horizon,time_step_check,{SETTINGS}\n"
                    f"checked,{folder}/sim/video.mp4,{folder}/fit.toml,4,2,,{TINY}\n"
                    f"unchecked,{folder}/sim/video.mp4,{folder}/fit.toml,4,2,false,{TINY}\n")
    checked, unchecked = read_jobs(path, predict=True)
    assert checked.time_step_check and not unchecked.time_step_check
    # the check does not change the fit: a finished job is not run again to add or drop it
    assert dataclasses.replace(checked, time_step_check=False).spec() == checked.spec()
    assert read_jobs(path, predict=True, defaults={"time_step_check": False})[0].time_step_check is False

    result = run_job(checked, tmp_path / "out", threads=None)
    assert result.status == "done", result.error
    report = json.loads((tmp_path / "out" / "checked" / "prediction.json").read_text())
    assert result.time_step_agreement == report["time_step_check"]["mean_mask_iou"]
    assert 0.0 < result.time_step_agreement <= 1.0 and result.sensitive == (result.time_step_agreement < STEP_AGREEMENT)

    # a job that turns it off: predict is told so, and its result has no figure
    import dreamcloth.cli.pipeline.predict as P

    seen = {}

    def fake_predict(*args, **kwargs):
        seen.update(kwargs)
        return P.Prediction({"mean_mask_iou": 0.5, "time_step_check": None},
                            type("Fit", (), {"doc": {"parameters": [], "loss": 0.25}})())

    monkeypatch.setattr(P, "predict_video", fake_predict)
    off = run_job(unchecked, tmp_path / "out", threads=None)
    assert off.status == "done" and seen["time_step_check"] is False
    assert (off.time_step_agreement, off.sensitive) == (None, None)
    csv_path, _ = write_summary(tmp_path / "out", [result, off])
    with csv_path.open() as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows["checked"]["time_step_agreement"]) == result.time_step_agreement
    assert rows["unchecked"]["time_step_agreement"] == rows["unchecked"]["sensitive"] == ""


def test_predict_batch_table_shows_the_time_step_check(batch_data, tmp_path, monkeypatch):
    _, jobs = batch_data
    told = {}

    def fake_batch(job_list, out, **kwargs):
        told["checks"] = [j.time_step_check for j in job_list]
        results = [JobResult("soft", "done", str(out), mask_iou=0.91, time_step_agreement=0.987, sensitive=False),
                   JobResult("fast", "done", str(out), mask_iou=0.62, time_step_agreement=0.812, sensitive=True)]
        return B.BatchResult(results, *write_summary(out, results))

    monkeypatch.setattr(B, "import_ray", lambda: None)
    monkeypatch.setattr(B, "run_batch", fake_batch)
    out = tmp_path / "o"
    out.mkdir()
    code, output = _run(["fit-batch", str(jobs), "--out", str(out), "--predict", "--no-time-step-check"])
    assert code == 0 and told["checks"] == [False, False, False], output
    code, output = _run(["fit-batch", str(jobs), "--out", str(out), "--predict"])
    assert code == 0 and told["checks"] == [True, True, True], output
    assert "at dt/2" in output and "0.987" in output and "0.812 sensitive" in output, output
    (line,) = [l for l in output.splitlines() if "change with the time step" in l]
    assert "1 prediction(s)" in line and "fast" in line and "soft" not in line


def test_without_ray_the_command_says_how_to_install_it(batch_data, tmp_path, monkeypatch):
    folder, jobs = batch_data
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when Ray is not installed
    code, output = _run(["fit-batch", str(jobs), "--out", str(tmp_path / "o")])
    assert code != 0 and output.strip() == "error: fit-batch needs Ray: pip install 'dreamcloth[cluster]'", output


def test_pin_threads_reaches_taichi_and_torch():
    # a fresh process: Taichi must not have been initialised before the pin, as in a Ray worker
    import subprocess

    code = ("from dreamcloth.cli.pipeline.batch import pin_threads\n"
            "pin_threads(1)\n"
            "import torch\n"
            "from dreamcloth.taichi_mpm import runtime\n"
            "from taichi.lang import impl\n"
            "runtime.ensure('cpu', torch.float32)\n"
            "print(impl.current_cfg().cpu_max_num_threads, torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["1", "1"], out.stdout
