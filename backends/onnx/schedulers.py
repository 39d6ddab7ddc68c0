"""Noise schedulers and the latent RNG for the ONNX pipeline, in numpy, matching diffusers step for step.

DDIM (the SD default) and the RNG are pure numpy, so the common path never imports torch (~3-4 s
and ~300 MB saved per backend start). Every other LocalAI scheduler name runs diffusers' own class
through a thin numpy<->torch adapter, so it matches the diffusers backend by construction.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from localhost_ai.sdk.schedulers import scheduler_spec


def resolve_scheduler(name: str) -> tuple[str, dict[str, Any]] | None:
    """LocalAI name -> (class name, extra config); None for "" (keep the saved scheduler)."""
    return scheduler_spec(name) if (name or "").strip() else None


class TorchCompatibleRNG:
    """torch.Generator('cpu').manual_seed(seed) + torch.randn for float32, reproduced in numpy.

    torch's CPU normal_fill draws one mt19937 word per element, keeps its low 24 bits as a uniform,
    and Box-Muller transforms blocks of 16 (u[0:8] -> cos, u[8:16] -> sin); a tail that is not a
    multiple of 16 redraws the last 16 values. numpy's legacy RandomState seeds mt19937 the same way.
    Results agree with torch to a few float32 ulps.
    """

    def __init__(self, seed: int) -> None:
        self._state = np.random.RandomState(seed % 2**32)

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        if n < 16:
            raise ValueError("torch uses a different sampler below 16 values; latents are always larger")
        extra = 16 if n % 16 else 0
        words = self._state.randint(0, 2**32, size=n + extra, dtype=np.uint32)
        uniform = ((words & 0xFFFFFF).astype(np.float32)) * np.float32(2.0**-24)
        data = uniform[:n].copy()
        full = n - n % 16
        data[:full] = _box_muller16(data[:full].reshape(-1, 16)).ravel()
        if extra:
            data[n - 16 :] = _box_muller16(uniform[n:].reshape(1, 16)).ravel()
        return data.reshape(shape)


def _box_muller16(block: np.ndarray) -> np.ndarray:
    radius = np.sqrt(np.float32(-2.0) * np.log(np.float32(1.0) - block[:, :8]))
    theta = np.float32(2.0 * np.pi) * block[:, 8:]
    return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)], axis=1).astype(np.float32)


def load_scheduler_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "scheduler" / "scheduler_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def make_scheduler(model_dir: Path, scheduler_type: str = "") -> NumpyDDIM | TorchScheduler:
    """The saved scheduler, or the one `scheduler_type` names, configured from the saved config."""
    config = load_scheduler_config(model_dir)
    resolved = resolve_scheduler(scheduler_type)
    class_name, extra = resolved or (config.get("_class_name", "DDIMScheduler"), {})
    if class_name == "DDIMScheduler" and NumpyDDIM.supports(config):
        return NumpyDDIM(config)  # DDIM has no Karras option: diffusers ignores use_karras_sigmas there too
    return TorchScheduler(class_name, config, extra)


class NumpyDDIM:
    """diffusers' DDIMScheduler (0.42) in float32 numpy: set_timesteps, step (any eta), add_noise."""

    order = 1
    init_noise_sigma = 1.0
    uses_torch = False

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = {
            "num_train_timesteps": 1000,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "beta_schedule": "linear",
            "trained_betas": None,
            "clip_sample": True,
            "set_alpha_to_one": True,
            "steps_offset": 0,
            "prediction_type": "epsilon",
            "clip_sample_range": 1.0,
            "timestep_spacing": "leading",
            **{k: v for k, v in config.items() if not k.startswith("_")},
        }
        c = self.config
        n = int(c["num_train_timesteps"])
        if c["trained_betas"] is not None:
            betas = np.asarray(c["trained_betas"], dtype=np.float32)
        elif c["beta_schedule"] == "linear":
            betas = np.linspace(c["beta_start"], c["beta_end"], n, dtype=np.float32)
        else:  # scaled_linear, checked by supports()
            betas = np.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, n, dtype=np.float32) ** 2
        self.alphas_cumprod = np.cumprod(np.float32(1.0) - betas, dtype=np.float32)
        self.final_alpha_cumprod = np.float32(1.0) if c["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.timesteps = np.arange(0, n)[::-1].astype(np.int64)
        self.num_inference_steps = 0
        self.eta = 0.0

    @staticmethod
    def supports(config: dict[str, Any]) -> bool:
        """Configs the numpy port reproduces exactly; anything else goes to diffusers' own class."""
        return (
            config.get("beta_schedule", "linear") in ("linear", "scaled_linear")
            and not config.get("thresholding", False)
            and not config.get("rescale_betas_zero_snr", False)
            and config.get("timestep_spacing", "leading") in ("leading", "trailing", "linspace")
        )

    def set_timesteps(self, steps: int) -> None:
        c, n = self.config, int(self.config["num_train_timesteps"])
        if steps > n:
            raise ValueError(f"steps ({steps}) cannot exceed the model's {n} training timesteps")
        self.num_inference_steps = steps
        if c["timestep_spacing"] == "linspace":
            ts = np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
        elif c["timestep_spacing"] == "leading":
            ts = (np.arange(0, steps) * (n // steps)).round()[::-1].copy().astype(np.int64) + int(c["steps_offset"])
        else:
            ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
        self.timesteps = ts

    def set_begin_index(self, index: int) -> None:
        """Stateless: the step index is not needed."""

    def make_rngs(self, seeds: list[int]) -> list[TorchCompatibleRNG]:
        return [TorchCompatibleRNG(seed) for seed in seeds]

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        return sample

    def step(self, model_output: np.ndarray, index: int, sample: np.ndarray, rngs: list) -> np.ndarray:
        c = self.config
        t = int(self.timesteps[index])
        prev_t = t - int(c["num_train_timesteps"]) // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = np.float32(1.0) - a_t
        if c["prediction_type"] == "epsilon":
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
            eps = model_output
        elif c["prediction_type"] == "sample":
            x0 = model_output
            eps = (sample - a_t**0.5 * x0) / b_t**0.5
        elif c["prediction_type"] == "v_prediction":
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
            eps = a_t**0.5 * model_output + b_t**0.5 * sample
        else:
            raise ValueError(f"unsupported prediction_type {c['prediction_type']!r}")
        if c["clip_sample"]:
            x0 = np.clip(x0, -c["clip_sample_range"], c["clip_sample_range"])
        variance = (np.float32(1.0) - a_prev) / b_t * (np.float32(1.0) - a_t / a_prev)
        std = np.float32(self.eta) * variance**0.5
        prev = a_prev**0.5 * x0 + (np.float32(1.0) - a_prev - std**2) ** 0.5 * eps
        if self.eta > 0:
            noise = np.concatenate([rng.randn((1, *sample.shape[1:])) for rng in rngs])
            prev = prev + std * noise
        return prev.astype(np.float32, copy=False)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        a = self.alphas_cumprod[int(self.timesteps[index])]
        return (a**0.5 * original + (np.float32(1.0) - a) ** 0.5 * noise).astype(np.float32)


class _TorchRNG:
    """A torch.Generator for the schedulers that draw their own noise (ancestral, SDE)."""

    def __init__(self, seed: int) -> None:
        import torch

        self.generator = torch.Generator("cpu").manual_seed(seed)

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        import torch

        return torch.randn(shape, generator=self.generator, dtype=torch.float32).numpy()


class TorchScheduler:
    """Any diffusers scheduler class, driven with numpy arrays (zero-copy views at the boundary)."""

    uses_torch = True

    def __init__(self, class_name: str, config: dict[str, Any], extra: dict[str, Any]) -> None:
        import diffusers

        cls = getattr(diffusers, class_name, None)
        if cls is None:
            raise ValueError(f"diffusers has no scheduler class {class_name!r}")
        self.scheduler = cls.from_config(config, **extra)
        params = inspect.signature(self.scheduler.step).parameters
        self._takes_generator = "generator" in params
        self._takes_eta = "eta" in params
        self.eta = 0.0

    @property
    def order(self) -> int:
        return int(getattr(self.scheduler, "order", 1))

    @property
    def init_noise_sigma(self) -> float:
        return float(self.scheduler.init_noise_sigma)

    @property
    def timesteps(self) -> np.ndarray:
        return self.scheduler.timesteps.numpy()

    def set_timesteps(self, steps: int) -> None:
        self.scheduler.set_timesteps(steps)

    def set_begin_index(self, index: int) -> None:
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(index)

    def make_rngs(self, seeds: list[int]) -> list[_TorchRNG]:
        return [_TorchRNG(seed) for seed in seeds]

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        import torch

        t = self.scheduler.timesteps[index]
        return self.scheduler.scale_model_input(torch.from_numpy(sample), t).numpy()

    def step(self, model_output: np.ndarray, index: int, sample: np.ndarray, rngs: list) -> np.ndarray:
        import torch

        kwargs: dict[str, Any] = {}
        if self._takes_generator:
            kwargs["generator"] = [rng.generator for rng in rngs]
        if self._takes_eta:
            kwargs["eta"] = self.eta
        t = self.scheduler.timesteps[index]
        out = self.scheduler.step(torch.from_numpy(model_output), t, torch.from_numpy(sample), **kwargs)
        return out.prev_sample.numpy()

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        import torch

        t = self.scheduler.timesteps[index : index + 1].repeat(original.shape[0])
        return self.scheduler.add_noise(torch.from_numpy(original), torch.from_numpy(noise), t).numpy()


def initial_latents(
    sched: Any, gen: Any, shape: tuple[int, ...], rngs: list, encode_image: Callable[..., np.ndarray]
) -> tuple[np.ndarray, int]:
    """The batch's starting latents and first step index, as diffusers draws them: per-image torch-compatible
    noise (txt2img), or the encoded source noised to the step `strength` starts from (img2img).
    `encode_image(image, width, height, rngs)` runs first, since it draws from the same generators."""
    if gen.image is None:
        latents = np.concatenate([rng.randn(shape) for rng in rngs])
        if sched.init_noise_sigma != 1.0:
            latents = latents * np.float32(sched.init_noise_sigma)
        return latents, 0
    init_latents = encode_image(gen.image, gen.width, gen.height, rngs)
    strength = min(max(float(gen.strength), 0.0), 1.0)
    start = max(gen.steps - min(int(gen.steps * strength), gen.steps), 0) * sched.order
    if start >= len(sched.timesteps):
        raise ValueError("strength is too low: no denoising step would run")
    sched.set_begin_index(start)
    noise = np.concatenate([rng.randn(shape) for rng in rngs])
    return sched.add_noise(init_latents, noise, start), start
