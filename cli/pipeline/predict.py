"""Predict a video's future: fit on its first frames, simulate on, and score the frames the fit did not see."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from .errors import InputError
from .fit_video import FitOutcome, fit_video
from .progress import Progress, silent


@dataclasses.dataclass
class Prediction:
    """A prediction: ``report`` is prediction.json's document, ``fit`` the fit on the context frames."""

    report: dict
    fit: FitOutcome


def predict_video(video: Path, scene_path: Path, out: Path, context: int, horizon: int, cfg, masks: Path | None = None,
                  device: str = "cpu", resume: bool = False, progress: Progress = silent,
                  log: Callable[[str], None] = lambda message: None, workers: int | None = None) -> Prediction:
    """Fit on the first ``context`` frames, simulate ``horizon`` more, and score them against the video.

    Writes predicted.mp4, predicted_frames/, predicted_masks/, prediction_vs_video.mp4 and
    prediction.json (besides the fit's own reports) into ``out``; the Prediction's report is
    prediction.json's document (``per_frame`` scores, ``last_frame``, ``mean_mask_iou``, ``fit``).  ``resume``: continue the fit
    from ``out``'s checkpoint (what ``dreamcloth fit-batch`` does with an interrupted job);
    ``workers``: the fit's rollout processes (``fit_video``).
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
              "fit": {p["name"]: p["value"] for p in outcome.doc["parameters"]}}
    (out / "prediction.json").write_text(json.dumps(report, indent=2))
    return Prediction(report, outcome)
