"""The ONNX Runtime backend process: Stable Diffusion on CPU (or CUDA) without torch in the common path.

Started by the host as `python backends/onnx/backend.py --addr 127.0.0.1:0 --parent-pid PID`; the
model folder must hold a converted model (`onnx_model.json`, see convert.py).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

# Run as a script, Python puts backends/onnx/ on sys.path; the repo root makes `backends.onnx` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from localhost_ai.sdk import (  # noqa: E402
    BackendInvalidArgument,
    GenerationRequest,
    ImageBackend,
    LoadOptions,
    ProgressFn,
    serve,
)

log = logging.getLogger("localhost_ai.backends.onnx")
DEFAULT_STEPS = 50  # diffusers' own default when a request says 0
DEFAULT_GUIDANCE = 7.5
DEFAULT_STRENGTH = 0.75  # as the diffusers backend


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


class OnnxBackend(ImageBackend):
    name = "onnx"

    def __init__(self) -> None:
        self.pipeline = None
        self.options: LoadOptions | None = None

    def load(self, options: LoadOptions) -> None:
        from backends.onnx.pipeline import OnnxStableDiffusion

        pairs = options.option_pairs()
        device = (options.device or "auto").lower()
        if options.cuda or _truthy(pairs.get("cuda", "")):
            device = "cuda"
        model_dir = Path(options.model_path or options.model)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model folder {model_dir} does not exist")
        threads = options.threads or int(pairs.get("threads", "0") or 0) or (os.cpu_count() or 1)
        start = time.perf_counter()
        self.pipeline = None  # drop the old sessions before building new ones
        # `options: ["ort_spinning:true"]` lets ORT's idle workers spin: a little faster on an otherwise idle box.
        spinning = _truthy(pairs.get("ort_spinning", ""))
        self.pipeline = OnnxStableDiffusion(
            model_dir, options.scheduler_type, threads=threads, device=device, spinning=spinning
        )
        self.options = options
        log.info(
            "loaded %s in %.2f s (device %s, %d threads, scheduler %s, precision %s)",
            model_dir,
            time.perf_counter() - start,
            device,
            threads,
            type(self.pipeline.scheduler).__name__,
            self.pipeline.manifest.get("precision"),
        )

    def generate(self, request: GenerationRequest, progress: ProgressFn) -> list:
        from backends.onnx.pipeline import Generation

        if self.pipeline is None or self.options is None:
            raise RuntimeError("no model is loaded")
        pipe = self.pipeline
        width = request.width or pipe.default_size
        height = request.height or pipe.default_size
        image = None
        if request.src_image:
            image = self._source_image(request)
            # As diffusers' img2img: the source's size, rounded down to the VAE's multiple.
            width, height = (side - side % pipe.vae_scale for side in image.size)
        if width <= 0 or height <= 0 or width % pipe.vae_scale or height % pipe.vae_scale:
            raise BackendInvalidArgument(
                f"width={width} and height={height} must be positive multiples of {pipe.vae_scale} for this model"
            )
        guidance = request.guidance_scale
        if guidance is None:
            guidance = self.options.cfg_scale if self.options.cfg_scale > 0 else DEFAULT_GUIDANCE
        opts = {**self.options.option_pairs(), **request.options}
        try:
            eta = float(opts.get("eta", 0.0))
            clip_skip = int(opts.get("clip_skip", self.options.clip_skip or 0))
        except ValueError as exc:
            raise BackendInvalidArgument(f"bad option value: {exc}") from None
        gen = Generation(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=width,
            height=height,
            steps=request.steps or DEFAULT_STEPS,
            guidance_scale=float(guidance),
            seeds=request.seeds,
            clip_skip=clip_skip,
            eta=eta,
            image=image,
            strength=request.strength if request.strength is not None else DEFAULT_STRENGTH,
        )
        return pipe(gen, progress)

    @staticmethod
    def _source_image(request: GenerationRequest):
        from localhost_ai.sdk.servicer import decode_image

        try:
            image = decode_image(request.src_image)
        except Exception as exc:
            raise BackendInvalidArgument(f"src_image is not a readable image: {exc}") from exc
        if request.width and request.height:
            image = image.resize((request.width, request.height))
        return image

    def free(self) -> None:
        self.pipeline = None
        self.options = None


if __name__ == "__main__":
    serve(OnnxBackend())
