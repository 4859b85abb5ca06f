"""The builtin prior's network: a small pixel-space video U-Net with factorised (2+1)-D convolutions.

Layout conventions: clips are ``[B, T, C, H, W]`` everywhere in this package (frames before
channels, as renders and decoded videos come).  Inside the network spatial layers see
``[B*T, C, H, W]`` and temporal layers see ``[B*H*W, C, T]``.

Conditioning follows MCVD (Voleti, Jolicoeur-Martineau, Pal 2022, "MCVD: Masked Conditional Video
Diffusion for Prediction, Generation, and Interpolation"): the network sees, next to the noisy
clip, the clean frames that are *given* (zeros elsewhere) and a per-frame mask channel.  With the
mask all zeros it is an unconditional model; first frame given = image-to-video; the first k frames
given = future prediction; every frame given = video-to-video.  Training drops the condition with
some probability so classifier-free guidance (Ho & Salimans 2022) works with the same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _groups(channels: int) -> int:
    """Largest group count <= 8 dividing ``channels`` (GroupNorm needs an exact divisor)."""
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class SpatioTemporalConv(nn.Module):
    """A 3x3 spatial conv per frame followed by a 3-tap temporal conv per pixel ((2+1)-D, Tran et al. 2018).

    Factorising keeps parameters and FLOPs close to a 2-D U-Net while still mixing across frames.
    The temporal conv is zero-initialised and residual, so a fresh block starts as a per-frame
    image conv and learns motion on top of it.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.spatial = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temporal = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.temporal.weight)
        nn.init.zeros_(self.temporal.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """x: [B*T, C, H, W] -> [B*T, C_out, H, W]."""
        h = self.spatial(x)
        bt, c, hh, ww = h.shape
        b = bt // frames
        t = h.reshape(b, frames, c, hh, ww).permute(0, 3, 4, 2, 1).reshape(b * hh * ww, c, frames)
        t = self.temporal(t)
        t = t.reshape(b, hh, ww, c, frames).permute(0, 4, 3, 1, 2).reshape(bt, c, hh, ww)
        return h + t


class ResBlock(nn.Module):
    """Pre-norm residual block of two (2+1)-D convs with the diffusion-time embedding added in between."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = SpatioTemporalConv(in_channels, out_channels)
        self.temb = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = SpatioTemporalConv(out_channels, out_channels)
        # Zero-init the last conv so every block starts as the identity (stable early training).
        nn.init.zeros_(self.conv2.spatial.weight)
        nn.init.zeros_(self.conv2.spatial.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, frames: int) -> torch.Tensor:
        """x: [B*T, C, H, W], temb: [B*T, D] -> [B*T, C_out, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)), frames)
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))), frames)
        return self.skip(x) + h


