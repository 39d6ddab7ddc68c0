"""Score a tiny-shapes pipeline folder on held-out prompt/seed pairs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from models.recipes.tiny_shapes import data  # noqa: E402
from models.recipes.tiny_shapes.score import score_image  # noqa: E402

# Seeds the training data never uses: training draws from default_rng(seed) with small seeds.
HELD_OUT_SEED = 20_251_122


def held_out_pairs(count: int = 48, seed: int = HELD_OUT_SEED) -> list[tuple[str, int]]:
    """(prompt, generation seed) pairs with colours and shapes balanced by construction."""
    rng = np.random.default_rng([seed, 7919])
    colours, shapes = list(data.PALETTE), list(data.SHAPES)
    pairs = []
    for i in range(count):
        # Cycling colours and shapes (rather than sampling them) keeps every class represented.
        base = data.sample_spec(rng)
        spec = data.ShapeSpec(
            colours[i % len(colours)],
            shapes[i % len(shapes)],
            base.background,
            base.size,
            base.position,
            say_background=base.say_background,
            say_position=base.say_position,
        )
        pairs.append((spec.prompt(), int(rng.integers(0, 2**31 - 1))))
    return pairs


def generate(pipe, prompt: str, seed: int, steps: int, cfg: float, size: int):
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(
        prompt, num_inference_steps=steps, guidance_scale=cfg, height=size, width=size, generator=generator
    ).images[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/tiny-shapes"))
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=3.0)  # the shipped YAML's cfg_scale
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grid", type=Path, default=None, help="save all images as one PNG")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    generate(pipe, "a red circle", 0, args.steps, args.cfg, args.size)  # warm-up
    pairs = held_out_pairs(args.count)
    colour_hits = shape_hits = 0
    images, seconds = [], []
    for prompt, seed in pairs:
        start = time.perf_counter()
        image = generate(pipe, prompt, seed, args.steps, args.cfg, args.size)
        seconds.append(time.perf_counter() - start)
        result = score_image(image, prompt)
        colour_hits += result.colour_ok
        shape_hits += result.shape_ok
        images.append(image)
        if args.verbose or not (result.colour_ok and result.shape_ok):
            d = result.details
            print(
                f"{'ok ' if result.colour_ok and result.shape_ok else 'BAD'} {prompt!r} "
                f"seed={seed}: colour={d['colour']} shape={d['shape']} ious={d['ious']}"
            )
    if args.grid is not None:
        cols = 8
        rows = (len(images) + cols - 1) // cols
        from PIL import Image

        grid = Image.new("RGB", (cols * args.size, rows * args.size), (90, 90, 90))
        for i, image in enumerate(images):
            grid.paste(image, ((i % cols) * args.size, (i // cols) * args.size))
        grid.save(args.grid)
    n = len(pairs)
    print(f"pairs: {n}  steps: {args.steps}  cfg: {args.cfg}  size: {args.size}")
    print(f"seconds per image: {np.mean(seconds):.3f} (median {np.median(seconds):.3f})")
    print(f"colour accuracy: {100 * colour_hits / n:.1f}%  shape accuracy: {100 * shape_hits / n:.1f}%")


if __name__ == "__main__":
    main()
