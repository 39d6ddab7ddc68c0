"""Synthetic coloured-shape images and the prompt grammar that describes them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Foreground colours are kept far apart in RGB so a nearest-palette lookup is unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
    "cyan": (30, 200, 220),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# Side of the shape's bounding box as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.26, "medium": 0.44, "large": 0.68}
# Centre of the shape as fractions of (width, height).
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
}
POSITION_PHRASES: dict[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
SYNONYMS: dict[str, str] = {
    "grey": "gray",
    "centre": "center",
    "middle": "center",
    "big": "large",
    "tiny": "small",
    "violet": "purple",
}
DEFAULT_BACKGROUND = "white"
DEFAULT_SIZE = "medium"
DEFAULT_POSITION = "center"
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """One picture: what is drawn, where, and how the prompt words it."""

    colour: str
    shape: str
    background: str = DEFAULT_BACKGROUND
    size: str = DEFAULT_SIZE
    position: str = DEFAULT_POSITION
    # Small jitter (fractions of the image side) so training never sees one exact layout.
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    say_background: bool = True
    say_position: bool = True

    def prompt(self) -> str:
        """Render the spec as an English prompt; defaults may be left unsaid."""
        words = [self.colour, self.shape]
        if self.size != DEFAULT_SIZE:
            words.insert(0, self.size)
        article = "an" if words[0][0] in "aeiou" else "a"
        text = " ".join([article, *words])
        if self.position != DEFAULT_POSITION or self.say_position:
            text += " " + POSITION_PHRASES[self.position]
        if self.background != DEFAULT_BACKGROUND or self.say_background:
            text += f" on a {self.background} background"
        return text

    @property
    def rgb(self) -> tuple[int, int, int]:
        return PALETTE[self.colour]

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return BACKGROUNDS[self.background]


def sample_spec(rng: np.random.Generator) -> ShapeSpec:
    """Draw one random spec; every choice comes from `rng` so a seed fixes the sample."""
    colour = str(rng.choice(list(PALETTE)))
    shape = str(rng.choice(SHAPES))
    background = str(rng.choice(list(BACKGROUNDS), p=[0.5, 0.25, 0.25]))
    size = str(rng.choice(list(SIZES)))
    position = str(rng.choice(list(POSITIONS), p=[0.4, 0.15, 0.15, 0.15, 0.15]))
    dx, dy = (float(v) for v in rng.uniform(-0.03, 0.03, size=2))
    scale = float(rng.uniform(0.92, 1.08))
    say_background = bool(rng.random() < 0.5)
    say_position = bool(rng.random() < 0.5)
    return ShapeSpec(colour, shape, background, size, position, dx, dy, scale, say_background, say_position)


def shape_box(spec: ShapeSpec, size: int) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) in pixels, clamped so the shape stays inside the image."""
    side = SIZES[spec.size] * spec.scale * size
    fx, fy = POSITIONS[spec.position]
    half = side / 2
    margin = max(1.0, size / 32)
    cx = min(max(fx * size + spec.dx * size, half + margin), size - half - margin)
    cy = min(max(fy * size + spec.dy * size, half + margin), size - half - margin)
    return cx - half, cy - half, cx + half, cy + half


def shape_mask(shape: str, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Boolean mask of `shape` filling `box` on a size x size canvas (anti-aliased, thresholded)."""
    return _render_coverage(shape, box, size) >= 0.5


def _render_coverage(shape: str, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    # Drawing at SUPERSAMPLE x and box-filtering gives smooth edges and exact-ish coverage.
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    pen = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = (v * SUPERSAMPLE for v in box)
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        pen.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "square":
        pen.rectangle([x0, y0, x1, y1], fill=255)
    elif shape == "triangle":
        pen.polygon([(x0 + w / 2, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "cross":
        pen.rectangle([x0, y0 + h / 3, x1, y1 - h / 3], fill=255)
        pen.rectangle([x0 + w / 3, y0, x1 - w / 3, y1], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def draw(spec: ShapeSpec, size: int = 64) -> tuple[Image.Image, np.ndarray]:
    """Render the spec as an RGB image and return it with its boolean shape mask."""
    box = shape_box(spec, size)
    cover = _render_coverage(spec.shape, box, size)[..., None]
    fg = np.array(spec.rgb, dtype=np.float32)
    bg = np.array(spec.background_rgb, dtype=np.float32)
    pixels = cover * fg + (1.0 - cover) * bg
    image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    return image, cover[..., 0] >= 0.5


def parse_prompt(text: str) -> ShapeSpec | None:
    """Recover colour/shape/background/size/position from a prompt; None without colour+shape."""
    words = [SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", text.lower())]
    background = DEFAULT_BACKGROUND
    rest: list[str] = []
    for i, word in enumerate(words):
        # "<colour> background" names the background, not the shape's colour.
        if word in BACKGROUNDS and i + 1 < len(words) and words[i + 1] == "background":
            background = word
        else:
            rest.append(word)
    colour = next((w for w in rest if w in PALETTE), None)
    shape = next((w for w in rest if w in SHAPES), None)
    if colour is None or shape is None:
        return None
    size = next((w for w in rest if w in SIZES), DEFAULT_SIZE)
    position = next((w for w in rest if w in POSITIONS), DEFAULT_POSITION)
    return ShapeSpec(colour, shape, background, size, position)


def all_words() -> list[str]:
    """Every word the grammar can emit (used to build the tokenizer's training corpus)."""
    phrases = [*POSITION_PHRASES.values(), "a an on background", *PALETTE, *BACKGROUNDS, *SHAPES, *SIZES]
    return sorted({w for p in phrases for w in p.split()})
