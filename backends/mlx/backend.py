"""The MLX backend process: Stable Diffusion 1.x/2.x on MLX, or a refusal with the probe's reason.

The host starts it as `python backends/mlx/backend.py --addr 127.0.0.1:0 --parent-pid PID` and shows
the last lines of stderr when a backend exits before printing its port, so the reason reaches the user.
It loads diffusers pipeline folders as they are (configs + safetensors); nothing is converted.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

# Run as a script, Python puts backends/mlx/ on sys.path; the repo root makes `backends.mlx` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backends.mlx.probe import probe  # noqa: E402
from localhost_ai.sdk import (  # noqa: E402
    GenerationRequest,
    ImageBackend,
    LoadOptions,
    ProgressFn,
    serve,
)
from localhost_ai.sdk.sd_generation import build_generation  # noqa: E402

log = logging.getLogger("localhost_ai.backends.mlx")
EXIT_UNSUPPORTED = 3


class MlxBackend(ImageBackend):
    name = "mlx"

    def __init__(self) -> None:
        self.pipeline = None
        self.options: LoadOptions | None = None

    def load(self, options: LoadOptions) -> None:
        import mlx.core as mx

        from backends.mlx.sd_mlx import MlxStableDiffusion

        model_dir = Path(options.model_path or options.model)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model folder {model_dir} does not exist")
        device = (options.device or "auto").lower()
        if device == "cpu":
            mx.set_default_device(mx.cpu)
        elif device in ("gpu", "mps", "metal"):
            mx.set_default_device(mx.gpu)
        elif device not in ("", "auto"):
            raise ValueError(f"the mlx backend runs on auto, gpu (Metal) or cpu, not {device!r}")
        if options.f16:
            log.warning("f16 is not implemented by the mlx backend yet; running float32")
        start = time.perf_counter()
        self.pipeline = None  # drop the old weights before loading new ones
        self.pipeline = MlxStableDiffusion(model_dir, options.scheduler_type)
        self.options = options
        log.info(
            "loaded %s in %.2f s (mlx %s on %s, scheduler %s)",
            model_dir,
            time.perf_counter() - start,
            mx.__version__,
            mx.default_device(),
            type(self.pipeline.scheduler).__name__,
        )

    def generate(self, request: GenerationRequest, progress: ProgressFn) -> list:
        if self.pipeline is None or self.options is None:
            raise RuntimeError("no model is loaded")
        pipe = self.pipeline
        return pipe(build_generation(request, self.options, pipe.vae_scale, pipe.default_size), progress)

    def free(self) -> None:
        self.pipeline = None
        self.options = None


def main() -> int:
    status = probe()
    if not status["usable"]:
        # Refuse before binding a port, saying why; the host shows this stderr line to the user.
        print(f"mlx backend cannot run: {status['reason']}", file=sys.stderr, flush=True)
        return EXIT_UNSUPPORTED
    serve(MlxBackend())
    return 0


if __name__ == "__main__":
    sys.exit(main())
