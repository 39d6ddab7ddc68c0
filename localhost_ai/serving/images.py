"""Generating images: resolve the model, validate and translate the request, run the backend, shape the reply."""

from __future__ import annotations

import base64
import io
import logging
import random
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from localhost_ai.config import ModelConfig, parse_size
from localhost_ai.errors import InvalidRequest, NotFound
from localhost_ai.proto import backend_pb2 as pb
from localhost_ai.protocol.images import ImageData, ImageEditRequest, ImageGenerationRequest, ImagesResponse
from localhost_ai.runtime.client import GeneratedImage
from localhost_ai.runtime.manager import ModelManager
from localhost_ai.serving.registry import ModelRegistry
from localhost_ai.settings import Settings

log = logging.getLogger(__name__)

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
GENERATED_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpg|webp)$")


def validate_size(text: str | None, config: ModelConfig, max_side: int) -> tuple[int, int]:
    """The (width, height) to generate; 400 for anything malformed, tiny, huge or not a multiple of 8."""
    if text is None or text.strip().lower() == "auto":
        return config.default_size
    try:
        width, height = parse_size(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="size") from None
    for side in (width, height):
        if side < 8 or side > max_side:
            raise InvalidRequest(
                f"Invalid size '{text}': width and height must be between 8 and {max_side}.", param="size"
            )
        if side % 8:
            raise InvalidRequest(f"Invalid size '{text}': width and height must be multiples of 8.", param="size")
    return width, height


def to_backend_request(req: ImageGenerationRequest, config: ModelConfig, max_side: int) -> pb.GenerateImagesRequest:
    """Translate every dialect's fields into the one backend request."""
    width, height = validate_size(req.size, config, max_side)
    positive, negative = req.split_prompt()
    if not positive:
        raise InvalidRequest("prompt must contain text before '|'", param="prompt")
    output_format = "jpeg" if req.output_format == "jpg" else req.output_format
    seed = req.seed if req.seed is not None else config.parameters.seed
    msg = pb.GenerateImagesRequest(
        positive_prompt=positive,
        negative_prompt=negative,
        width=width,
        height=height,
        steps=req.steps or config.step or 0,
        seed=seed if seed is not None else random.randrange(2**31),
        n=req.n,
        mode=req.mode or 0,
        output_format=output_format,
        output_compression=req.output_compression if req.output_compression is not None else 100,
    )
    guidance = req.guidance_scale if req.guidance_scale is not None else config.cfg_scale
    if guidance is not None:
        msg.guidance_scale = guidance
    if req.true_cfg_scale is not None:
        msg.true_cfg_scale = req.true_cfg_scale
    if req.cfg_normalization is not None:
        msg.cfg_normalization = req.cfg_normalization
    return msg


def source_size(image: bytes) -> tuple[int, int]:
    """(width, height) of an uploaded PNG/JPEG/WebP; 400 if it is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as opened:
            if opened.format not in {"PNG", "JPEG", "WEBP"}:
                raise InvalidRequest(f"Unsupported image format {opened.format}: use PNG, JPEG or WebP.", param="image")
            return opened.size
    except (UnidentifiedImageError, OSError):
        raise InvalidRequest("The 'image' file is not a readable PNG, JPEG or WebP image.", param="image") from None


class ImageStore:
    """Files behind `response_format=url`, served from /generated-images/<file>."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, image: GeneratedImage) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.{EXTENSIONS.get(image.mime_type, 'png')}"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(image.data)
        tmp.replace(self.directory / name)
        return name

    def path(self, name: str) -> Path:
        if not GENERATED_NAME.match(name) or not (self.directory / name).is_file():
            raise NotFound(f"No generated image named '{name}'.")
        return self.directory / name


class ImageService:
    def __init__(self, settings: Settings, registry: ModelRegistry, manager: ModelManager, store: ImageStore):
        self.settings = settings
        self.registry = registry
        self.manager = manager
        self.store = store

    def prepare(self, req: ImageGenerationRequest) -> tuple[ModelConfig, pb.GenerateImagesRequest]:
        """Everything that can fail with a 4xx happens here, before a backend is touched."""
        config = self.registry.resolve(req.model)
        return config, to_backend_request(req, config, self.settings.max_image_side)

    def prepare_edit(self, req: ImageEditRequest, image: bytes) -> tuple[ModelConfig, pb.GenerateImagesRequest]:
        """An img2img request: the size defaults to the source's, rounded down to a multiple of 8."""
        width, height = source_size(image)
        if req.size is None or req.size == "auto":
            req = req.model_copy(update={"size": f"{max(8, width // 8 * 8)}x{max(8, height // 8 * 8)}"})
        config, msg = self.prepare(req)
        msg.src_image = image
        if req.strength is not None:
            msg.strength = req.strength
        return config, msg

    async def generate(
        self,
        req: ImageGenerationRequest,
        base_url: str,
        on_progress: Callable[[int, int], None] | None = None,
        prepared: tuple[ModelConfig, pb.GenerateImagesRequest] | None = None,
    ) -> ImagesResponse:
        config, backend_request = prepared or self.prepare(req)
        started = time.perf_counter()
        runner = await self.manager.runner(config)
        images = await runner.generate(backend_request, on_progress)
        log.info(
            "model=%s n=%d size=%dx%d steps=%s seed=%d in %.2fs",
            config.name,
            backend_request.n,
            backend_request.width,
            backend_request.height,
            backend_request.steps or "default",
            backend_request.seed,
            time.perf_counter() - started,
        )
        return self.render(req, backend_request, images, base_url)

    def render(
        self,
        req: ImageGenerationRequest,
        backend_request: pb.GenerateImagesRequest,
        images: list[GeneratedImage],
        base_url: str,
    ) -> ImagesResponse:
        fmt = backend_request.output_format
        if (req.response_format or "b64_json") == "url":
            data = [
                ImageData(url=f"{base_url.rstrip('/')}/generated-images/{self.store.save(img)}", seed=img.seed)
                for img in images
            ]
        else:
            data = [ImageData(b64_json=base64.b64encode(img.data).decode(), seed=img.seed) for img in images]
        return ImagesResponse(
            created=int(time.time()),
            data=data,
            output_format=fmt,
            size=f"{backend_request.width}x{backend_request.height}",
            quality=req.quality,
            background=req.background,
        )
