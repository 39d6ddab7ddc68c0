"""The diffusers backend: any local diffusers text-to-image pipeline (SD 1.x/2.x, SDXL, Flux...) over gRPC."""

from __future__ import annotations

import gc
import inspect
import logging
import sys
from pathlib import Path
from typing import Any

try:
    import localhost_ai  # noqa: F401
except ImportError:  # run as a script from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from localhost_ai.sdk import BackendInvalidArgument, GenerationRequest, ImageBackend, LoadOptions, ProgressFn, serve
from localhost_ai.sdk.schedulers import scheduler_spec

log = logging.getLogger("localhost_ai.backends.diffusers")

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
DEFAULT_STRENGTH = 0.75


def parse_value(text: str) -> Any:
    """A YAML `options` value as int, float, bool or (otherwise) the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def call_parameters(pipe: Any) -> set[str]:
    """The keyword arguments a pipeline's __call__ names explicitly (ignoring **kwargs)."""
    params = inspect.signature(type(pipe).__call__).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def pick_device(requested: str) -> str:
    import torch

    requested = (requested or "auto").lower()
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch reports no CUDA device (is this a CPU build?)")
    if requested == "mps" and not mps_ok:
        raise RuntimeError("device 'mps' was requested but torch reports MPS is not available")
    if requested not in ("cuda", "mps", "cpu"):
        raise ValueError(f"unknown device {requested!r}: use auto, cuda, mps or cpu")
    return requested


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """`dtype=` for diffusers releases that renamed it (the old `torch_dtype=` warns there), else `torch_dtype=`."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def transformers_logging() -> Any:
    from transformers.utils import logging as hf_logging

    return hf_logging


def build_scheduler(name: str, config: Any) -> Any:
    """A scheduler for LocalAI's `name`, built from the loaded pipeline's scheduler config."""
    import diffusers

    class_name, overrides = scheduler_spec(name)
    return getattr(diffusers, class_name).from_config(config, **overrides)


class DiffusersBackend(ImageBackend):
    """Loads one diffusers pipeline from local files and generates whole batches in one call."""

    name = "diffusers"

    def __init__(self) -> None:
        self.pipe: Any = None
        self.img2img_pipe: Any = None
        self.device = "cpu"
        self.cfg_scale = 0.0
        self.clip_skip = 0
        self.extra: dict[str, Any] = {}

    # --- loading ------------------------------------------------------------------------------
    def load(self, options: LoadOptions) -> None:
        import diffusers
        import torch

        model = options.model_path or options.model
        if not model:
            raise ValueError("no model given: set parameters.model in the model YAML")
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"model not found at {model} (this backend only loads local files)")
        # Check the cheap things before dropping the current model or reading gigabytes of weights.
        device = pick_device(options.device)
        pipe_class = self._pipeline_class(options.pipeline_type)
        if options.scheduler_type:
            scheduler_spec(options.scheduler_type)
        self.free()
        # Load-time bars go to stderr line by line; the host's logs are easier to read without them.
        diffusers.utils.logging.disable_progress_bar()
        transformers_logging().disable_progress_bar()
        if options.threads > 0:
            torch.set_num_threads(options.threads)

        dtype = torch.float32
        if options.f16:
            if device in ("cuda", "mps"):
                dtype = torch.float16
            else:
                log.info("f16 ignored on CPU: float16 matmuls are slow or unsupported there, keeping float32")

        if path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ValueError(f"{model} is a file but not a .safetensors/.ckpt checkpoint")
            if not hasattr(pipe_class, "from_single_file"):
                # The Auto* classes cannot read single files; SD 1.x is the common case.
                pipe_class = diffusers.StableDiffusionPipeline
            log.info("loading single-file checkpoint %s with %s", path, pipe_class.__name__)
            # The component configs must come from the local Hugging Face cache: no network here.
            pipe = pipe_class.from_single_file(str(path), local_files_only=True, **dtype_kwarg(dtype))
        else:
            log.info("loading diffusers folder %s with %s", path, pipe_class.__name__)
            pipe = pipe_class.from_pretrained(str(path), local_files_only=True, **dtype_kwarg(dtype))

        if options.scheduler_type:
            pipe.scheduler = build_scheduler(options.scheduler_type, pipe.scheduler.config)
            log.info("scheduler %s -> %s", options.scheduler_type, type(pipe.scheduler).__name__)

        if options.low_vram and device == "cuda":
            pipe.enable_model_cpu_offload()  # moves each model to the GPU only while it runs
        else:
            if options.low_vram:
                log.info("low_vram ignored on %s: CPU offload only helps with a CUDA device", device)
            pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)

        extra = {key: parse_value(value) for key, value in options.option_pairs().items()}
        unknown = sorted(set(extra) - call_parameters(pipe))
        if unknown:
            raise ValueError(f"options not accepted by {type(pipe).__name__}: {', '.join(unknown)}")

        self.pipe, self.device, self.extra = pipe, device, extra
        self.cfg_scale, self.clip_skip = options.cfg_scale, options.clip_skip
        log.info("loaded %s on %s (%s)", type(pipe).__name__, device, str(dtype).removeprefix("torch."))

    @staticmethod
    def _pipeline_class(pipeline_type: str) -> Any:
        import diffusers

        if not pipeline_type:
            return diffusers.AutoPipelineForText2Image
        try:
            pipe_class = getattr(diffusers, pipeline_type)
        except (AttributeError, ImportError) as exc:
            raise ValueError(f"unknown pipeline_type {pipeline_type!r}: not a diffusers class name") from exc
        if not hasattr(pipe_class, "from_pretrained"):
            raise ValueError(f"pipeline_type {pipeline_type!r} is not a diffusers pipeline class")
        return pipe_class

    def free(self) -> None:
        self.pipe = self.img2img_pipe = None
        gc.collect()
        try:
            import torch
        except ImportError:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- generation ---------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, progress: ProgressFn) -> list[Any]:
        import torch

        if self.pipe is None:
            raise RuntimeError("no pipeline loaded")
        pipe = self._img2img() if request.src_image else self.pipe
        accepted = call_parameters(pipe)
        n = request.n
        kwargs: dict[str, Any] = {
            "prompt": [request.prompt] * n,
            "negative_prompt": [request.negative_prompt] * n if request.negative_prompt else None,
            # One generator per image, so image i is reproducible alone from seed + i.
            "generator": [torch.Generator(self.device).manual_seed(s % 2**64) for s in request.seeds],
        }
        if request.steps > 0:
            kwargs["num_inference_steps"] = request.steps
        guidance = request.guidance_scale if request.guidance_scale is not None else (self.cfg_scale or None)
        if guidance is not None:
            kwargs["guidance_scale"] = guidance
        for name in ("true_cfg_scale", "cfg_normalization"):
            value = getattr(request, name)
            if value is not None and name in accepted:
                kwargs[name] = value
        if self.clip_skip > 0 and "clip_skip" in accepted:
            kwargs["clip_skip"] = self.clip_skip

        if request.src_image:
            kwargs["image"] = self._source_image(request)
            kwargs["strength"] = request.strength if request.strength is not None else DEFAULT_STRENGTH
        elif request.width or request.height:
            self._check_size(request.width, request.height)
            kwargs["width"], kwargs["height"] = request.width or None, request.height or None

        # YAML options first, then the request's own options override them.
        extra = {**self.extra, **{key: parse_value(value) for key, value in request.options.items()}}
        unknown = sorted(set(extra) - accepted)
        if unknown:
            raise BackendInvalidArgument(f"options not accepted by {type(pipe).__name__}: {', '.join(unknown)}")
        kwargs.update(extra)
        kwargs = {key: value for key, value in kwargs.items() if key in accepted}
        self._add_progress(pipe, kwargs, accepted, progress, request.steps)

        try:
            return list(pipe(**kwargs).images)
        except Exception as exc:
            # torch.cuda.OutOfMemoryError: the SDK maps it (by name) to RESOURCE_EXHAUSTED. Release
            # what the failed batch held first, so a smaller request can still fit afterwards.
            if type(exc).__name__ == "OutOfMemoryError":
                gc.collect()
                torch.cuda.empty_cache()
            raise

    def _check_size(self, width: int, height: int) -> None:
        factor = int(getattr(self.pipe, "vae_scale_factor", 8) or 8)
        for label, value in (("width", width), ("height", height)):
            if value and (value < 0 or value % factor):
                raise BackendInvalidArgument(f"{label}={value} must be a positive multiple of {factor} for this model")

    @staticmethod
    def _add_progress(pipe: Any, kwargs: dict[str, Any], accepted: set[str], progress: ProgressFn, steps: int) -> None:
        def total() -> int:
            # img2img runs fewer steps than asked (steps * strength): the pipeline knows the count.
            return int(getattr(pipe, "num_timesteps", 0) or steps or 0)

        if "callback_on_step_end" in accepted:

            def on_step_end(_pipe: Any, step_index: int, _timestep: Any, callback_kwargs: dict) -> dict:
                progress(step_index + 1, total())
                return callback_kwargs  # the pipeline reads the (possibly edited) tensors back

            kwargs["callback_on_step_end"] = on_step_end
        elif "callback" in accepted:  # pipelines from before callback_on_step_end (diffusers < 0.22)

            def on_step(step_index: int, _timestep: Any, _latents: Any) -> None:
                progress(step_index + 1, total())

            kwargs["callback"] = on_step
            kwargs["callback_steps"] = 1

    def _img2img(self) -> Any:
        if self.img2img_pipe is None:
            from diffusers import AutoPipelineForImage2Image

            # from_pipe shares the loaded weights: no second copy in memory.
            self.img2img_pipe = AutoPipelineForImage2Image.from_pipe(self.pipe)
            self.img2img_pipe.set_progress_bar_config(disable=True)
        return self.img2img_pipe

    def _source_image(self, request: GenerationRequest) -> Any:
        from localhost_ai.sdk.servicer import decode_image

        try:
            image = decode_image(request.src_image)
        except Exception as exc:
            raise BackendInvalidArgument(f"src_image is not a readable image: {exc}") from exc
        if request.width and request.height:
            self._check_size(request.width, request.height)
            image = image.resize((request.width, request.height))
        return image


if __name__ == "__main__":
    serve(DiffusersBackend())
