"""Stable Diffusion on MLX: CLIP text encoder, AutoencoderKL and the denoising loop, from a diffusers folder.

The loop follows diffusers' StableDiffusionPipeline (and Img2ImgPipeline) call for call, with the numpy
schedulers and torch-compatible RNG of the onnx backend, so a seed gives the diffusers backend's image.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from backends.mlx.layers import UnsupportedModel, Weights, activation, sdpa, silu, upsample_nearest
from backends.mlx.unet import UNet
from backends.onnx.schedulers import initial_latents, make_scheduler
from localhost_ai.sdk.sd_generation import Generation

ProgressFn = Callable[[int, int], None]


class CLIPText:
    """transformers' CLIPTextModel: token + position embeddings, causal pre-norm layers, final layer norm."""

    def __init__(self, folder: Path) -> None:
        self.w = Weights(folder, strip_prefix="text_model.")
        c = self.w.config
        if c.get("model_type", "clip_text_model") not in ("clip_text_model", "clip"):
            raise UnsupportedModel(f"text encoder type {c.get('model_type')!r} is not supported by the MLX port")
        self.layers = int(c["num_hidden_layers"])
        self.heads = int(c["num_attention_heads"])
        self.eps = float(c.get("layer_norm_eps", 1e-5))
        self.act = activation(c.get("hidden_act", "quick_gelu"))
        self.max_positions = int(c.get("max_position_embeddings", 77))

    def __call__(self, ids: np.ndarray, clip_skip: int = 0) -> mx.array:
        """Last hidden state after the final layer norm, or (clip_skip > 0) an earlier layer's, normed too."""
        w = self.w
        tokens = mx.array(ids.astype(np.int32))
        positions = w["embeddings.position_embedding.weight"][: ids.shape[1]]
        x = w["embeddings.token_embedding.weight"][tokens] + positions
        hidden = [x]
        for i in range(self.layers):
            p = f"encoder.layers.{i}"
            h = w.layer_norm(x, p + ".layer_norm1", self.eps)
            q, k, v = (w.linear(h, f"{p}.self_attn.{name}_proj") for name in "qkv")
            x = x + w.linear(sdpa(q, k, v, self.heads, mask="causal"), p + ".self_attn.out_proj")
            h = w.layer_norm(x, p + ".layer_norm2", self.eps)
            x = x + w.linear(self.act(w.linear(h, p + ".mlp.fc1")), p + ".mlp.fc2")
            hidden.append(x)
        chosen = hidden[-(clip_skip + 1)] if clip_skip > 0 else x
        return w.layer_norm(chosen, "final_layer_norm", self.eps)


class VAE:
    """AutoencoderKL: the decoder (+ post_quant_conv) always, the encoder (+ quant_conv) for img2img."""

    def __init__(self, folder: Path) -> None:
        self.w = Weights(folder)
        c = self.w.config
        for kind in c.get("up_block_types", []) + c.get("down_block_types", []):
            if kind not in ("UpDecoderBlock2D", "DownEncoderBlock2D"):
                raise UnsupportedModel(f"VAE block type {kind!r} is not supported by the MLX port")
        self.channels: list[int] = list(c["block_out_channels"])
        self.layers = int(c.get("layers_per_block", 1))
        self.groups = int(c.get("norm_num_groups", 32))
        self.scaling = float(c.get("scaling_factor", 0.18215))
        self.shift = c.get("shift_factor")
        self.latent_channels = int(c.get("latent_channels", 4))
        self.scale_factor = 2 ** (len(self.channels) - 1)
        self.has_encoder = self.w.has("encoder.conv_in.weight")

    def _mid(self, x: mx.array, prefix: str) -> mx.array:
        w, g = self.w, self.groups
        x = w.resnet(x, prefix + ".resnets.0", None, g, 1e-6)
        if w.has(prefix + ".attentions.0.to_q.weight"):
            b, h, wd, ch = x.shape
            tokens = w.group_norm(x.reshape(b, h * wd, ch), prefix + ".attentions.0.group_norm", g, 1e-6)
            # One head as wide as the channels (attention_head_dim = the last block's width).
            x = x + w.attention(tokens, prefix + ".attentions.0", heads=1).reshape(b, h, wd, ch)
        return w.resnet(x, prefix + ".resnets.1", None, g, 1e-6)

    def _tail(self, x: mx.array, prefix: str) -> mx.array:
        return self.w.conv(
            silu(self.w.group_norm(x, prefix + ".conv_norm_out", self.groups, 1e-6)), prefix + ".conv_out"
        )

    def decode(self, latents: mx.array) -> mx.array:
        """(B, C, h, w) scaled latents -> (B, H, W, 3) pixels in [0, 1]."""
        w = self.w
        x = latents.transpose(0, 2, 3, 1) / self.scaling
        if self.shift:
            x = x + self.shift
        if w.has("post_quant_conv.weight"):
            x = w.conv(x, "post_quant_conv")
        x = self._mid(w.conv(x, "decoder.conv_in"), "decoder.mid_block")
        for i in range(len(self.channels)):
            for j in range(self.layers + 1):
                x = w.resnet(x, f"decoder.up_blocks.{i}.resnets.{j}", None, self.groups, 1e-6)
            if i < len(self.channels) - 1:
                x = w.conv(upsample_nearest(x), f"decoder.up_blocks.{i}.upsamplers.0.conv")
        return mx.clip(self._tail(x, "decoder") * 0.5 + 0.5, 0.0, 1.0)

    def encode(self, pixels: mx.array) -> tuple[mx.array, mx.array]:
        """(1, H, W, 3) pixels in [-1, 1] -> the latent Gaussian's (mean, std), NCHW."""
        if not self.has_encoder:
            raise UnsupportedModel("this VAE has no encoder weights; img2img is unavailable")
        w = self.w
        x = w.conv(pixels, "encoder.conv_in")
        for i in range(len(self.channels)):
            for j in range(self.layers):
                x = w.resnet(x, f"encoder.down_blocks.{i}.resnets.{j}", None, self.groups, 1e-6)
            if i < len(self.channels) - 1:  # Downsample2D with padding=0 pads right/bottom by one
                x = mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
                x = w.conv(x, f"encoder.down_blocks.{i}.downsamplers.0.conv", stride=2, padding=0)
        x = self._tail(self._mid(x, "encoder.mid_block"), "encoder")
        if w.has("quant_conv.weight"):
            x = w.conv(x, "quant_conv")
        mean, logvar = mx.split(x.transpose(0, 3, 1, 2), 2, axis=1)
        return mean, mx.exp(0.5 * mx.clip(logvar, -30.0, 20.0))


