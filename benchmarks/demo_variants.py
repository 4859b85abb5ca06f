"""The bundled demo's scene (a cloth dropped onto a sphere) with some of its lines changed: the
scene of the grid-convergence study and of the real-fabric fit benchmark."""

from __future__ import annotations

import json
import re


def demo_scene_text(values: dict, fit: dict[str, tuple[float, float]] | None = None, truth: bool = True) -> str:
    """demo_drape.toml with each ``key = ...`` line named in ``values`` set to its value (the first
    such line: [scene] and [object] keys are unique in that file), the demo's true values
    (demo_drape.truth.json) when ``truth``, and ``fit`` replacing its [object.fit] table."""
    from dreamcloth.cli.pipeline.demo import DEMO_SCENE, DEMO_TRUTH

    text = DEMO_SCENE.read_text()
    subs = {**(json.loads(DEMO_TRUTH.read_text()) if truth else {}), **values}
    if fit is not None:
        head, tail = text.split("[object.fit]\n", 1)
        tail = tail[tail.index("\n\n"):]  # the table ends at the first blank line
        text = head + "[object.fit]\n" + "\n".join(f"{k} = [{lo!r}, {hi!r}]" for k, (lo, hi) in fit.items()) + tail
    for key, value in subs.items():
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {json.dumps(value)}", text, count=1, flags=re.M)
        if count != 1:
            raise KeyError(f"demo_drape.toml has no line '{key} = ...'")
    return text


def with_cloth_solver(text: str, solver: str) -> str:
    """Scene file ``text`` with ``[scene] cloth_solver = solver`` (the key must not be there yet)."""
    if "\ncloth_solver = " in text:
        raise KeyError("the scene already sets cloth_solver")
    return text.replace("[scene]\n", f'[scene]\ncloth_solver = "{solver}"\n', 1)
