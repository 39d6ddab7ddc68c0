"""An MLX port of diffusers' UNet2DConditionModel (SD1.x/2.x layouts), reading the saved diffusers folder."""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import numpy as np

from backends.mlx.layers import UnsupportedModel, Weights, gelu, silu, upsample_nearest

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)


def _per_block(value: object, count: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


class UNet:
    """Activations are NHWC; `__call__` takes and returns NCHW numpy-compatible arrays like diffusers."""

    def __init__(self, folder: Path) -> None:
        self.w = Weights(folder)
        c = self.w.config
        self._check(c)
        self.channels: list[int] = list(c["block_out_channels"])
        n = len(self.channels)
        self.layers = int(c.get("layers_per_block", 2))
        # diffusers' naming quirk: attention_head_dim means the number of heads when num_attention_heads is unset.
        self.heads = _per_block(c.get("num_attention_heads") or c.get("attention_head_dim", 8), n)
        self.depth = _per_block(c.get("transformer_layers_per_block", 1), n)
        self.groups = int(c.get("norm_num_groups", 32))
        self.eps = float(c.get("norm_eps", 1e-5))
        self.linear_proj = bool(c.get("use_linear_projection", False))
        self.scale_shift = c.get("resnet_time_scale_shift", "default") == "scale_shift"
        self.down_types: list[str] = list(c["down_block_types"])
        self.up_types: list[str] = list(c["up_block_types"])
        self.mid_type = c.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        self.downsample_padding = int(c.get("downsample_padding", 1))
        self.in_channels = int(c.get("in_channels", 4))

    @staticmethod
    def _check(c: dict) -> None:
        bad = [t for t in c["down_block_types"] if t not in DOWN_BLOCKS]
        bad += [t for t in c["up_block_types"] if t not in UP_BLOCKS]
        if c.get("mid_block_type", "UNetMidBlock2DCrossAttn") not in MID_BLOCKS:
            bad.append(c["mid_block_type"])
        if bad:
            raise UnsupportedModel(f"the MLX port does not support UNet block types {sorted(set(bad))}")
        unsupported = {
            "class_embed_type": None,
            "addition_embed_type": None,
            "encoder_hid_dim_type": None,
            "time_embedding_type": "positional",
            "dual_cross_attention": False,
            "only_cross_attention": False,
            "time_cond_proj_dim": None,
            "num_class_embeds": None,
            "center_input_sample": False,
            "attention_type": "default",
        }
        for key, allowed in unsupported.items():
            value = c.get(key, allowed)
            if isinstance(value, list) and not any(value):
                value = allowed  # a per-block list of all-False flags is the default
            if value != allowed:
                raise UnsupportedModel(f"the MLX port does not support UNet option {key}={value!r}")

    # --- pieces --------------------------------------------------------------------------------
    def time_embedding(self, timesteps: np.ndarray) -> mx.array:
        c = self.w.config
        dim = self.channels[0]
        half = dim // 2
        # get_timestep_embedding in float32, exactly as diffusers computes it.
        exponent = (
            -math.log(10000) * np.arange(half, dtype=np.float32) / np.float32(half - float(c.get("freq_shift", 0)))
        )
        emb = timesteps.astype(np.float32)[:, None] * np.exp(exponent.astype(np.float32))[None, :]
        sin, cos = np.sin(emb), np.cos(emb)
        emb = np.concatenate([cos, sin] if c.get("flip_sin_to_cos", True) else [sin, cos], axis=-1)
        t = mx.array(emb.astype(np.float32))
        act = silu if c.get("act_fn", "silu") == "silu" else None
        if act is None:
            raise UnsupportedModel(f"UNet act_fn {c.get('act_fn')!r} is not supported by the MLX port")
        return self.w.linear(act(self.w.linear(t, "time_embedding.linear_1")), "time_embedding.linear_2")

    def resnet(self, x: mx.array, prefix: str, temb: mx.array) -> mx.array:
        output_scale = float(self.w.config.get("resnet_out_scale_factor", 1.0))
        return self.w.resnet(x, prefix, temb, self.groups, self.eps, self.scale_shift, output_scale)

    def transformer(self, x: mx.array, prefix: str, context: mx.array, heads: int, depth: int) -> mx.array:
        """Transformer2DModel with BasicTransformerBlocks (self-attn, cross-attn, GEGLU feed-forward)."""
        w = self.w
        b, h, wd, ch = x.shape
        residual = x
        x = w.group_norm(x, prefix + ".norm", self.groups, 1e-6)
        if self.linear_proj:
            x = w.linear(x.reshape(b, h * wd, ch), prefix + ".proj_in")
        else:
            x = w.conv(x, prefix + ".proj_in")
            x = x.reshape(b, h * wd, x.shape[-1])
        inner = x.shape[-1]
        for i in range(depth):
            p = f"{prefix}.transformer_blocks.{i}"
            x = x + w.attention(w.layer_norm(x, p + ".norm1"), p + ".attn1", heads)
            x = x + w.attention(w.layer_norm(x, p + ".norm2"), p + ".attn2", heads, context)
            hidden, gate = mx.split(w.linear(w.layer_norm(x, p + ".norm3"), p + ".ff.net.0.proj"), 2, axis=-1)
            x = x + w.linear(hidden * gelu(gate), p + ".ff.net.2")
        if self.linear_proj:
            x = w.linear(x, prefix + ".proj_out").reshape(b, h, wd, ch)
        else:
            x = w.conv(x.reshape(b, h, wd, inner), prefix + ".proj_out")
        return x + residual

    def downsample(self, x: mx.array, prefix: str) -> mx.array:
        if self.downsample_padding == 0:  # diffusers pads right/bottom only in that case
            x = mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        return self.w.conv(x, prefix + ".conv", stride=2, padding=self.downsample_padding)

    # --- forward -------------------------------------------------------------------------------
    def __call__(self, sample: mx.array, timesteps: np.ndarray, context: mx.array) -> mx.array:
        """sample: (B, C, H, W) latents; timesteps: (B,); context: (B, L, D). Returns (B, C, H, W)."""
        w = self.w
        temb = self.time_embedding(timesteps)
        x = w.conv(sample.transpose(0, 2, 3, 1), "conv_in")
        skips = [x]
        n = len(self.channels)
        for i, kind in enumerate(self.down_types):
            for j in range(self.layers):
                x = self.resnet(x, f"down_blocks.{i}.resnets.{j}", temb)
                if kind == "CrossAttnDownBlock2D":
                    x = self.transformer(x, f"down_blocks.{i}.attentions.{j}", context, self.heads[i], self.depth[i])
                skips.append(x)
            if i < n - 1:
                x = self.downsample(x, f"down_blocks.{i}.downsamplers.0")
                skips.append(x)
        if self.mid_type is not None:
            x = self.resnet(x, "mid_block.resnets.0", temb)
            x = self.transformer(x, "mid_block.attentions.0", context, self.heads[-1], self.depth[-1])
            x = self.resnet(x, "mid_block.resnets.1", temb)
        heads, depth = self.heads[::-1], self.depth[::-1]
        for i, kind in enumerate(self.up_types):
            for j in range(self.layers + 1):
                x = mx.concatenate([x, skips.pop()], axis=-1)
                x = self.resnet(x, f"up_blocks.{i}.resnets.{j}", temb)
                if kind == "CrossAttnUpBlock2D":
                    x = self.transformer(x, f"up_blocks.{i}.attentions.{j}", context, heads[i], depth[i])
            if i < n - 1:
                # Sizes that do not halve evenly upsample to the skip's size, as diffusers' upsample_size.
                x = w.conv(upsample_nearest(x, skips[-1].shape[1:3]), f"up_blocks.{i}.upsamplers.0.conv")
        x = silu(w.group_norm(x, "conv_norm_out", self.groups, self.eps))
        return w.conv(x, "conv_out").transpose(0, 3, 1, 2)
