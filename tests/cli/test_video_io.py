import numpy as np
import pytest

from dreamcloth.cli.pipeline.video_io import read_video
from dreamcloth.render.video import side_by_side, write_video


def _clip(t=12, h=32, w=48):
    rng = np.random.default_rng(0)
    base = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):  # a moving bright square, so frames differ
        base[i, 8:16, 2 + 3 * i : 10 + 3 * i] = 230
    return base + rng.integers(0, 10, base.shape, dtype=np.uint8)


def test_roundtrip_mp4(tmp_path):
    clip = _clip()
    p = write_video(clip, tmp_path / "a.mp4", fps=12)
    v = read_video(p)
    assert v.frames.shape == clip.shape
    assert v.fps == pytest.approx(12)
    # H.264 at crf 18 is lossy but close.
    assert np.abs(v.frames.astype(float) - clip.astype(float)).mean() < 6


def test_resample_and_resize(tmp_path):
    p = write_video(_clip(t=24), tmp_path / "a.mp4", fps=24)
    v = read_video(p, fps=12, size=(16, 24))
    assert v.frames.shape == (12, 16, 24, 3)
    assert v.fps == 12


def test_odd_size_is_padded(tmp_path):
    p = write_video(_clip(h=31, w=47), tmp_path / "odd.mp4", fps=10)
    assert read_video(p).frames.shape[1:3] == (32, 48)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ValueError, match="junk.mp4"):
        read_video(junk)
    good = write_video(_clip(t=30), tmp_path / "good.mp4", fps=10)
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])  # moov atom at the end is lost: unreadable
    with pytest.raises(ValueError, match="cut.mp4"):
        read_video(cut)
    with pytest.raises(ValueError, match="needed"):
        read_video(good, min_frames=100)


def test_a_camera_of_another_aspect_is_refused_not_stretched(tmp_path):
    p = write_video(_clip(t=3), tmp_path / "c.mp4", fps=10)  # 48x32
    assert read_video(p, size=(16, 24), same_aspect=True).frames.shape[1:3] == (16, 24)
    assert read_video(p, size=(16, 16)).frames.shape[1:3] == (16, 16)  # without the check: resized as asked
    with pytest.raises(ValueError, match=r"c\.mp4 is 48x32 \(aspect 1\.500\) but the scene's camera is 16x16 \(1\.000\)"):
        read_video(p, size=(16, 16), same_aspect=True)


def test_side_by_side_shapes():
    a = _clip(t=3)
    out = side_by_side([a, a, a], gap=2)
    assert out.shape == (3, 32, 48 * 3 + 4, 3)
