"""Predict a video's future: fit on its first frames, simulate on, and score the frames the fit did not see."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from .errors import InputError
from .fit_video import FitOutcome, fit_video
from .progress import Progress, silent


#: the predicted frames' mean silhouette IoU against the same prediction at half the time step below
#: which ``predict`` calls the predicted motion sensitive (:func:`check_time_step`).  Measured 2026-12-06
#: by the predicts of the cross-simulator ``_se`` cases (benchmarks/cross_sim.py; 42 against 84
#: substeps a frame): 0.969 (``tilted_se``) and 0.988 (``swing_se``), whose predictions score
#: 0.95-0.96 against Newton; 0.850 (``sphere_se``) and 0.853 (``hammock_se``), which fold, and which
#: Newton itself reproduces at half its time step only to 0.84 and 0.79 (README, "Cross-simulator check").
STEP_AGREEMENT = 0.95


def check_time_step(problem, u, alpha, context: int, total: int) -> dict:
    """The prediction simulated again at half the time step, its silhouettes compared with the
    prediction's own (``alpha [T, 1, H, W]``, the rendered frames of ``problem``'s rollout at ``u``)
    on the predicted frames ``context .. total - 1``.

    A motion that folds, buckles or slides on a contact is sensitive in any simulator: a change as
    small as halving dt moves it as much as a different fabric would, and a frame-by-frame prediction
    of it cannot be trusted however good the fit.  A smooth motion agrees with itself to ~0.97-0.99."""
    import torch

    from dreamcloth import taichi_mpm as M
    from dreamcloth.render import SILHOUETTE_ALPHA

    from .losses import mask_iou

    k = problem.sim.config.substeps_per_frame
    try:
        problem.with_substeps(2 * k)
        with torch.no_grad():
            _, fine = problem.render(problem.rollout(u, total), range(context, total))
    except M.SimulationError as exc:  # the prediction stands; the check says why it has no figure
        return {"substeps_per_frame": k, "against_substeps_per_frame": 2 * k, "error": str(exc), "sensitive": None}
    finally:
        problem.with_substeps(k)
    a = (alpha[context:total, 0].cpu() >= SILHOUETTE_ALPHA).float()
    b = (fine[:, 0].cpu() >= SILHOUETTE_ALPHA).float()
    iou = [mask_iou(x, y) for x, y in zip(a, b)]
    worst = min(range(len(iou)), key=iou.__getitem__)
    mean = sum(iou) / len(iou)
    return {"substeps_per_frame": k, "against_substeps_per_frame": 2 * k,
            "per_frame": [{"frame": context + i, "mask_iou": v} for i, v in enumerate(iou)],
            "mean_mask_iou": mean, "worst_mask_iou": iou[worst], "worst_frame": context + worst,
            "threshold": STEP_AGREEMENT, "sensitive": mean < STEP_AGREEMENT}


@dataclasses.dataclass
class Prediction:
    """A prediction: ``report`` is prediction.json's document, ``fit`` the fit on the context frames."""

    report: dict
    fit: FitOutcome


def predict_video(video: Path, scene_path: Path, out: Path, context: int, horizon: int, cfg, masks: Path | None = None,
                  device: str = "cpu", resume: bool = False, progress: Progress = silent,
                  log: Callable[[str], None] = lambda message: None, workers: int | None = None,
                  time_step_check: bool = True) -> Prediction:
    """Fit on the first ``context`` frames, simulate ``horizon`` more, and score them against the video.

    Writes predicted.mp4, predicted_frames/, predicted_masks/, prediction_vs_video.mp4 and
    prediction.json (besides the fit's own reports) into ``out``; the Prediction's report is
    prediction.json's document (``per_frame`` scores, ``last_frame``, ``mean_mask_iou``, ``fit``, and
    ``time_step_check``: the prediction against itself at half the time step, :func:`check_time_step`;
    None when not asked for).  ``resume``: continue the fit
    from ``out``'s checkpoint (what ``dreamcloth fit-batch`` does with an interrupted job);
    ``workers``: the fit's rollout processes (``fit_video``); ``time_step_check``: simulate the
    prediction again at half the time step and report how well the two agree (:func:`check_time_step`;
    one more rollout at twice the substeps: 8.59 -> 9.72 min on the 41x41 real-fabric predict).
    """
    import numpy as np

    from dreamcloth.render import SILHOUETTE_ALPHA, side_by_side, write_png_frames, write_video

    from .fit import load_footage
    from .losses import mask_iou, psnr
    from .masks import foreground_masks
    from .scene import load_scene

    if context < 3:
        raise InputError(f"--context must be at least 3 frames, got {context}")
    if horizon < 1:
        raise InputError(f"--horizon must be at least 1 frame, got {horizon}")
    scene = load_scene(scene_path)
    # the whole video is decoded once: the fit sees its first frames, the prediction is scored on the rest
    footage = load_footage(video, scene, masks, context)
    outcome: FitOutcome = fit_video(video, scene, out, cfg, masks, device, frames=context, identify=False, resume=resume,
                                    target=footage.first(context), progress=progress, log=log, workers=workers,
                                    report_frames=context + horizon)
    total = context + horizon
    # the fit's report rolled the fitted values out over every frame: the context's frames are
    # fit.mp4's, the rest the prediction
    color, alpha = outcome.rendered
    # the predicted silhouette is cut from the predicted image exactly as the video's are cut from
    # the video (colour distance to the background), so the IoU compares like with like; masks from a
    # mask video or the colour model are compared with the rendered silhouette
    cut_from_background = masks is None and scene.camera.masks == "background"
    pred_masks = foreground_masks(color, scene.camera.background) if cut_from_background else (alpha >= SILHOUETTE_ALPHA).float().cpu()
    write_video(color, out / "predicted.mp4", fps=scene.settings.fps)
    write_png_frames(color[context:], out / "predicted_frames")
    write_png_frames(pred_masks[context:, 0], out / "predicted_masks", prefix="mask")
    frames, true_masks = footage.frames, footage.masks
    scores = []
    for t in range(context, min(total, frames.shape[0], true_masks.shape[0])):
        scores.append({"frame": t, "mask_iou": mask_iou(pred_masks[t], true_masks[t]), "psnr": psnr(color[t], frames[t])})
    if scores:
        n = len(scores)
        write_video(side_by_side([frames[context : context + n], color[context : context + n]]), out / "prediction_vs_video.mp4",
                    fps=scene.settings.fps)
    report = {"context": context, "horizon": horizon, "frames_scored": len(scores), "per_frame": scores,
              "last_frame": scores[-1] if scores else None,
              "mean_mask_iou": float(np.mean([s["mask_iou"] for s in scores])) if scores else None,
              "fit": {p["name"]: p["value"] for p in outcome.doc["parameters"]}, "time_step_check": None}
    # written before the check and again with it: whatever stops the check, the prediction is kept
    (out / "prediction.json").write_text(json.dumps(report, indent=2))
    if time_step_check:
        progress("check", 0, 1, "the prediction at half the time step")
        report["time_step_check"] = check = check_time_step(outcome.result.problem, outcome.fitted_u, alpha, context, total)
        progress("check", 1, 1, None)
        if "error" in check:
            log(f"the time step check failed ({check['error']}); the prediction stands")
        (out / "prediction.json").write_text(json.dumps(report, indent=2))
    return Prediction(report, outcome)
