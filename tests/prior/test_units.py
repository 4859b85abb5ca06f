"""Small pieces: frame selections, training masks, metrics, the U-Net's save/load round trip, sampling."""

import math

import pytest
import torch

from dreamcloth.prior import (
    Conditioning,
    MaskSamplingConfig,
    SampleConfig,
    VideoUNet,
    WaveLaw,
    load_builtin_model,
    parse_given,
    psnr,
    sample_clips,
    sample_given_masks,
    save_builtin_model,
    ssim,
    training_scheduler,
    wave_clip,
)
from dreamcloth.prior.conditioning import loss_frames
from dreamcloth.prior.runtime import Runtime, RuntimeConfig


def tiny_unet(**kw):
    torch.manual_seed(0)
    return VideoUNet(base_channels=8, channel_mults=(1, 2), layers_per_level=1, attention_levels=(False, True),
                     attention_heads=2, num_frames=4, sample_size=(8, 8), **kw)


@pytest.mark.parametrize("spec, expected", [("0-3", [0, 1, 2, 3]), ("0,2,4", [0, 2, 4]), ("0-1,5", [0, 1, 5]), ("3", [3])])
def test_parse_given(spec, expected):
    assert parse_given(spec, 6) == expected


@pytest.mark.parametrize("spec, message", [("0-6", "selects frames [6]"), ("4-2", "bad --given"), ("a-b", "bad --given"), ("", "empty")])
def test_parse_given_errors_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_given(spec, 6)


def test_training_masks_follow_the_mode_probabilities():
    g = torch.Generator().manual_seed(0)
    masks = sample_given_masks(MaskSamplingConfig(none=0.5, first=0.0, past=0.5, all=0.0), 4000, 8, g)
    none = (~masks.any(dim=1)).float().mean()
    assert abs(float(none) - 0.5) < 0.03
    past = masks[masks.any(dim=1)]
    # "past" masks are a non-empty prefix that never covers the whole clip.
    counts = past.sum(dim=1)
    assert counts.min() >= 1 and counts.max() <= 7
    assert torch.equal(past, torch.arange(8)[None] < counts[:, None])
    only_all = sample_given_masks(MaskSamplingConfig(none=0, first=0, past=0, all=1), 5, 8, g)
    assert only_all.all()
    with pytest.raises(ValueError):
        MaskSamplingConfig(none=0, first=0, past=0, all=0).probabilities()


def test_loss_frames_are_the_free_frames_or_all():
    given = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    assert loss_frames(given).tolist() == [[0, 1, 1], [1, 1, 1], [1, 1, 1]]


def test_conditioning_validates_shapes_and_indices():
    with pytest.raises(ValueError):
        Conditioning(torch.rand(1, 4, 3, 8, 8), torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="outside"):
        Conditioning.from_indices(torch.rand(1, 4, 3, 8, 8), [4])
    c = Conditioning.from_indices(torch.rand(1, 4, 3, 8, 8), [0]).expand(3)
    assert c.frames.shape[0] == 3 and c.given[:, 0].all() and not c.given[:, 1:].any()


def test_metrics():
    x = torch.rand(2, 3, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert (ssim(noisy, x) < 0.99).all()
    # MSE 0.01 -> 20 dB exactly.
    assert torch.allclose(psnr(x * 0 + 0.6, x * 0 + 0.5), torch.full((2,), 20.0), atol=1e-4)


def test_video_unet_round_trip(tmp_path):
    model = tiny_unet()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_builtin_model(model, training_scheduler(), tmp_path / "m")
    loaded, sched = load_builtin_model(tmp_path / "m")
    assert loaded.config.num_frames == 4 and tuple(loaded.config.sample_size) == (8, 8)
    assert sched.config.beta_schedule == "squaredcos_cap_v2"
    x, t = torch.randn(2, 4, 3, 8, 8), torch.tensor([10, 500])
    cond = Conditioning.from_indices(torch.rand(2, 4, 3, 8, 8), [0])
    with torch.no_grad():
        a = model(x, t, cond.frames, cond.given)
        b = loaded(x, t, cond.frames, cond.given)
    assert torch.equal(a, b) and a.abs().sum() > 0
    # The mask and the given frames change the prediction (the conditioning is really read).
    with torch.no_grad():
        assert not torch.allclose(loaded(x, t), b)


def test_video_unet_rejects_sizes_it_cannot_downsample():
    with pytest.raises(ValueError, match="multiples of 2"):
        tiny_unet()(torch.randn(1, 4, 3, 7, 8), torch.tensor([1]))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_keeps_given_frames_and_is_seeded(sampler):
    model = tiny_unet().eval()
    truth = torch.rand(2, 4, 3, 8, 8)
    cond = Conditioning.from_indices(truth, [0, 1])
    cfg = SampleConfig(sampler=sampler, steps=4, seed=3, guidance_scale=2.0)
    a = sample_clips(model, training_scheduler(), 2, cond, cfg)
    b = sample_clips(model, training_scheduler(), 2, cond, cfg)
    assert a.shape == truth.shape and torch.equal(a, b)
    assert torch.equal(a[:, :2], truth[:, :2])
    assert a.min() >= 0 and a.max() <= 1
    sdedit = sample_clips(model, training_scheduler(), 1, None, SampleConfig(steps=10), init=truth[:1], strength=0.3)
    assert sdedit.shape == (1, 4, 3, 8, 8)
    with pytest.raises(ValueError):
        SampleConfig(sampler="euler")  # type: ignore[arg-type]


def test_wave_clip_is_differentiable_and_obeys_its_law():
    law = WaveLaw()
    speed = torch.tensor([1.3], requires_grad=True)
    clip = wave_clip(law, torch.tensor([8.0]), speed, torch.tensor([0.0]))
    assert clip.shape == (1, law.frames, 3, law.height, law.width)
    clip.sum().backward()
    assert speed.grad is not None and speed.grad.abs() > 0
    # Frame 1 equals frame 0 shifted by the speed (a travelling wave).
    shifted = wave_clip(law, torch.tensor([8.0]), speed.detach(), torch.tensor([-2 * math.pi * 1.3 / 8.0]))
    assert torch.allclose(clip[0, 1], shifted[0, 0], atol=1e-5)
    assert float(law.speed(4.0)) == pytest.approx(0.45 * 2.0)


def test_runtime_refuses_fp16_on_cpu_and_offload_without_gpu():
    with pytest.raises(ValueError, match="fp16"):
        Runtime.resolve(RuntimeConfig(device="cpu", precision="fp16"))
    with pytest.raises(ValueError, match="offload"):
        Runtime.resolve(RuntimeConfig(device="cpu", offload=True))
    rt = Runtime.resolve(RuntimeConfig(device="cpu", precision="bf16"))
    with rt.autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16  # real bf16 autocast on CPU
    assert rt.weight_dtype == torch.float32  # weights stay fp32 off-GPU
