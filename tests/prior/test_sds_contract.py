"""The SDS contract for every backend: the gradient reaches the pixels, and it is exactly w(t) * (eps_pred - eps).

Diffusers models are tiny random ones saved with ``save_pretrained`` and loaded back offline with
``from_pretrained(..., local_files_only=True)``.  The noise residual of the EDM (SVD) and flow
(Wan) backends is cross-checked against one step of diffusers' own samplers, which pins down the
sign and scale conventions independently of our formulas.
"""

import sys
from pathlib import Path

import pytest
import torch

from dreamcloth.prior import (
    BuiltinPrior,
    Conditioning,
    SDSConfig,
    VideoUNet,
    sds_weight,
    training_scheduler,
)
from dreamcloth.prior.pretrained import SVDPrior, UNet3DPrior, WanPrior, detect_kind, load_pretrained_prior
from dreamcloth.prior.runtime import Runtime

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)


def tiny_builtin(tmp_path: Path, guidance: float = 1.0) -> BuiltinPrior:
    model = VideoUNet(
        base_channels=8, channel_mults=(1, 2), layers_per_level=1, attention_levels=(False, True),
        attention_heads=2, num_frames=4, sample_size=(16, 16),
    )
    # Zero-initialised output layers would make eps_pred == 0; randomise so the check has teeth.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "builtin")
    training_scheduler().save_pretrained(tmp_path / "builtin" / "scheduler")
    return BuiltinPrior.from_pretrained(tmp_path / "builtin", config=SDSConfig(guidance_scale=guidance))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_diffusers")
    return {
        "unet3d": tiny_models.save_unet3d(root / "unet3d"),
        "svd": tiny_models.save_svd(root / "svd"),
        "wan": tiny_models.save_wan(root / "wan"),
        "wan_i2v": tiny_models.save_wan(root / "wan_i2v", image_to_video=True),
    }


def load(name, dirs, guidance=1.0):
    config = SDSConfig(guidance_scale=guidance)
    if name == "unet3d":
        return load_pretrained_prior(
            dirs[name], config=config, prompt_embeds=torch.randn(1, 5, 8), negative_prompt_embeds=torch.zeros(1, 5, 8)
        )
    if name == "svd":
        return load_pretrained_prior(dirs[name], config=config)
    return load_pretrained_prior(
        dirs[name], config=config, resolution=(32, 32),
        prompt_embeds=torch.randn(1, 5, 16), negative_prompt_embeds=torch.zeros(1, 5, 16),
    )


def check_contract(prior, clip, conditioning=None):
    """Gradient on pixels is non-zero and finite; gradient on the surrogate's target equals w(t)(eps_pred - eps)."""
    clip = clip.clone().requires_grad_(True)
    z = prior.encode(clip).detach()
    levels = torch.tensor([0.3] * clip.shape[0])
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
    result = prior.sds(clip, conditioning, noise_levels=levels, noise=noise)
    if result.target is not clip:
        result.target.retain_grad()
    result.loss.backward()

    assert clip.grad is not None and clip.grad.shape == clip.shape
    assert torch.isfinite(clip.grad).all()
    assert clip.grad.abs().sum() > 0

    # Independent recomputation of eps_pred - eps through the backend's forward process.
    t = prior.timesteps_for(levels)
    cond, uncond = prior.prepare_condition(conditioning, clip.shape[0])
    with torch.no_grad():
        noisy = prior.add_noise(z, noise, t)
        eps = prior.predict_noise(noisy, t, cond).float()
        if uncond is not None:
            eps_u = prior.predict_noise(noisy, t, uncond).float()
            eps = eps_u + prior.config.guidance_scale * (eps - eps_u)
    w = sds_weight(prior.alpha_bar(t), prior.config.weighting).reshape(-1, *([1] * (z.ndim - 1)))
    expected = w * (eps - noise)
    mask = prior.frame_weights(conditioning, expected)
    if mask is not None:
        expected = expected * mask
    torch.testing.assert_close(result.target.grad, expected, rtol=1e-5, atol=1e-6)
    assert result.grad_norm == pytest.approx(float(expected.norm()), rel=1e-5)
    assert result.timesteps.shape == (clip.shape[0],)
    return result


