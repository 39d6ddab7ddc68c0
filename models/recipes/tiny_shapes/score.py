"""Pixel-level check that a generated image shows the prompt's colour and shape."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from models.recipes.tiny_shapes import data  # noqa: E402

# A pixel is foreground when it is this far (RGB Euclidean) from the estimated background;
# every palette colour is > 150 away from every background colour.
FOREGROUND_DISTANCE = 80.0
# The best-matching template must overlap the blob this well to count as that shape.
MIN_IOU = 0.6
# Fewer foreground pixels than this (fraction of the image) means "no shape was drawn".
MIN_AREA = 0.01


@dataclass
class ScoreResult:
    """Verdicts plus the measurements behind them; unpacks as (colour_ok, shape_ok, details)."""

    colour_ok: bool
    shape_ok: bool
    details: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.colour_ok, self.shape_ok, self.details))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected region of `mask` (drops specks so the bounding box is honest)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)


def _nearest(rgb: np.ndarray, table: dict[str, tuple[int, int, int]]) -> np.ndarray:
    names = list(table)
    ref = np.array([table[n] for n in names], dtype=np.float32)
    dist = np.linalg.norm(rgb[..., None, :] - ref, axis=-1)
    return np.array(names)[dist.argmin(-1)]


def analyse(image: Image.Image) -> dict[str, Any]:
    """Measure background, foreground colour and the best-fitting shape, knowing no prompt."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = pixels.shape
    ring = np.concatenate(
        [
            pixels[:2].reshape(-1, 3),
            pixels[-2:].reshape(-1, 3),
            pixels[:, :2].reshape(-1, 3),
            pixels[:, -2:].reshape(-1, 3),
        ]
    )
    background = np.median(ring, axis=0)
    far = np.linalg.norm(pixels - background, axis=-1) > FOREGROUND_DISTANCE
    blob = _largest_component(far)
    out: dict[str, Any] = {
        "background_rgb": [round(float(v)) for v in background],
        "background": str(_nearest(background, data.BACKGROUNDS)),
        "foreground_fraction": round(float(far.mean()), 4),
        "blob_fraction": round(float(blob.mean()), 4),
        "colour": None,
        "shape": None,
        "ious": {},
    }
    if blob.mean() < MIN_AREA:
        return out
    # Majority vote of per-pixel nearest palette colours over the whole foreground.
    votes = _nearest(pixels[far], data.PALETTE)
    names, counts = np.unique(votes, return_counts=True)
    out["colour"] = str(names[counts.argmax()])
    out["colour_share"] = round(float(counts.max() / counts.sum()), 3)
    ys, xs = np.nonzero(blob)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    side = max(h, w)
    for shape in data.SHAPES:
        template = data.shape_mask(shape, box, side)[:h, :w]
        union = np.logical_or(template, blob).sum()
        out["ious"][shape] = round(float(np.logical_and(template, blob).sum() / union), 3)
    best = max(out["ious"], key=out["ious"].get)
    out["shape"] = best if out["ious"][best] >= MIN_IOU else None
    out["box"] = [round(v) for v in box]
    out["centre"] = [round((box[0] + box[2]) / 2 / w, 3), round((box[1] + box[3]) / 2 / h, 3)]
    return out


def score_image(image: Image.Image, prompt: str | data.ShapeSpec) -> ScoreResult:
    """Does `image` show the colour and the shape that `prompt` asks for?"""
    spec = data.parse_prompt(prompt) if isinstance(prompt, str) else prompt
    if spec is None:
        raise ValueError(f"prompt names no known colour and shape: {prompt!r}")
    details = analyse(image)
    details["expected"] = {"colour": spec.colour, "shape": spec.shape, "background": spec.background}
    details["background_ok"] = details["background"] == spec.background
    return ScoreResult(details["colour"] == spec.colour, details["shape"] == spec.shape, details)
