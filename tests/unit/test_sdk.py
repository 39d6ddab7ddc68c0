"""Fast tests of the backend SDK: option/request types, the error table and image encoding."""

from __future__ import annotations

import io

import grpc
import pytest
from PIL import Image, features

from localhost_ai.proto import backend_pb2 as pb
from localhost_ai.sdk import BackendInvalidArgument, BackendOutOfMemory, GenerationRequest, ImageBackend, LoadOptions
from localhost_ai.sdk.errors import BackendNotLoaded, grpc_code_for

# --- LoadOptions ------------------------------------------------------------------------------


def test_load_options_round_trip() -> None:
    options = LoadOptions(
        model="/models/sd",
        model_path="/models/sd",
        model_file="/models/sd/x.safetensors",
        pipeline_type="StableDiffusionPipeline",
        scheduler_type="k_dpmpp_2m",
        cfg_scale=6.5,
        f16=True,
        cuda=True,
        low_vram=True,
        threads=3,
        clip_skip=2,
        img2img=True,
        device="cuda",
        options=["a:1", "b:true"],
    )
    assert LoadOptions.from_pb(pb.ModelOptions.FromString(options.to_pb().SerializeToString())) == options


@pytest.mark.parametrize(
    ("device", "cuda", "expected"), [("", False, "auto"), ("", True, "cuda"), ("cpu", True, "cpu")]
)
def test_load_options_device_default(device: str, cuda: bool, expected: str) -> None:
    assert LoadOptions.from_pb(pb.ModelOptions(Model="m", Device=device, CUDA=cuda)).device == expected


def test_option_pairs() -> None:
    options = LoadOptions(model="m", options=["steps:20", " guidance : 2.5 ", "url:http://x:1", "flag"])
    assert options.option_pairs() == {"steps": "20", "guidance": "2.5", "url": "http://x:1", "flag": "true"}


# --- GenerationRequest ------------------------------------------------------------------------


def test_generation_request_round_trip_keeps_optionals() -> None:
    request = GenerationRequest(
        prompt="a cat",
        negative_prompt="blurry",
        width=768,
        height=512,
        steps=20,
        seed=2**40,
        n=4,
        guidance_scale=3.5,
        true_cfg_scale=4.0,
        cfg_normalization=False,
        output_format="webp",
        output_compression=80,
        options={"eta": "0.5"},
        src_image=b"\x89PNG",
        strength=0.25,
    )
    msg = pb.GenerateImagesRequest.FromString(request.to_pb().SerializeToString())
    assert msg.HasField("cfg_normalization")  # an explicit False is kept, not dropped as "unset"
    assert GenerationRequest.from_pb(msg) == request


def test_generation_request_unset_optionals_are_none() -> None:
    request = GenerationRequest.from_pb(pb.GenerateImagesRequest(positive_prompt="x"))
    assert request.guidance_scale is None and request.true_cfg_scale is None
    assert request.cfg_normalization is None and request.strength is None
    assert (request.n, request.output_format, request.output_compression) == (1, "png", 100)


def test_seeds_count_up_from_the_request_seed() -> None:
    assert GenerationRequest(prompt="x", seed=41, n=3).seeds == [41, 42, 43]
    assert GenerationRequest.from_pb(pb.GenerateImagesRequest(seed=5, n=0)).seeds == [5]


def test_from_localai_request() -> None:
    msg = pb.GenerateImageRequest(positive_prompt="p", negative_prompt="n", step=12, seed=9, dst="/tmp/x.png")
    request = GenerationRequest.from_localai_pb(msg, src_image=b"src")
    assert (request.width, request.height, request.steps, request.seed, request.n) == (512, 512, 12, 9, 1)
    assert (request.prompt, request.negative_prompt, request.src_image) == ("p", "n", b"src")
    assert request.guidance_scale is None


# --- errors -----------------------------------------------------------------------------------

OutOfMemoryError = type("OutOfMemoryError", (RuntimeError,), {})  # stands in for torch.cuda's


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (MemoryError(), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (BackendOutOfMemory("vram"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (OutOfMemoryError("CUDA"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (RuntimeError("MPS backend out of memory"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ValueError("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (BackendInvalidArgument("bad size"), grpc.StatusCode.INVALID_ARGUMENT),
        (TypeError("bad kwarg"), grpc.StatusCode.INVALID_ARGUMENT),
        (BackendNotLoaded("load first"), grpc.StatusCode.FAILED_PRECONDITION),
        (NotImplementedError(), grpc.StatusCode.UNIMPLEMENTED),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
        (KeyError("k"), grpc.StatusCode.INTERNAL),
    ],
)
def test_grpc_code_for(exc: BaseException, code: grpc.StatusCode) -> None:
    assert grpc_code_for(exc) == code


# --- encoding ---------------------------------------------------------------------------------


def _image() -> Image.Image:
    return Image.linear_gradient("L").resize((64, 48)).convert("RGB")


@pytest.mark.parametrize(
    ("fmt", "magic", "pil_format"),
    [
        ("png", b"\x89PNG", "PNG"),
        ("jpeg", b"\xff\xd8\xff", "JPEG"),
        ("jpg", b"\xff\xd8\xff", "JPEG"),
        ("", b"\x89PNG", "PNG"),
    ],
)
def test_encode_formats(fmt: str, magic: bytes, pil_format: str) -> None:
    data = ImageBackend.encode(_image(), fmt, 90)
    assert data.startswith(magic)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == pil_format and decoded.size == (64, 48)


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_encode_webp() -> None:
    data = ImageBackend.encode(_image(), "WEBP", 80)
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def test_encode_jpeg_drops_alpha_and_honours_quality() -> None:
    noisy = Image.effect_noise((64, 64), 64).convert("RGBA")
    low, high = (ImageBackend.encode(noisy, "jpeg", q) for q in (10, 95))
    assert Image.open(io.BytesIO(low)).mode == "RGB"
    assert len(low) < len(high)


def test_encode_rejects_unknown_format() -> None:
    with pytest.raises(BackendInvalidArgument, match="bmp"):
        ImageBackend.encode(_image(), "bmp", 100)
