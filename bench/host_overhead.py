"""Host overhead and batching: HTTP end-to-end vs the same pipeline call in-process, and n=4 vs 4 x n=1.

    python bench/host_overhead.py [--model models/tiny-shapes] [--size 64x64] [--steps 20] [--runs 10]

Both figures are ratios against a baseline measured in the same run, on the same model, size and steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.server import ServerProcess  # noqa: E402


def timed(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "tiny-shapes")
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same in-process and in the backend")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    model = args.model.resolve()
    if not (model / "model_index.json").is_file():
        from tests.fixtures.tiny_pipeline import build_tiny_pipeline

        model = build_tiny_pipeline(Path(tempfile.mkdtemp()) / "tiny", sample_size=width)
        print(f"(no trained model at {args.model}; using a random tiny pipeline)")

    # Baseline: the same pipeline call in this process, no server, no gRPC.
    import torch
    from diffusers import AutoPipelineForText2Image

    torch.set_num_threads(args.threads)
    pipe = AutoPipelineForText2Image.from_pretrained(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def in_process(n: int = 1) -> None:
        generators = [torch.Generator("cpu").manual_seed(i) for i in range(n)]
        pipe(
            ["a red circle"] * n,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            width=width,
            height=height,
            generator=generators,
        )

    in_process()
    direct = timed(in_process, args.runs)
    pipe = None  # free its memory before the server's backend loads the same model

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench.yaml").write_text(
            f"name: bench\nparameters:\n  model: {model}\nstep: {args.steps}\ncfg_scale: {args.guidance}\n"
            f"size: {args.size}\nthreads: {args.threads}\n"
        )
        server = ServerProcess(Path(tmp)).start()
        try:
            url = f"{server.base_url}/v1/images/generations"

            def over_http(n: int = 1) -> None:
                body = {"model": "bench", "prompt": "a red circle", "n": n, "seed": 1}
                httpx.post(url, json=body, timeout=600).raise_for_status()

            over_http()  # load the backend
            http = timed(over_http, args.runs)
            batched = timed(lambda: over_http(4), max(2, args.runs // 2))
            sequential = timed(lambda: [over_http(1) for _ in range(4)], max(2, args.runs // 2))
        finally:
            server.stop()

    med = statistics.median
    print(
        f"model {model.name}, {args.size}, {args.steps} steps, guidance {args.guidance}, "
        f"{args.runs} runs, {args.threads} thread(s)"
    )
    print(f"in-process pipeline call : {med(direct) * 1000:8.1f} ms/image (median)")
    print(f"HTTP end-to-end          : {med(http) * 1000:8.1f} ms/image (median)")
    print(f"host overhead ratio      : {med(http) / med(direct):8.3f}x  (HTTP / in-process; 1.0 = no overhead)")
    print(f"n=4 in one request       : {med(batched) * 1000:8.1f} ms  ({4 / med(batched):.2f} images/s)")
    print(f"4 sequential n=1 requests: {med(sequential) * 1000:8.1f} ms  ({4 / med(sequential):.2f} images/s)")
    print(f"batching throughput ratio: {med(sequential) / med(batched):8.3f}x  (n=4 batched / 4 sequential)")


if __name__ == "__main__":
    main()
