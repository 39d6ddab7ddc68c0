"""Routes of the images API: generations and edits (JSON or SSE progress stream) and the files behind URLs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError

from localhost_ai.errors import APIError, InvalidRequest
from localhost_ai.protocol.images import ImageEditRequest, ImageGenerationRequest, ImagesResponse
from localhost_ai.serving.images import ImageService

router = APIRouter()


def _service(request: Request) -> ImageService:
    return request.app.state.images


@router.post("/v1/images/generations", response_model=None)
async def create_image(body: ImageGenerationRequest, request: Request) -> ImagesResponse | StreamingResponse:
    service = _service(request)
    prepared = service.prepare(body)  # 4xx errors surface here, before any stream starts
    base_url = str(request.base_url)
    if not body.stream:
        return await service.generate(body, base_url, prepared=prepared)
    return StreamingResponse(_stream(service, body, base_url, prepared), media_type="text/event-stream")


@router.post("/v1/images/edits", response_model=None)
async def edit_image(request: Request) -> ImagesResponse | StreamingResponse:
    """OpenAI's multipart edits: `image` (or `image[]`) is the img2img source; `mask` is not supported."""
    service = _service(request)
    form = await request.form()
    uploads = [v for k, v in form.multi_items() if k in ("image", "image[]") and hasattr(v, "read")]
    if not uploads:
        raise InvalidRequest("Missing required parameter: 'image' (a PNG, JPEG or WebP file).", param="image")
    if "mask" in form:
        raise InvalidRequest("Masks (inpainting) are not supported; send the image alone for img2img.", param="mask")
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    try:
        body = ImageEditRequest.model_validate(fields)
    except ValidationError as exc:  # rendered like JSON bodies' errors, by the one error handler
        raise RequestValidationError(exc.errors()) from None
    prepared = service.prepare_edit(body, await uploads[0].read())
    base_url = str(request.base_url)
    if not body.stream:
        return await service.generate(body, base_url, prepared=prepared)
    return StreamingResponse(_stream(service, body, base_url, prepared), media_type="text/event-stream")


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _stream(service: ImageService, body: ImageGenerationRequest, base_url: str, prepared) -> AsyncIterator[str]:
    """`progress` events ({step, total}), one `image_generation.completed` per image, then `done`."""
    events: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    task = asyncio.create_task(
        service.generate(body, base_url, on_progress=lambda s, t: events.put_nowait((s, t)), prepared=prepared)
    )
    try:
        while not task.done():
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                step, total = getter.result()
                yield _sse("progress", {"type": "progress", "step": step, "total": total})
            else:
                getter.cancel()
        while not events.empty():
            step, total = events.get_nowait()
            yield _sse("progress", {"type": "progress", "step": step, "total": total})
        try:
            result = task.result()
        except APIError as exc:
            yield _sse("error", exc.envelope())
            return
        for index, item in enumerate(result.data):
            payload = {
                "type": "image_generation.completed",
                "index": index,
                "created_at": int(time.time()),
                "size": result.size,
                "output_format": result.output_format,
                **item.model_dump(exclude_none=True),
            }
            yield _sse("image_generation.completed", payload)
        yield _sse("done", result.model_dump(exclude_none=True))
    finally:
        if not task.done():
            task.cancel()


@router.get("/generated-images/{name}")
async def generated_image(name: str, request: Request) -> FileResponse:
    return FileResponse(_service(request).store.path(name))
