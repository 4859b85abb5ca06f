"""What a fit leaves for people: params.json, loss.png, params.png and fit.mp4."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _at_physical_limit(parameter: str, edge: str, lo: float, hi: float) -> bool:
    """Whether the range's ``edge`` is the parameter's own admissible limit (damping 1, drag or
    friction 0), where a range cannot be widened: a fit that ends there reads "none of it"."""
    from dreamcloth.taichi_mpm.parameters import PARAMETERS

    spec = PARAMETERS.get(parameter)
    if spec is None:
        return False
    if edge == "high":
        return spec.high_inclusive and hi == spec.high
    return spec.low_inclusive and lo == spec.low


#: (parameter, edge) where the physical limit is the most of the parameter's effect, not the least
_LIMIT_IS_MOST = {("drag_tangential", "high")}


def _meaning(parameter: str) -> str:
    from dreamcloth.taichi_mpm.parameters import PARAMETERS

    return {"damping": "1 keeps all the velocity: no damping", "drag_coefficient": "0: no air drag",
            "friction": "0: frictionless", "max_stretch": "1: no stretch at all",
            "drag_tangential": "0: drag along the sheet's normal only; 1: along the velocity"}.get(parameter, PARAMETERS[parameter].rule())


def write_params_json(path: Path, scene, space, result, ident: dict | None, notes: list[str], extra: dict) -> dict:
    """params.json: each value with its range, initial guess and identifiability; NaN is never written."""
    names = space.names(scene)
    params = []
    for name, key, (lo, hi), lg in zip(names, space.keys, space.ranges, space.log):
        v = result.values[key]
        if not math.isfinite(v):
            raise ValueError(f"refusing to write a non-finite value for {name}")
        edge = space.range_edge(len(params), v)
        entry = {"name": name, "object": scene.objects[key[0]].name, "parameter": key[1], "value": v, "range": [lo, hi],
                 "initial": result.initial[key], "space": "log" if lg else "linear", "at_range_edge": edge}
        limit = edge is not None and _at_physical_limit(key[1], edge, lo, hi)
        if limit:
            entry["at_physical_limit"] = True
            notes = notes + [
                f"{name} = {v:.4g} ended at {lo if edge == 'low' else hi:g}, the physical limit of {key[1]} "
                f"({_meaning(key[1])}): the range cannot be widened there; the video shows as "
                f"{'much' if (key[1], edge) in _LIMIT_IS_MOST else 'little'} of it as the model allows."
            ]
        elif edge is not None:
            notes = notes + [
                f"{name} = {v:.4g} ended at the {'bottom' if edge == 'low' else 'top'} of its range [{lo:g}, {hi:g}]: "
                f"the range, not the video, stopped it; widen [object.fit] {key[1]} "
                f"{'downwards' if edge == 'low' else 'upwards'} in {scene.path.name} and fit again."
            ]
        if ident is not None:
            info = ident["parameters"][name]
            entry["identifiable"] = info["identifiable"]
            entry["independence"] = round(info["independence"], 4)
        params.append(entry)
    if result.history and params and all(math.isclose(result.values[k], result.initial[k], rel_tol=1e-9, abs_tol=1e-15)
                                          for k in space.keys):
        notes = notes + [
            f"the fit ended at its starting values after {len(result.history)} iterations: none of its steps had a lower "
            "loss over the whole video than the start, so these values are the starting guess, not a measurement "
            "(a rough loss, e.g. cloth that folds differently at every value, or a model that cannot follow the video)."
        ]
    doc = {
        "parameters": params,
        "loss": _finite(result.loss),
        "iterations": len(result.history),
        "identifiability": ident,
        "notes": notes,
        "events": result.state.events,
        **extra,
    }
    path.write_text(json.dumps(doc, indent=2))
    return doc


def plot_curves(out: Path, scene, space, history: list[dict], truth: dict[str, float] | None = None) -> None:
    """loss.png (loss and horizon over iterations) and params.png (each parameter over iterations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [h["iteration"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.semilogy(it, [h["loss"] for h in history], "o-", ms=3, label="loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (L1 + D-SSIM + mask)")
    ax2 = ax.twinx()
    ax2.step(it, [h["horizon"] for h in history], where="post", color="0.6", lw=1)
    ax2.set_ylabel("horizon (frames)", color="0.4")
    for h0, h1 in zip(history[:-1], history[1:]):
        if h1["candidate"] != h0["candidate"]:
            ax.axvline(h1["iteration"], color="r", ls=":", lw=1)
    ax.set_title("fit loss (red: restart from the next starting point)")
    fig.tight_layout()
    fig.savefig(out / "loss.png")
    plt.close(fig)

    names = space.names(scene)
    n = len(names)
    fig, axes = plt.subplots(n, 1, figsize=(6, 2.2 * n), dpi=120, squeeze=False)
    for k, (name, key, (lo, hi), lg) in enumerate(zip(names, space.keys, space.ranges, space.log)):
        a = axes[k, 0]
        vals = [h["values"][f"{key[0]}:{key[1]}"] for h in history]
        a.plot(it, vals, "o-", ms=3)
        a.axhspan(lo, hi, color="0.93", zorder=0)
        if truth and name in truth:
            a.axhline(truth[name], color="g", ls="--", lw=1, label="truth")
            a.legend(loc="best", fontsize=7)
        if lg:
            a.set_yscale("log")
        a.set_ylabel(name, fontsize=8)
        a.set_ylim(lo * (0.9 if lg else 1) - (0 if lg else 0.02 * (hi - lo)), hi * (1.1 if lg else 1) + (0 if lg else 0.02 * (hi - lo)))
    axes[-1, 0].set_xlabel("iteration (grey band: the fit range)")
    fig.tight_layout()
    fig.savefig(out / "params.png")
    plt.close(fig)


def write_fit_video(out: Path, problem, u: torch.Tensor, fps: float, total: int | None = None,
                    rendered: tuple | None = None) -> dict:
    """fit.mp4: the video | the fit | their difference (x4), for every frame; returns per-frame
    metrics, and under ``"color"`` and ``"alpha"`` the rendered frames ``[total, ...]`` of a rollout
    that goes on to ``total`` frames (default: the video's; ``predict`` continues it instead of
    simulating the fitted frames again).  ``rendered``: that rollout's ``FitProblem.rendered_rollout``
    when a rollout worker made it already."""
    from dreamcloth.render import difference, side_by_side, write_video

    from .losses import mask_iou, psnr

    frames = problem.target.frames.shape[0]
    total = max(total or frames, frames)
    rendered, alpha = rendered if rendered is not None else problem.rendered_rollout(u, total)
    color = rendered[:frames]
    target = problem.target.frames.float()
    diff = difference(target, color, gain=4.0)
    write_video(side_by_side([target, color, diff]), out / "fit.mp4", fps=fps)
    from .masks import foreground_masks

    # silhouettes cut from the fitted images the way the video's masks were cut (colour vs background)
    fit_masks = foreground_masks(color, problem.renderer.background.float().cpu())
    ious = [mask_iou(fit_masks[t], problem.target.masks[t]) for t in range(frames)]
    psnrs = [psnr(color[t], target[t]) for t in range(frames)]
    return {"mask_iou": ious, "psnr": psnrs, "color": rendered, "alpha": alpha}
