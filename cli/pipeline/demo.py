"""The bundled demo: a draped cloth's video, its scene file and the values it was made with."""

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
DEMO_SCENE = DATA / "demo_drape.toml"
DEMO_VIDEO = DATA / "demo_drape.mp4"
DEMO_TRUTH = DATA / "demo_drape.truth.json"
