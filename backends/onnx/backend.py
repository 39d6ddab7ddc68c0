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
    GenerationRequest,
    ImageBackend,
    LoadOptions,
    ProgressFn,
    serve,
)
from localhost_ai.sdk.sd_generation import build_generation  # noqa: E402

log = logging.getLogger("localhost_ai.backends.onnx")


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
        if self.pipeline is None or self.options is None:
            raise RuntimeError("no model is loaded")
        pipe = self.pipeline
        return pipe(build_generation(request, self.options, pipe.vae_scale, pipe.default_size), progress)

    def free(self) -> None:
        self.pipeline = None
        self.options = None


if __name__ == "__main__":
    serve(OnnxBackend())
