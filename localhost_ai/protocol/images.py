"""Request and response models of /v1/images/generations: OpenAI's fields first, then the dialects we accept."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ImageGenerationRequest(BaseModel):
    # Unknown fields are ignored, as vLLM and LocalAI do, so SDKs that send extras keep working.
    model_config = ConfigDict(extra="ignore")

    # --- OpenAI ---
    prompt: str = Field(..., min_length=1, description="The prompt; LocalAI's 'positive|negative' is split.")
    model: str | None = None
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field(None, description="WIDTHxHEIGHT; 'auto' or absent = the model's default size.")
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "jpg", "webp"] = "png"
    output_compression: int | None = Field(None, ge=0, le=100)
    quality: str | None = None  # accepted; a local model has one quality
    style: str | None = None  # accepted and ignored
    background: str | None = None  # accepted and ignored
    moderation: str | None = None  # accepted and ignored
    user: str | None = None  # accepted and ignored
    stream: bool = False
    partial_images: int | None = Field(None, ge=0, le=3)

    # --- vLLM-Omni / Z-Image server ---
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0, le=100)
    true_cfg_scale: float | None = Field(None, ge=0, le=100)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    cfg_normalization: bool | None = None

    # --- LocalAI ---
    step: int | None = Field(None, ge=1, le=1000)
    mode: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value

    def split_prompt(self) -> tuple[str, str]:
        """(positive, negative): LocalAI splits on the FIRST '|' and drops text after a second one;
        an explicit `negative_prompt` wins over the split."""
        positive, sep, rest = self.prompt.partition("|")
        negative = rest.split("|", 1)[0] if sep else ""
        if self.negative_prompt is not None:
            negative = self.negative_prompt
        return positive.strip(), negative.strip()

    @property
    def steps(self) -> int | None:
        return self.num_inference_steps or self.step


class ImageEditRequest(ImageGenerationRequest):
    """POST /v1/images/edits (multipart): the generation fields plus the source image's strength."""

    strength: float | None = Field(None, gt=0, le=1, description="How much to change the image (img2img).")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None
    seed: int | None = None  # extension: the seed that reproduces this image


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str
    size: str
    quality: str | None = None
    background: str | None = None


class ProgressEvent(BaseModel):
    type: Literal["progress"] = "progress"
    step: int
    total: int
