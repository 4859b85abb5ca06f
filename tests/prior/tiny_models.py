"""Tiny random diffusers video models saved to disk, for testing the ``diffusers`` backend offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_unet3d(path: Path) -> Path:
    """A ModelScope-style text-to-video folder: unet/ (UNet3DConditionModel), vae/ (AutoencoderKL), scheduler/."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel

    torch.manual_seed(0)
    UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        cross_attention_dim=8, attention_head_dim=4,
    ).save_pretrained(path / "unet")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).save_pretrained(path / "vae")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False).save_pretrained(
        path / "scheduler"
    )
    (path / "model_index.json").write_text(json.dumps({"_class_name": "TextToVideoSDPipeline"}))
    return path


def save_svd(path: Path) -> Path:
    """A Stable-Video-Diffusion-style folder: unet/, vae/ (AutoencoderKLTemporalDecoder), scheduler/ (EDM Euler)."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), block_out_channels=(32, 64),
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1, cross_attention_dim=16,
        num_attention_heads=(2, 4), num_frames=4,
    ).save_pretrained(path / "unet")
    AutoencoderKLTemporalDecoder(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        block_out_channels=(32, 64),
        latent_channels=4,
        layers_per_block=1,
        sample_size=16,
    ).save_pretrained(path / "vae")
    EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        use_karras_sigmas=True,
        sigma_min=0.002,
        sigma_max=700.0,
        timestep_type="continuous",
        interpolation_type="linear",
    ).save_pretrained(path / "scheduler")
    return path


def save_wan(path: Path, image_to_video: bool = False) -> Path:
    """A Wan-style folder: transformer/ (WanTransformer3DModel), vae/ (AutoencoderKLWan), scheduler/."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    torch.manual_seed(0)
    z = 16
    WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=2 * z + 4 if image_to_video else z,
        out_channels=z,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=1,
        rope_max_seq_len=32,
    ).save_pretrained(path / "transformer")
    AutoencoderKLWan(
        base_dim=8, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).save_pretrained(path / "vae")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(path / "scheduler")
    return path
