"""The ``cuda`` backend (official 3DGS rasterizer): API detection everywhere, images and gradients on a GPU."""

import collections
import types
from typing import NamedTuple

import pytest
import torch

from dreamcloth.render import Camera, cuda_backend_available, rasterize
from dreamcloth.render import _cuda

from .conftest import CAMERAS, make_scene

AVAILABLE, WHY_NOT = cuda_backend_available("cuda")


#: graphdeco-inria/diff-gaussian-rasterization, 2023 main: 12 fields
_MAIN_FIELDS = ("image_height", "image_width", "tanfovx", "tanfovy", "bg", "scale_modifier", "viewmatrix", "projmatrix",
                "sh_degree", "campos", "prefiltered", "debug")
_SettingsMain = collections.namedtuple("_SettingsMain", _MAIN_FIELDS)
_SettingsAA = collections.namedtuple("_SettingsAA", _MAIN_FIELDS + ("antialiasing",))  # dr_aa: one more field


class _SettingsUnknown(NamedTuple):
    image_height: int
    image_width: int
    kernel_size: float


@pytest.mark.parametrize("settings_cls", [_SettingsMain, _SettingsAA])
def test_settings_filled_by_field_name_for_both_apis(settings_cls):
    camera = Camera(eye=(1.0, 2.0, 3.0), look_at=(0.0, 0.0, 0.0), width=40, height=30, fov_y_deg=50.0)
    module = types.SimpleNamespace(GaussianRasterizationSettings=settings_cls)
    s = _cuda.make_settings(module, camera, torch.device("cpu"))
    mats = camera.gaussian_splatting_matrices(torch.float32)
    assert (s.image_height, s.image_width) == (30, 40)
    assert s.tanfovx == pytest.approx(camera.tan_half_fov_x) and s.tanfovy == pytest.approx(camera.tan_half_fov_y)
    assert torch.equal(s.viewmatrix, mats.viewmatrix) and torch.equal(s.projmatrix, mats.projmatrix)
    assert torch.equal(s.campos, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(s.bg, torch.zeros(3)) and s.scale_modifier == 1.0 and s.sh_degree == 0
    assert s.prefiltered is False and s.debug is False
    if settings_cls is _SettingsAA:
        assert s.antialiasing is False


def test_unknown_settings_field_is_an_error_naming_it():
    module = types.SimpleNamespace(GaussianRasterizationSettings=_SettingsUnknown)
    with pytest.raises(RuntimeError, match="kernel_size"):
        _cuda.make_settings(module, CAMERAS[0], torch.device("cpu"))


def test_covariance_upper_triangle_layout_and_symmetric_gradient():
    cov = torch.tensor([[[1.0, 2.0, 3.0], [2.5, 4.0, 5.0], [3.0, 5.0, 6.0]]], requires_grad=True)
    upper = _cuda._symmetric_upper(cov)
    assert upper.tolist() == [[1.0, 2.25, 3.0, 4.0, 5.0, 6.0]]
    upper[0, 1].backward()
    # The rasterizer's gradient for the xy slot is shared by the two symmetric entries.
    assert cov.grad[0, 0, 1].item() == cov.grad[0, 1, 0].item() == 0.5


@pytest.mark.skipif(not AVAILABLE, reason=f"CUDA rasterizer unavailable: {WHY_NOT}")
@pytest.mark.parametrize("cam_index", range(len(CAMERAS)))
def test_cuda_matches_portable_image_and_gradients(cam_index):
    # Passed for all three cameras on an H200 (2026-12-04): graphdeco-inria/diff-gaussian-rasterization
    # main built with torch 2.11's cpp_extension, nvcc 13.0, TORCH_CUDA_ARCH_LIST=9.0; its
    # cuda_rasterizer/rasterizer_impl.h needed an ``#include <cstdint>`` for that GCC.
    camera = CAMERAS[cam_index]
    # float32 on the GPU for both; opacities < 0.99 so that the CUDA backward's gradient through
    # the alpha clamp (which it does not zero) cannot differ from ours.
    scene = [t.float().cuda().requires_grad_() for t in make_scene(camera, n=400, seed=cam_index)]
    background = torch.tensor([0.2, 0.5, 0.9], device="cuda")
    cuda_out = rasterize(*scene, camera, background, backend="cuda")
    port_out = rasterize(*scene, camera, background, backend="portable")
    assert cuda_out.backend == "cuda"
    for k in ("color", "alpha"):
        assert (getattr(cuda_out, k) - getattr(port_out, k)).abs().max().item() < 1e-4, k
    assert (cuda_out.depth - port_out.depth).abs().max().item() < 1e-4 * port_out.depth.abs().max().item()
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(getattr(port_out, k).shape, generator=gen).cuda() for k in ("color", "alpha", "depth")]

    def vjp(out):
        loss = sum((getattr(out, k) * w).sum() for k, w in zip(("color", "alpha", "depth"), weights))
        return torch.autograd.grad(loss, scene)

    for name, a, b in zip(["means", "covariances", "colors", "opacities"], vjp(cuda_out), vjp(port_out)):
        rel = ((a - b).norm() / b.norm()).item()
        assert rel < 1e-3, (name, rel)


def test_cuda_request_without_cuda_names_the_reason():
    if AVAILABLE:
        pytest.skip("CUDA rasterizer present: the refusal path cannot be exercised")
    camera = CAMERAS[0]
    scene = make_scene(camera, n=10, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="cannot run: .+"):
        rasterize(*scene, camera, backend="cuda")
