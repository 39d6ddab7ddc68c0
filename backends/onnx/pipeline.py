"""The Stable Diffusion denoising loop on ONNX Runtime sessions, in numpy, mirroring diffusers' pipelines.

Text-to-image follows StableDiffusionPipeline and image-to-image StableDiffusionImg2ImgPipeline, call
for call, so the same seed gives the same image as the diffusers backend (to float rounding).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from backends.onnx.schedulers import initial_latents, make_scheduler
from localhost_ai.sdk.sd_generation import Generation

MANIFEST = "onnx_model.json"
ProgressFn = Callable[[int, int], None]


def session_options(threads: int = 0, spinning: bool = False) -> Any:
    """One SessionOptions for every network: all graph optimizations, all cores, sequential execution."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Convolutions and attention parallelize inside each op; running ops concurrently only fights them.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads if threads > 0 else (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.enable_mem_pattern = True
    options.enable_cpu_mem_arena = True
    # ORT's workers spin-wait between ops by default. Measured on a busy 2-core machine, spinning made
    # a 64x64/20-step image 2-3x slower (0.40 s vs 0.14-0.18 s): they steal the cores they wait for.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    return options


def providers_for(device: str) -> list[Any]:
    """CPU by default; CUDA only when asked, with a clear error when this onnxruntime cannot do it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                "device cuda was requested but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or set device: cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device not in ("", "auto", "cpu"):
        raise ValueError(f"the onnx backend runs on cpu or cuda, not {device!r}")
    return ["CPUExecutionProvider"]


class OnnxStableDiffusion:
    """Sessions are created once here and reused for every generation."""

    def __init__(
        self, model_dir: Path, scheduler_type: str = "", threads: int = 0, device: str = "cpu", spinning: bool = False
    ) -> None:
        import onnxruntime as ort
        from transformers import CLIPTokenizer

        self.model_dir = Path(model_dir)
        manifest_path = self.model_dir / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{self.model_dir} has no {MANIFEST}; convert the model first "
                "(localhost-ai convert onnx MODEL, or python backends/onnx/convert.py SRC OUT)"
            )
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        self.tokenizer = CLIPTokenizer.from_pretrained(self.model_dir / "tokenizer", local_files_only=True)
        options = session_options(threads, spinning)
        providers = providers_for(device)

        def session(part: str) -> Any:
            return ort.InferenceSession(str(self.model_dir / part / "model.onnx"), options, providers=providers)

        self.text_encoder = session("text_encoder")
        self.unet = session("unet")
        self.vae_decoder = session("vae_decoder")
        encoder_path = self.model_dir / "vae_encoder" / "model.onnx"
        self.vae_encoder = session("vae_encoder") if encoder_path.is_file() else None
        norm_path = self.model_dir / "text_encoder" / "final_layer_norm.npz"
        self.final_norm = dict(np.load(norm_path)) if norm_path.is_file() else None
        self.scheduler = make_scheduler(self.model_dir, scheduler_type)
        self.vae_scale = int(self.manifest["vae_scale_factor"])
        self.scaling = np.float32(self.manifest["vae_scaling_factor"])
        self.latent_channels = int(self.manifest["latent_channels"])
        self.default_size = int(self.manifest.get("sample_size", 512))
        self.max_length = int(getattr(self.tokenizer, "model_max_length", 77))
        if self.max_length > 10_000:  # an unset tokenizer limit: fall back to the text encoder's
            self.max_length = int(self.manifest.get("text_max_length", 77))

    # --- text --------------------------------------------------------------------------------
    def _ids(self, text: str) -> np.ndarray:
        tokens = self.tokenizer(
            text, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="np"
        )
        return tokens["input_ids"].astype(np.int64)

    def encode_prompt(self, prompt: str, negative_prompt: str, do_cfg: bool, clip_skip: int = 0) -> np.ndarray:
        """[negative; positive] embeddings (one text-encoder call for both), or just positive."""
        ids = np.concatenate([self._ids(negative_prompt or ""), self._ids(prompt)]) if do_cfg else self._ids(prompt)
        last, hidden = self.text_encoder.run(None, {"input_ids": ids})
        if clip_skip > 0 and self.final_norm is not None:
            # diffusers applies clip_skip to the positive prompt only; the negative keeps the last layer.
            skipped = _layer_norm(hidden[-(clip_skip + 1)][-1:], self.final_norm)
            last = np.concatenate([last[:1], skipped]) if do_cfg else skipped
        return last.astype(np.float32, copy=False)

    # --- image <-> latents ---------------------------------------------------------------------
    def decode(self, latents: np.ndarray) -> list[Any]:
        from PIL import Image

        shift = self.manifest.get("vae_shift_factor")
        latents = latents / self.scaling + (np.float32(shift) if shift else np.float32(0.0))
        # One image at a time: the VAE decoder's activations dominate peak memory at large sizes.
        decoded = [self.vae_decoder.run(None, {"latent_sample": latents[i : i + 1]})[0] for i in range(len(latents))]
        images = np.clip(np.concatenate(decoded) * np.float32(0.5) + np.float32(0.5), 0.0, 1.0)
        pixels = (images.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
        return [Image.fromarray(p) for p in pixels]

    def encode_image(self, image: Any, width: int, height: int, rngs: list) -> np.ndarray:
        """img2img source -> scaled latents, sampling the VAE's Gaussian with each image's own RNG."""
        from PIL import Image

        if self.vae_encoder is None:
            raise ValueError("this ONNX model was converted without a VAE encoder; img2img is unavailable")
        image = image.convert("RGB")
        if image.size != (width, height):  # diffusers' VaeImageProcessor resizes with Lanczos too
            image = image.resize((width, height), resample=Image.LANCZOS)
        pixels = np.asarray(image, dtype=np.float32)[None].transpose(0, 3, 1, 2) / np.float32(255.0)
        pixels = pixels * np.float32(2.0) - np.float32(1.0)
        moments = self.vae_encoder.run(None, {"sample": np.ascontiguousarray(pixels)})[0]
        mean, logvar = np.split(moments, 2, axis=1)
        std = np.exp(np.float32(0.5) * np.clip(logvar, -30.0, 20.0))
        latents = [mean + std * rng.randn(mean.shape) for rng in rngs]
        shift = self.manifest.get("vae_shift_factor")
        stacked = np.concatenate(latents)
        if shift:
            stacked = stacked - np.float32(shift)
        return (self.scaling * stacked).astype(np.float32)

    # --- the loop --------------------------------------------------------------------------------
    def __call__(self, gen: Generation, progress: ProgressFn | None = None) -> list[Any]:
        if gen.width % self.vae_scale or gen.height % self.vae_scale:
            raise ValueError(f"width and height must be multiples of {self.vae_scale} for this model")
        if gen.steps < 1:
            raise ValueError("steps must be at least 1")
        n = len(gen.seeds)
        do_cfg = gen.guidance_scale > 1.0 and self.manifest.get("time_cond_proj_dim") is None
        embeds = self.encode_prompt(gen.prompt, gen.negative_prompt, do_cfg, gen.clip_skip)
        # Batch layout as diffusers: [neg x n, pos x n], so one UNet call serves both halves.
        context = np.repeat(embeds, n, axis=0)

        sched = self.scheduler
        sched.eta = gen.eta
        sched.set_timesteps(gen.steps)
        rngs = sched.make_rngs(gen.seeds)
        shape = (1, self.latent_channels, gen.height // self.vae_scale, gen.width // self.vae_scale)
        latents, start = initial_latents(sched, gen, shape, rngs, self.encode_image)

        timesteps = sched.timesteps
        total = len(timesteps) - start
        guidance = np.float32(gen.guidance_scale)
        for done, index in enumerate(range(start, len(timesteps)), start=1):
            model_in = np.concatenate([latents, latents]) if do_cfg else latents
            model_in = sched.scale_model_input(model_in, index).astype(np.float32, copy=False)
            t = np.full((len(model_in),), timesteps[index], dtype=np.float32)
            noise_pred = self.unet.run(None, {"sample": model_in, "timestep": t, "encoder_hidden_states": context})[0]
            if do_cfg:
                uncond, cond = noise_pred[:n], noise_pred[n:]
                noise_pred = uncond + guidance * (cond - uncond)
            latents = sched.step(noise_pred, index, latents, rngs)
            if progress is not None:
                progress(done, total)
        return self.decode(latents)


def _layer_norm(x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    eps = np.float32(params.get("eps", 1e-5))
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * params["weight"] + params["bias"]).astype(np.float32)
