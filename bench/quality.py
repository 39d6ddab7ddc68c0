"""Quality and speed of the embedded model through the real server: colour and shape accuracy on held-out
prompt/seed pairs, scored by pixel analysis, and seconds per image at the native size.

    python bench/quality.py [--pairs 48] [--model-dir models/tiny-shapes] [--steps N] [--guidance G]
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.recipes.tiny_shapes.evaluate import held_out_pairs  # noqa: E402
from models.recipes.tiny_shapes.score import score_image  # noqa: E402
from tests.fixtures.server import ServerProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--model", default="tiny-shapes", help="model name in --models-dir")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--steps", type=int, help="override the model's default steps")
    parser.add_argument("--guidance", type=float, help="override the model's default guidance")
    parser.add_argument("--save", type=Path, help="write a contact sheet of every image here")
    args = parser.parse_args()

    pairs = held_out_pairs(args.pairs)
    colour_ok = shape_ok = 0
    latencies: list[float] = []
    images: list[Image.Image] = []
    with tempfile.TemporaryDirectory() as generated:
        server = ServerProcess(args.models_dir, "--generated-dir", generated).start()
        try:
            url = f"{server.base_url}/v1/images/generations"
            body: dict = {"model": args.model, "prompt": "warm up", "seed": 0}
            if args.steps:
                body["num_inference_steps"] = args.steps
            if args.guidance is not None:
                body["guidance_scale"] = args.guidance
            httpx.post(url, json=body, timeout=600).raise_for_status()  # the load is not part of the timing
            for prompt, seed in pairs:
                started = time.perf_counter()
                response = httpx.post(url, json={**body, "prompt": prompt, "seed": seed}, timeout=600)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
                image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))).convert("RGB")
                images.append(image)
                result = score_image(image, prompt)
                colour_ok += result.colour_ok
                shape_ok += result.shape_ok
                marks = (
                    "colour ok" if result.colour_ok else "COLOUR WRONG",
                    "shape ok" if result.shape_ok else "SHAPE WRONG",
                )
                print(f"seed {seed:>6}  {marks[0]:<12} {marks[1]:<11} {prompt}")
        finally:
            server.stop()

    n = len(pairs)
    size = f"{images[0].width}x{images[0].height}"
    print(f"\n{n} held-out prompt/seed pairs through the server, {size}")
    print(f"colour accuracy: {100 * colour_ok / n:.1f}%  shape accuracy: {100 * shape_ok / n:.1f}%")
    print(
        f"seconds per image (HTTP end-to-end, n=1): median {statistics.median(latencies):.3f}, max {max(latencies):.3f}"
    )
    if args.save:
        sheet = Image.new("RGB", (8 * images[0].width, -(-n // 8) * images[0].height), "gray")
        for i, image in enumerate(images):
            sheet.paste(image, ((i % 8) * image.width, (i // 8) * image.height))
        sheet.save(args.save)
        print(f"contact sheet: {args.save}")


if __name__ == "__main__":
    main()
