"""Tests for the tiny-shapes synthetic data and the pixel scorer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.recipes.tiny_shapes import data  # noqa: E402


def _fill_ratio(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    return float(mask.sum()) / float(area)


@pytest.mark.parametrize(
    ("shape", "low", "high"),
    [("circle", 0.72, 0.85), ("square", 0.93, 1.0), ("triangle", 0.42, 0.6), ("cross", 0.5, 0.62)],
)
def test_mask_has_named_shape(shape: str, low: float, high: float) -> None:
    spec = data.ShapeSpec("red", shape, size="large")
    _, mask = data.draw(spec, 64)
    assert low <= _fill_ratio(mask) <= high
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    corners = [mask[y0, x0], mask[y0, x1], mask[y1, x0], mask[y1, x1]]
    # Only the square fills its top corners; the triangle fills its bottom ones.
    assert (
        corners
        == {
            "circle": [False] * 4,
            "square": [True] * 4,
            "triangle": [False, False, True, True],
            "cross": [False] * 4,
        }[shape]
    )
    if shape == "cross":
        assert mask[(y0 + y1) // 2, x0] and mask[y0, (x0 + x1) // 2]


@pytest.mark.parametrize("colour", list(data.PALETTE))
def test_colour_word_maps_to_drawn_colour(colour: str) -> None:
    spec = data.ShapeSpec(colour, "square", background="black")
    image, mask = data.draw(spec, 64)
    pixels = np.asarray(image)
    assert tuple(int(v) for v in np.median(pixels[mask], axis=0)) == data.PALETTE[colour]
    assert tuple(int(v) for v in pixels[0, 0]) == data.BACKGROUNDS["black"]


def test_position_and_size_words_are_honoured() -> None:
    def centre_and_side(**kw: str) -> tuple[float, float, float]:
        _, mask = data.draw(data.ShapeSpec("blue", "square", **kw), 64)
        ys, xs = np.nonzero(mask)
        return xs.mean(), ys.mean(), float(xs.max() - xs.min())

    cx, cy, _ = centre_and_side(position="center")
    assert abs(cx - 31.5) < 1 and abs(cy - 31.5) < 1
    assert centre_and_side(position="left")[0] < 24 < 40 < centre_and_side(position="right")[0]
    assert centre_and_side(position="top")[1] < 24 < 40 < centre_and_side(position="bottom")[1]
    small, medium, large = (centre_and_side(size=s)[2] for s in ("small", "medium", "large"))
    assert small < medium < large
    assert large > 2 * small


def test_parse_prompt_round_trips() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        spec = data.sample_spec(rng)
        parsed = data.parse_prompt(spec.prompt())
        assert parsed is not None
        assert (parsed.colour, parsed.shape, parsed.background, parsed.size, parsed.position) == (
            spec.colour,
            spec.shape,
            spec.background,
            spec.size,
            spec.position,
        )
    assert data.parse_prompt("a big violet cross on a grey background").background == "gray"
    assert data.parse_prompt("a landscape at dusk") is None


def test_prompt_mentions_non_default_words() -> None:
    spec = data.ShapeSpec("orange", "triangle", "black", "small", "left", say_background=False, say_position=False)
    assert spec.prompt() == "a small orange triangle on the left on a black background"
    assert data.ShapeSpec("orange", "circle", say_background=False, say_position=False).prompt() == "an orange circle"


def test_same_seed_same_sample() -> None:
    a = [data.sample_spec(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    img_a, _ = data.draw(a[0], 64)
    img_b, _ = data.draw(a[1], 64)
    assert np.array_equal(np.asarray(img_a), np.asarray(img_b))
    assert data.sample_spec(np.random.default_rng(8)) != a[0]


def _score():
    from models.recipes.tiny_shapes import score

    return score


def test_scorer_accepts_matching_drawing_and_rejects_others() -> None:
    score = _score()
    image, _ = data.draw(data.ShapeSpec("red", "circle"), 64)
    good = score.score_image(image, "a red circle")
    assert good.colour_ok and good.shape_ok
    colour_ok, shape_ok, details = score.score_image(image, "a blue square")
    assert not colour_ok and not shape_ok
    assert details["colour"] == "red" and details["shape"] == "circle"


def test_scorer_recognises_every_drawn_colour_and_shape() -> None:
    score = _score()
    rng = np.random.default_rng(11)
    for _ in range(40):
        spec = data.sample_spec(rng)
        image, _ = data.draw(spec, 64)
        result = score.score_image(image, spec.prompt())
        assert result.colour_ok and result.shape_ok, (spec.prompt(), result.details)
        wrong = next(s for s in data.SHAPES if s != spec.shape)
        assert not score.score_image(image, f"a {spec.colour} {wrong}").shape_ok


def test_scorer_fails_blank_and_noise_images() -> None:
    from PIL import Image

    score = _score()
    blank = Image.new("RGB", (64, 64), (255, 255, 255))
    assert tuple(score.score_image(blank, "a red circle"))[:2] == (False, False)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    assert not score.score_image(noise, "a green triangle").shape_ok


def test_held_out_pairs_are_balanced_and_stable() -> None:
    from models.recipes.tiny_shapes.evaluate import held_out_pairs

    pairs = held_out_pairs()
    assert len(pairs) >= 48 and pairs == held_out_pairs(48)
    specs = [data.parse_prompt(prompt) for prompt, _ in pairs]
    assert all(spec is not None for spec in specs)
    assert {s.colour for s in specs} == set(data.PALETTE)
    assert {s.shape for s in specs} == set(data.SHAPES)
    assert len({seed for _, seed in pairs}) == len(pairs)