class MlxStableDiffusion:
    """Loads the networks once; each call runs one batch (n seeds, one prompt)."""

    def __init__(self, model_dir: Path, scheduler_type: str = "") -> None:
        from transformers import CLIPTokenizer

        self.model_dir = Path(model_dir)
        index_path = self.model_dir / "model_index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{self.model_dir} is not a diffusers pipeline folder (no model_index.json)")
        index = json.loads(index_path.read_text())
        if index.get("_class_name") not in (None, "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"):
            raise UnsupportedModel(
                f"the MLX backend runs Stable Diffusion 1.x/2.x pipelines, not {index['_class_name']}"
            )
        self.tokenizer = CLIPTokenizer.from_pretrained(self.model_dir / "tokenizer", local_files_only=True)
        self.text_encoder = CLIPText(self.model_dir / "text_encoder")
        self.unet = UNet(self.model_dir / "unet")
        self.vae = VAE(self.model_dir / "vae")
        self.scheduler = make_scheduler(self.model_dir, scheduler_type)
        self.vae_scale = self.vae.scale_factor
        self.default_size = int(self.unet.w.config.get("sample_size", 64)) * self.vae_scale
        self.max_length = int(getattr(self.tokenizer, "model_max_length", 77))
        if self.max_length > 10_000:  # an unset tokenizer limit: fall back to the text encoder's
            self.max_length = self.text_encoder.max_positions

    def _ids(self, text: str) -> np.ndarray:
        tokens = self.tokenizer(
            text, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="np"
        )
        return tokens["input_ids"]

    def encode_prompt(self, prompt: str, negative_prompt: str, do_cfg: bool, clip_skip: int = 0) -> mx.array:
        """[negative; positive] embeddings, or just positive; clip_skip applies to the positive only, as diffusers."""
        positive = self.text_encoder(self._ids(prompt), clip_skip)
        if not do_cfg:
            return positive
        return mx.concatenate([self.text_encoder(self._ids(negative_prompt or "")), positive])

    def _encode_image(self, image: Any, width: int, height: int, rngs: list) -> np.ndarray:
        from PIL import Image

        image = image.convert("RGB")
        if image.size != (width, height):  # diffusers' VaeImageProcessor resizes with Lanczos too
            image = image.resize((width, height), resample=Image.LANCZOS)
        pixels = np.asarray(image, dtype=np.float32)[None] / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)
        mean, std = self.vae.encode(mx.array(pixels))
        mean, std = np.array(mean), np.array(std)
        latents = np.concatenate([mean + std * rng.randn(mean.shape) for rng in rngs])
        if self.vae.shift:
            latents = latents - np.float32(self.vae.shift)
        return (np.float32(self.vae.scaling) * latents).astype(np.float32)

    def __call__(self, gen: Generation, progress: ProgressFn | None = None) -> list[Any]:
        from PIL import Image

        if gen.width % self.vae_scale or gen.height % self.vae_scale:
            raise ValueError(f"width and height must be multiples of {self.vae_scale} for this model")
        if gen.steps < 1:
            raise ValueError("steps must be at least 1")
        n = len(gen.seeds)
        do_cfg = gen.guidance_scale > 1.0
        embeds = self.encode_prompt(gen.prompt, gen.negative_prompt, do_cfg, gen.clip_skip)
        # Batch layout as diffusers: [neg x n, pos x n], so one UNet call serves both halves.
        context = mx.repeat(embeds, n, axis=0)

        sched = self.scheduler
        sched.eta = gen.eta
        sched.set_timesteps(gen.steps)
        rngs = sched.make_rngs(gen.seeds)
        shape = (1, self.vae.latent_channels, gen.height // self.vae_scale, gen.width // self.vae_scale)
        latents, start = initial_latents(sched, gen, shape, rngs, self._encode_image)

        timesteps = sched.timesteps
        total = len(timesteps) - start
        for done, index in enumerate(range(start, len(timesteps)), start=1):
            model_in = np.concatenate([latents, latents]) if do_cfg else latents
            model_in = sched.scale_model_input(model_in, index).astype(np.float32, copy=False)
            t = np.full((len(model_in),), timesteps[index], dtype=np.float32)
            noise_pred = self.unet(mx.array(model_in), t, context)
            if do_cfg:
                uncond, cond = noise_pred[:n], noise_pred[n:]
                noise_pred = uncond + gen.guidance_scale * (cond - uncond)
            latents = sched.step(np.array(noise_pred, dtype=np.float32), index, latents, rngs)
            if progress is not None:
                progress(done, total)
        # One image at a time: the VAE decoder's activations dominate peak memory at large sizes.
        images = []
        for i in range(n):
            pixels = np.array(self.vae.decode(mx.array(latents[i : i + 1])))[0]
            images.append(Image.fromarray((pixels * 255).round().astype(np.uint8)))
        return images