def test_builtin_gradient_is_exactly_the_weighted_noise_residual(tmp_path):
    prior = tiny_builtin(tmp_path)
    clip = torch.rand(2, 4, 3, 16, 16)
    result = check_contract(prior, clip)
    assert result.target.shape == clip.shape  # pixel space: the surrogate sits on the clip itself

    # Fully independent of the backend's helpers: the raw model and the diffusers schedule.
    levels = torch.tensor([0.5, 0.1])
    noise = torch.randn(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    x = clip.clone().requires_grad_(True)
    prior.sds(x, noise_levels=levels, noise=noise).loss.backward()
    t = (levels * 999).round().long()
    sched = training_scheduler()
    with torch.no_grad():
        eps = prior.model(sched.add_noise(clip * 2 - 1, noise, t), t)
    w = (1 - sched.alphas_cumprod[t]).reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(x.grad, w * (eps - noise), rtol=1e-5, atol=1e-6)


def test_builtin_conditioning_masks_given_frames_and_guidance(tmp_path):
    prior = tiny_builtin(tmp_path, guidance=3.0)
    clip = torch.rand(1, 4, 3, 16, 16)
    cond = Conditioning.from_indices(torch.rand(1, 4, 3, 16, 16), [0, 1])
    result = check_contract(prior, clip, cond)
    assert result.grad[:, :2].abs().sum() == 0  # given frames are not pushed
    assert result.grad[:, 2:].abs().sum() > 0


def test_builtin_resizes_renders_to_model_size(tmp_path):
    prior = tiny_builtin(tmp_path)
    clip = torch.rand(1, 4, 3, 8, 8, requires_grad=True)
    result = prior.sds(clip, generator=torch.Generator().manual_seed(0))
    result.loss.backward()
    assert result.target.shape[-2:] == (16, 16)
    assert clip.grad.shape == clip.shape and clip.grad.abs().sum() > 0


def test_sds_config_anneals_and_validates():
    cfg = SDSConfig(t_min=0.02, t_max=0.98, t_max_final=0.5, anneal_steps=100)
    assert cfg.t_range(0) == (0.02, 0.98)
    assert cfg.t_range(50)[1] == pytest.approx(0.74)
    assert cfg.t_range(500)[1] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        SDSConfig(t_min=0.6, t_max=0.5)
    with pytest.raises(ValueError):
        SDSConfig(weighting="nope")  # type: ignore[arg-type]


def test_prior_is_frozen(tmp_path):
    prior = tiny_builtin(tmp_path)
    assert not prior.model.training
    assert not any(p.requires_grad for p in prior.model.parameters())


def test_non_finite_clip_is_an_error_not_a_silent_zero(tmp_path):
    prior = tiny_builtin(tmp_path)
    clip = torch.rand(1, 4, 3, 16, 16)
    clip[0, 1, 0, 3, 3] = float("nan")
    with pytest.raises(FloatingPointError):
        prior.sds(clip)
    # an integer clip cast the score's gradient to integers: a loss of exactly 0 (found 2026-12-06)
    with pytest.raises(ValueError, match="clip must be a floating-point tensor"):
        prior.sds(torch.randint(0, 255, (1, 4, 3, 16, 16)))
    for guidance in (float("nan"), -3.0):
        with pytest.raises(ValueError, match="guidance_scale must be finite and >= 0"):
            SDSConfig(guidance_scale=guidance)


def test_detect_kind(model_dirs, tmp_path):
    assert detect_kind(model_dirs["unet3d"]) == "unet3d"
    assert detect_kind(model_dirs["svd"]) == "svd"
    assert detect_kind(model_dirs["wan"]) == "wan"
    with pytest.raises(FileNotFoundError):
        detect_kind(tmp_path / "missing")
    with pytest.raises(ValueError):
        detect_kind(tmp_path)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_unet3d_contract(model_dirs, guidance):
    prior = load("unet3d", model_dirs, guidance)
    assert isinstance(prior, UNet3DPrior)
    assert not any(p.requires_grad for p in prior.unet.parameters())
    result = check_contract(prior, torch.rand(1, 4, 3, 12, 12))  # upsampled to the model's 16x16
    assert result.target.shape == (1, 4, 4, 8, 8)
    with pytest.raises(ValueError, match="cannot take conditioning frames"):
        prior.sds(torch.rand(1, 4, 3, 16, 16), Conditioning.from_indices(torch.rand(1, 4, 3, 16, 16), [0]))


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_svd_contract(model_dirs, guidance):
    prior = load("svd", model_dirs, guidance)
    assert isinstance(prior, SVDPrior)
    clip = torch.rand(1, 4, 3, 16, 16)
    check_contract(prior, clip, Conditioning.from_indices(clip, [0]))
    with pytest.raises(ValueError, match="image-to-video"):
        prior.sds(clip)


def test_svd_noise_residual_matches_diffusers_euler_step(model_dirs):
    """eps_pred from our EDM reduction == the direction diffusers' EulerDiscreteScheduler steps along."""
    from diffusers import EulerDiscreteScheduler

    prior = load("svd", model_dirs)
    clip = torch.rand(1, 4, 3, 16, 16)
    cond, _ = prior.prepare_condition(Conditioning.from_indices(clip, [0]), 1)
    sched = EulerDiscreteScheduler.from_pretrained(model_dirs["svd"], subfolder="scheduler", local_files_only=True)
    sched.set_timesteps(1000)
    i = 400
    t, sigma, sigma_next = sched.timesteps[i], sched.sigmas[i], sched.sigmas[i + 1]
    sample = sigma * torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = prior.predict_noise(sample, t.reshape(1), cond)
        sched._step_index = None
        model_in = torch.cat([sched.scale_model_input(sample, t), cond[0]], dim=2)
        out = prior.unet(model_in, t, encoder_hidden_states=cond[1], added_time_ids=cond[2]).sample
        prev = sched.step(out, t, sample).prev_sample
    # Euler: prev = sample + eps_pred * (sigma_next - sigma).
    torch.testing.assert_close(ours, (prev - sample) / (sigma_next - sigma), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_wan_text_to_video_contract(model_dirs, guidance):
    prior = load("wan", model_dirs, guidance)
    assert isinstance(prior, WanPrior) and not prior.image_to_video
    result = check_contract(prior, torch.rand(1, 8, 3, 16, 16))  # 8 frames -> 9 (4k+1) -> 3 latent frames
    assert result.target.shape == (1, 16, 3, 4, 4)


def test_wan_image_to_video_contract(model_dirs):
    prior = load("wan_i2v", model_dirs, 2.0)
    assert prior.image_to_video
    clip = torch.rand(1, 5, 3, 16, 16)
    cond = Conditioning.from_indices(clip, [0])
    check_contract(prior, clip, cond)
    cond_latents = prior.prepare_condition(cond, 1)[0][2]
    # 4 mask channels + 16 latent channels; the first latent frame is marked given, the rest not.
    assert cond_latents.shape == (1, 20, 2, 4, 4)
    assert cond_latents[:, :4, 0].min() == 1 and cond_latents[:, :4, 1].max() == 0


def test_wan_noise_residual_matches_diffusers_flow_step(model_dirs):
    from diffusers import FlowMatchEulerDiscreteScheduler

    prior = load("wan", model_dirs)
    text = prior.prepare_condition(None, 1)[0]
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(1000)
    i = 300
    t, sigma, sigma_next = sched.timesteps[i], sched.sigmas[i], sched.sigmas[i + 1]
    sample = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = prior.predict_noise(sample, t.reshape(1), text)
        v = prior.transformer(sample, t.reshape(1), encoder_hidden_states=text[0]).sample
        prev = sched.step(v, t, sample).prev_sample
    # Flow Euler: prev = sample + v * (sigma_next - sigma); eps_pred = sample + (1 - sigma) v.
    v_from_step = (prev - sample) / (sigma_next - sigma)
    torch.testing.assert_close(ours, sample + (1 - sigma) * v_from_step, rtol=1e-3, atol=1e-3)


def test_wan_frame_count_is_4k_plus_1(model_dirs):
    prior = load("wan", model_dirs)
    assert [prior.frames_for(t) for t in (1, 2, 5, 8, 9, 16, 17)] == [1, 5, 5, 9, 9, 17, 17]


def test_bf16_autocast_priors_give_finite_pixel_gradients(tmp_path, model_dirs):
    from dreamcloth.prior import RuntimeConfig

    builtin = tiny_builtin(tmp_path)
    bf16 = BuiltinPrior(builtin.model, builtin.scheduler, Runtime.resolve(RuntimeConfig(device="cpu", precision="bf16")))
    unet3d = load_pretrained_prior(
        model_dirs["unet3d"], runtime=RuntimeConfig(device="cpu", precision="bf16"), prompt_embeds=torch.randn(1, 5, 8)
    )
    for prior in (bf16, unet3d):
        clip = torch.rand(1, 4, 3, 16, 16, requires_grad=True)
        prior.sds(clip, generator=torch.Generator().manual_seed(0)).loss.backward()
        assert torch.isfinite(clip.grad).all() and clip.grad.abs().sum() > 0
    assert unet3d.vae.dtype == torch.float32  # the differentiated encoder stays fp32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", ["builtin", "unet3d", "svd", "wan"])
def test_half_precision_on_cuda_gives_the_fp32_pixel_gradient(tmp_path, model_dirs, name, precision):
    """Half weights and autocast on a GPU: the pixel gradient is finite and points where fp32's does
    (same noise, same levels); the differentiated VAE encoder stays fp32."""
    from dreamcloth.prior import RuntimeConfig

    builtin = tiny_builtin(tmp_path) if name == "builtin" else None
    grads = {}
    for p in ("fp32", precision):
        runtime = RuntimeConfig(device="cuda", precision=p)
        if name == "builtin":
            prior = BuiltinPrior(builtin.model, builtin.scheduler, Runtime.resolve(runtime))
        elif name == "svd":
            prior = load_pretrained_prior(model_dirs[name], runtime=runtime)
        else:
            size = 8 if name == "unet3d" else 16
            kw = {} if name == "unet3d" else {"resolution": (32, 32)}
            prior = load_pretrained_prior(model_dirs[name], runtime=runtime, prompt_embeds=torch.randn(
                1, 5, size, generator=torch.Generator().manual_seed(1)), **kw)
        frames = 5 if name == "wan" else 4
        clip = torch.rand(1, frames, 3, 32, 32, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        z = prior.encode(clip.detach().cuda())
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
        cond = Conditioning.from_indices(clip.detach(), [0]) if name == "svd" else None
        prior.sds(clip, cond, noise_levels=torch.tensor([0.3]), noise=noise).loss.backward()
        grads[p] = clip.grad.detach().cpu().double()
        if p != "fp32":
            net = {"builtin": "model", "unet3d": "unet", "svd": "unet", "wan": "transformer"}[name]
            assert next(getattr(prior, net).parameters()).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[p]
            vae = getattr(prior, "vae", None)
            if vae is not None:
                assert vae.dtype == torch.float32
    g32, gh = grads["fp32"], grads[precision]
    assert torch.isfinite(gh).all() and gh.abs().sum() > 0
    cos = float((g32 * gh).sum() / (g32.norm() * gh.norm()))
    print(f"{name} {precision}: cosine to fp32 {cos:.5f}, norm ratio {float(gh.norm() / g32.norm()):.4f}")
    assert cos > 0.98, cos
