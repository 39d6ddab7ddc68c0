"""The images request: dialect fields, prompt splitting, size validation, translation to the backend request."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from localhost_ai.config import ModelConfig
from localhost_ai.errors import InvalidRequest
from localhost_ai.protocol.images import ImageGenerationRequest
from localhost_ai.serving.images import to_backend_request, validate_size

CONFIG = ModelConfig.model_validate({"name": "m", "step": 12, "cfg_scale": 5, "size": "64x64"})


def req(**fields) -> ImageGenerationRequest:
    return ImageGenerationRequest.model_validate({"prompt": "a cat", **fields})


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a|b", ("a", "b")),
        ("a | b | c", ("a", "b")),
        ("no negative", ("no negative", "")),
        ("a|", ("a", "")),
    ],
)
def test_localai_prompt_split(prompt, expected):
    assert req(prompt=prompt).split_prompt() == expected


def test_explicit_negative_prompt_wins():
    assert req(prompt="a|b", negative_prompt="c").split_prompt() == ("a", "c")


def test_dialects_map_to_one_backend_request():
    msg = to_backend_request(req(prompt="x|y", num_inference_steps=7, guidance_scale=2.5, seed=9, n=2), CONFIG, 4096)
    assert (msg.positive_prompt, msg.negative_prompt, msg.steps, msg.seed, msg.n) == ("x", "y", 7, 9, 2)
    assert msg.guidance_scale == 2.5 and (msg.width, msg.height) == (64, 64)
    assert not msg.HasField("true_cfg_scale")
    localai = to_backend_request(req(step=3, mode=1, size="128x64"), CONFIG, 4096)
    assert (localai.steps, localai.mode, localai.width, localai.height) == (3, 1, 128, 64)
    defaults = to_backend_request(req(), CONFIG, 4096)
    assert defaults.steps == 12 and defaults.guidance_scale == 5.0
    assert 0 <= defaults.seed < 2**31
    vllm = to_backend_request(req(true_cfg_scale=4, cfg_normalization=True, output_format="jpg"), CONFIG, 4096)
    assert vllm.true_cfg_scale == 4 and vllm.cfg_normalization is True and vllm.output_format == "jpeg"


@pytest.mark.parametrize("size", ["1024x", "0x0", "100000x100000", "64x63", "abc", "-64x64", "8x4"])
def test_bad_sizes_are_rejected(size):
    with pytest.raises(InvalidRequest) as info:
        validate_size(size, CONFIG, 4096)
    assert info.value.param == "size"


def test_size_defaults_to_the_models():
    assert validate_size(None, CONFIG, 4096) == (64, 64)
    assert validate_size("auto", CONFIG, 4096) == (64, 64)
    assert validate_size("1024x1792", CONFIG, 4096) == (1024, 1792)


@pytest.mark.parametrize("fields", [{"n": 0}, {"n": 11}, {"prompt": ""}, {"response_format": "png"}, {"seed": -2}])
def test_field_validation(fields):
    with pytest.raises(ValidationError):
        req(**fields)
