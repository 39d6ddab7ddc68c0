"""MLX building blocks shared by the CLIP, UNet and VAE ports: weights by diffusers name, NHWC layers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np


class UnsupportedModel(ValueError):
    """The model folder uses a block type or option the MLX port does not implement."""


class Weights:
    """A component's tensors under their diffusers/transformers names, float32, conv kernels as OHWI."""

    def __init__(self, folder: Path, strip_prefix: str = "") -> None:
        files = sorted(folder.glob("*.safetensors"))
        # A folder may hold both full and fp16 variants; prefer the plain file, as diffusers does.
        plain = [f for f in files if ".fp16." not in f.name] or files
        if not plain:
            raise FileNotFoundError(f"{folder} has no .safetensors weights (the MLX backend reads only safetensors)")
        self.config: dict[str, Any] = json.loads((folder / "config.json").read_text())
        self.tensors: dict[str, mx.array] = {}
        for path in plain:
            for name, value in mx.load(str(path)).items():
                if strip_prefix and name.startswith(strip_prefix):
                    name = name[len(strip_prefix) :]
                value = value.astype(mx.float32)
                if ".attentions." in name:
                    name, value = _legacy_attention(name, value)
                # torch convs are OIHW over NCHW; MLX convs are OHWI over NHWC.
                self.tensors[name] = value.transpose(0, 2, 3, 1) if value.ndim == 4 else value
        mx.eval(self.tensors)

    def __getitem__(self, name: str) -> mx.array:
        try:
            return self.tensors[name]
        except KeyError:
            raise UnsupportedModel(f"weight {name!r} is missing; this model's layout is not supported") from None

    def has(self, name: str) -> bool:
        return name in self.tensors

    # --- layers, addressed by the module prefix --------------------------------------------------
    def linear(self, x: mx.array, prefix: str) -> mx.array:
        y = x @ self[prefix + ".weight"].T
        bias = self.tensors.get(prefix + ".bias")
        return y + bias if bias is not None else y

    def conv(self, x: mx.array, prefix: str, stride: int = 1, padding: int | None = None) -> mx.array:
        weight = self[prefix + ".weight"]
        kernel = weight.shape[1]
        if kernel == 1 and stride == 1:
            # A 1x1 conv is a matmul over channels; cheaper than the general conv path.
            y = x @ weight.reshape(weight.shape[0], -1).T
        else:
            pad = (kernel - 1) // 2 if padding is None else padding
            y = mx.conv2d(x, weight, stride=stride, padding=pad)
        bias = self.tensors.get(prefix + ".bias")
        return y + bias if bias is not None else y

    def layer_norm(self, x: mx.array, prefix: str, eps: float = 1e-5) -> mx.array:
        return mx.fast.layer_norm(x, self[prefix + ".weight"], self[prefix + ".bias"], eps)

    def group_norm(self, x: mx.array, prefix: str, groups: int, eps: float) -> mx.array:
        """torch.nn.GroupNorm on NHWC (or B, L, C): channels are grouped contiguously, biased variance."""
        shape = x.shape
        channels = shape[-1]
        grouped = x.reshape(shape[0], -1, groups, channels // groups)
        mean = grouped.mean(axis=(1, 3), keepdims=True)
        var = grouped.var(axis=(1, 3), keepdims=True)
        normed = ((grouped - mean) * mx.rsqrt(var + eps)).reshape(shape)
        return normed * self[prefix + ".weight"] + self[prefix + ".bias"]

    def attention(
        self, x: mx.array, prefix: str, heads: int, context: mx.array | None = None, out: str = ".to_out.0"
    ) -> mx.array:
        """diffusers' Attention (to_q/to_k/to_v/to_out.0) on (B, L, C) tokens."""
        context = x if context is None else context
        q = self.linear(x, prefix + ".to_q")
        k = self.linear(context, prefix + ".to_k")
        v = self.linear(context, prefix + ".to_v")
        return self.linear(sdpa(q, k, v, heads), prefix + out)

    def resnet(
        self,
        x: mx.array,
        prefix: str,
        temb: mx.array | None,
        groups: int,
        eps: float,
        scale_shift: bool = False,
        output_scale: float = 1.0,
    ) -> mx.array:
        """diffusers' ResnetBlock2D (SiLU, optional time embedding, optional 1x1 shortcut)."""
        h = self.conv(silu(self.group_norm(x, prefix + ".norm1", groups, eps)), prefix + ".conv1")
        if temb is not None and self.has(prefix + ".time_emb_proj.weight"):
            t = self.linear(silu(temb), prefix + ".time_emb_proj")[:, None, None, :]
            if scale_shift:
                scale, shift = mx.split(t, 2, axis=-1)
                h = self.group_norm(h, prefix + ".norm2", groups, eps) * (1 + scale) + shift
            else:
                h = self.group_norm(h + t, prefix + ".norm2", groups, eps)
        else:
            h = self.group_norm(h, prefix + ".norm2", groups, eps)
        h = self.conv(silu(h), prefix + ".conv2")
        if self.has(prefix + ".conv_shortcut.weight"):
            x = self.conv(x, prefix + ".conv_shortcut")
        return (x + h) / output_scale if output_scale != 1.0 else x + h


_LEGACY_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _legacy_attention(name: str, value: mx.array) -> tuple[str, mx.array]:
    """VAE attention saved by older diffusers (query/key/value/proj_attn) -> today's names, as 2D weights."""
    for old, new in _LEGACY_ATTENTION.items():
        if old in name:
            name = name.replace(old, new)
            if value.ndim == 4:  # some exports kept them as 1x1 convs
                value = value.reshape(value.shape[0], -1)
    return name, value


def sdpa(q: mx.array, k: mx.array, v: mx.array, heads: int, mask: str | None = None) -> mx.array:
    """Multi-head scaled dot-product attention on (B, L, heads*D) projections."""
    b, lq, width = q.shape
    d = width // heads

    def split(t: mx.array) -> mx.array:
        return t.reshape(b, t.shape[1], heads, d).transpose(0, 2, 1, 3)

    out = mx.fast.scaled_dot_product_attention(split(q), split(k), split(v), scale=1.0 / math.sqrt(d), mask=mask)
    return out.transpose(0, 2, 1, 3).reshape(b, lq, width)


def silu(x: mx.array) -> mx.array:
    return x * mx.sigmoid(x)


def gelu(x: mx.array) -> mx.array:
    """The exact (erf) GELU, torch's default."""
    return 0.5 * x * (1.0 + mx.erf(x / math.sqrt(2.0)))


def activation(name: str) -> Any:
    table = {
        "silu": silu,
        "swish": silu,
        "gelu": gelu,
        "quick_gelu": lambda x: x * mx.sigmoid(1.702 * x),
        "gelu_new": lambda x: 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        "gelu_pytorch_tanh": lambda x: 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    }
    if name not in table:
        raise UnsupportedModel(f"activation {name!r} is not supported by the MLX port")
    return table[name]


def upsample_nearest(x: mx.array, size: tuple[int, int] | None = None) -> mx.array:
    """F.interpolate(mode='nearest') on NHWC: 2x, or to `size` (source index floor(i * in / out))."""
    height, width = x.shape[1], x.shape[2]
    if size is None or tuple(size) == (2 * height, 2 * width):
        return mx.repeat(mx.repeat(x, 2, axis=1), 2, axis=2)
    rows = np.minimum(np.floor(np.arange(size[0]) * np.float32(height / size[0])), height - 1).astype(np.int32)
    cols = np.minimum(np.floor(np.arange(size[1]) * np.float32(width / size[1])), width - 1).astype(np.int32)
    return mx.take(mx.take(x, mx.array(rows), axis=1), mx.array(cols), axis=2)
