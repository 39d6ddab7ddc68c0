"""Seconds per image: diffusers on CPU vs the ONNX backend's pipeline, same model, size, steps, seed, threads.

Usage: python bench/onnx_vs_diffusers.py [--model DIR] [--size 64] [--steps 20] [--runs 3] [--threads 2] [--int8]

Both run in this one process, warm, one after the other. With --int8 the int8-quantized ONNX model
is timed too and compared with the fp32 ONNX image (mean abs pixel difference and PSNR).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def image_diff(a, b) -> tuple[float, float]:
    """(mean absolute difference in 0-255 units, PSNR in dB) between two images."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float(np.abs(x - y).mean()), 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")


def convert(src: Path, out: Path, *extra: str) -> Path:
    if (out / "onnx_model.json").is_file():
        return out
    cmd = [sys.executable, str(REPO / "backends" / "onnx" / "convert.py"), str(src), str(out), *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def timed(fns: list, runs: int) -> list[tuple[float, object]]:
    """Median seconds of `runs` calls of each fn after one warm-up each, interleaved so that load from
    other processes on a shared machine hits every contender alike; returns (seconds, last result)."""
    results = [fn() for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - start)
    return [(float(np.median(t)), r) for t, r in zip(times, results, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="diffusers folder (default: models/tiny-shapes, else a tiny one)")
    parser.add_argument("--size", type=int, default=0, help="image side in pixels (default: the model's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scheduler", default="", help="LocalAI scheduler_type (default: the model's)")
    parser.add_argument("--prompt", default="a red circle on a white background")
    parser.add_argument("--int8", action="store_true", help="also time the int8-quantized ONNX model")
    parser.add_argument("--work", type=Path, help="folder for the converted models (default: a temp dir)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline

    from backends.onnx.pipeline import Generation, OnnxStableDiffusion
    from backends.onnx.schedulers import resolve_scheduler

    work = args.work or Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        embedded = REPO / "models" / "tiny-shapes"
        if (embedded / "model_index.json").is_file():
            model = embedded
        elif (work / "tiny-sd" / "model_index.json").is_file():
            model = work / "tiny-sd"  # reuse: the converted ONNX copy next to it was made from this one
        else:
            from tests.fixtures.tiny_pipeline import build_tiny_pipeline

            model = build_tiny_pipeline(work / "tiny-sd", sample_size=64)
    print(f"model {model}", file=sys.stderr)

    start = time.perf_counter()
    onnx_dir = convert(model, work / "onnx")
    print(f"converted in {time.perf_counter() - start:.1f} s (reused if already there)", file=sys.stderr)

    pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    resolved = resolve_scheduler(args.scheduler)
    if resolved:
        import diffusers

        pipe.scheduler = getattr(diffusers, resolved[0]).from_config(pipe.scheduler.config, **resolved[1])
    size = args.size or int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)

    def run_diffusers():
        gen = torch.Generator("cpu").manual_seed(args.seed)
        kwargs = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, width=size, height=size)
        return pipe(args.prompt, generator=[gen], **kwargs).images[0]

    def onnx_runner(folder: Path):
        onnx = OnnxStableDiffusion(folder, args.scheduler, threads=args.threads)
        gen = Generation(args.prompt, "", size, size, args.steps, args.guidance, [args.seed])
        return lambda: onnx(gen)[0]

    contenders = [run_diffusers, onnx_runner(onnx_dir)]
    if args.int8:
        contenders.append(onnx_runner(convert(model, work / "onnx-int8", "--int8")))
    with torch.inference_mode():
        timings = timed(contenders, args.runs)
    (t_diffusers, img_diffusers), (t_onnx, img_onnx) = timings[:2]
    mad, psnr = image_diff(img_diffusers, img_onnx)
    report = {
        "model": str(model),
        "size": size,
        "steps": args.steps,
        "guidance": args.guidance,
        "threads": args.threads,
        "runs": args.runs,
        "diffusers_s_per_image": round(t_diffusers, 4),
        "onnx_s_per_image": round(t_onnx, 4),
        "ratio_diffusers_over_onnx": round(t_diffusers / t_onnx, 2),
        "onnx_vs_diffusers_mad": round(mad, 4),
        "onnx_vs_diffusers_psnr_db": round(psnr, 2),
    }
    print(f"{size}x{size}, {args.steps} steps, guidance {args.guidance}, {args.threads} threads, median of {args.runs}")
    print(f"  diffusers (torch CPU): {t_diffusers:.3f} s/image")
    print(f"  onnx fp32:             {t_onnx:.3f} s/image   ratio diffusers/onnx = {t_diffusers / t_onnx:.2f}x")
    print(f"  onnx vs diffusers image: mean abs diff {mad:.3f}/255, PSNR {psnr:.1f} dB")
    if args.int8:
        t_int8, img_int8 = timings[2]
        mad8, psnr8 = image_diff(img_onnx, img_int8)
        report.update(
            onnx_int8_s_per_image=round(t_int8, 4),
            ratio_fp32_over_int8=round(t_onnx / t_int8, 2),
            int8_vs_fp32_mad=round(mad8, 4),
            int8_vs_fp32_psnr_db=round(psnr8, 2),
        )
        print(f"  onnx int8:             {t_int8:.3f} s/image   fp32/int8 = {t_onnx / t_int8:.2f}x")
        print(f"  int8 vs fp32 image: mean abs diff {mad8:.3f}/255, PSNR {psnr8:.1f} dB")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