class TemporalAttention(nn.Module):
    """Self-attention over frames at every pixel, with sinusoidal frame-position encoding.

    This is what lets the network relate frames further apart than the temporal convs' reach
    (e.g. the phase of a wave at frame 0 and frame 7).  Output projection is zero-initialised.
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _positions(frames: int, channels: int, device, dtype) -> torch.Tensor:
        pos = torch.arange(frames, device=device, dtype=torch.float32)[:, None]
        freq = torch.exp(-math.log(100.0) * torch.arange(0, channels, 2, device=device).float() / channels)
        enc = torch.zeros(frames, channels, device=device)
        enc[:, 0::2] = torch.sin(pos * freq)
        enc[:, 1::2] = torch.cos(pos * freq[: channels // 2])
        return enc.to(dtype)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """x: [B*T, C, H, W] -> same shape."""
        bt, c, hh, ww = x.shape
        b = bt // frames
        h = self.norm(x).reshape(b, frames, c, hh * ww).permute(0, 3, 1, 2).reshape(b * hh * ww, frames, c)
        h = h + self._positions(frames, c, h.device, h.dtype)
        q, k, v = self.qkv(h).reshape(b * hh * ww, frames, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        a = self.out(a.transpose(1, 2).reshape(b * hh * ww, frames, c))
        a = a.reshape(b, hh * ww, frames, c).permute(0, 2, 3, 1).reshape(bt, c, hh, ww)
        return x + a


class _Level(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb: int, layers: int, attention: bool, heads: int, dropout: float):
        super().__init__()
        self.res = nn.ModuleList(
            [ResBlock(in_ch if i == 0 else out_ch, out_ch, temb, dropout) for i in range(layers)]
        )
        self.attn = nn.ModuleList([TemporalAttention(out_ch, heads) for _ in range(layers)]) if attention else None

    def forward(self, x, temb, frames):
        for i, block in enumerate(self.res):
            x = block(x, temb, frames)
            if self.attn is not None:
                x = self.attn[i](x, frames)
        return x


class VideoUNet(ModelMixin, ConfigMixin):
    """Pixel-space video U-Net predicting the noise ``eps`` of a DDPM (epsilon parameterisation).

    Save and load with ``save_pretrained`` / ``from_pretrained`` like any diffusers model; the clip
    geometry it was trained on (``num_frames``, ``sample_size``) travels in its config.
    """

    @register_to_config
    def __init__(
        self,
        channels: int = 3,
        base_channels: int = 48,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        layers_per_level: int = 2,
        attention_levels: tuple[bool, ...] = (False, True, True),
        attention_heads: int = 4,
        dropout: float = 0.0,
        num_frames: int = 8,
        sample_size: tuple[int, int] = (64, 64),
        fps: float = 12.0,
    ):
        super().__init__()
        if len(attention_levels) != len(channel_mults):
            raise ValueError("attention_levels needs one flag per entry of channel_mults")
        temb = base_channels * 4
        self.time_proj = Timesteps(base_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(base_channels, temb)
        # noisy clip + given frames + given mask (MCVD-style masked conditioning)
        self.conv_in = nn.Conv2d(2 * channels + 1, base_channels, 3, padding=1)
        widths = [base_channels * m for m in channel_mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = base_channels
        for i, w in enumerate(widths):
            self.down.append(_Level(ch, w, temb, layers_per_level, attention_levels[i], attention_heads, dropout))
            ch = w
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid = _Level(ch, ch, temb, 1, True, attention_heads, dropout)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            self.up.append(_Level(ch + w, w, temb, layers_per_level, attention_levels[i], attention_heads, dropout))
            ch = w
            self.upsample.append(nn.Conv2d(w, widths[i - 1], 3, padding=1) if i > 0 else nn.Identity())
            if i > 0:
                ch = widths[i - 1]
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downsampling_factor(self) -> int:
        """Height and width must be multiples of this."""
        return 2 ** (len(self.config.channel_mults) - 1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        given_frames: torch.Tensor | None = None,
        given_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise in ``sample``.

        sample: [B, T, C, H, W] noisy clip in model space ([-1, 1] data scaled by the schedule);
        timestep: [B] or scalar DDPM step; given_frames: [B, T, C, H, W] clean frames in [-1, 1]
        (only read where the mask is set); given_mask: [B, T] (bool or {0,1}).
        Returns eps: [B, T, C, H, W].
        """
        b, frames, c, hh, ww = sample.shape
        f = self.downsampling_factor
        if hh % f or ww % f:
            raise ValueError(f"height and width must be multiples of {f}, got {hh}x{ww}")
        if given_mask is None:
            given_mask = sample.new_zeros(b, frames)
        mask = given_mask.to(sample.dtype).reshape(b, frames, 1, 1, 1)
        given = sample.new_zeros(sample.shape) if given_frames is None else given_frames.to(sample.dtype) * mask
        x = torch.cat([sample, given, mask.expand(b, frames, 1, hh, ww)], dim=2).reshape(b * frames, 2 * c + 1, hh, ww)

        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        temb = self.time_embed(self.time_proj(timestep).to(sample.dtype))
        temb = temb.repeat_interleave(frames, dim=0)

        h = self.conv_in(x)
        skips = []
        for level, down in zip(self.down, self.downsample):
            h = level(h, temb, frames)
            skips.append(h)
            h = down(h)
        h = self.mid(h, temb, frames)
        for level, up in zip(self.up, self.upsample):
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = level(torch.cat([h, skip], dim=1), temb, frames)
            h = up(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out.reshape(b, frames, c, hh, ww)
