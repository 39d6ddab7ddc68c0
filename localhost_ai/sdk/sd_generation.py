"""What a Stable-Diffusion-family loop needs from a request, shared by the backends that run their own loop
(onnx, mlx): defaults as diffusers', size checks against the VAE, options, and the img2img source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localhost_ai.sdk.errors import BackendInvalidArgument
from localhost_ai.sdk.types import GenerationRequest, LoadOptions

DEFAULT_STEPS = 50  # diffusers' own default when a request says 0
DEFAULT_GUIDANCE = 7.5
DEFAULT_STRENGTH = 0.75  # as the diffusers backend


@dataclass
class Generation:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: list[int]
    clip_skip: int = 0
    eta: float = 0.0
    image: Any = None  # PIL image for img2img
    strength: float = 0.8


def build_generation(request: GenerationRequest, options: LoadOptions, vae_scale: int, default_size: int) -> Generation:
    """One batch's parameters, with the model's defaults filled in; bad sizes or options raise INVALID_ARGUMENT."""
    width = request.width or default_size
    height = request.height or default_size
    image = None
    if request.src_image:
        image = source_image(request)
        # As diffusers' img2img: the source's size, rounded down to the VAE's multiple.
        width, height = (side - side % vae_scale for side in image.size)
    if width <= 0 or height <= 0 or width % vae_scale or height % vae_scale:
        raise BackendInvalidArgument(
            f"width={width} and height={height} must be positive multiples of {vae_scale} for this model"
        )
    guidance = request.guidance_scale
    if guidance is None:
        guidance = options.cfg_scale if options.cfg_scale > 0 else DEFAULT_GUIDANCE
    opts = {**options.option_pairs(), **request.options}
    try:
        eta = float(opts.get("eta", 0.0))
        clip_skip = int(opts.get("clip_skip", options.clip_skip or 0))
    except ValueError as exc:
        raise BackendInvalidArgument(f"bad option value: {exc}") from None
    return Generation(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=width,
        height=height,
        steps=request.steps or DEFAULT_STEPS,
        guidance_scale=float(guidance),
        seeds=request.seeds,
        clip_skip=clip_skip,
        eta=eta,
        image=image,
        strength=request.strength if request.strength is not None else DEFAULT_STRENGTH,
    )


def source_image(request: GenerationRequest):
    """The decoded img2img source, resized to the requested size when one is given."""
    from localhost_ai.sdk.servicer import decode_image

    try:
        image = decode_image(request.src_image)
    except Exception as exc:
        raise BackendInvalidArgument(f"src_image is not a readable image: {exc}") from exc
    if request.width and request.height:
        image = image.resize((request.width, request.height))
    return image
