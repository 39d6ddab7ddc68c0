"""The host's gRPC client for one backend: health, load, and generate with a LocalAI fallback.

Generation prefers our streaming GenerateImages; a backend that answers UNIMPLEMENTED (a plain
LocalAI backend) is driven through the unary GenerateImage call, one image per call.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import grpc.aio

from localhost_ai.errors import BackendLoadFailed, from_grpc
from localhost_ai.proto import backend_pb2 as pb
from localhost_ai.proto import backend_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
ProgressCallback = Callable[[int, int], None]


@dataclass
class GeneratedImage:
    data: bytes
    seed: int
    mime_type: str
    width: int
    height: int


class BackendClient:
    def __init__(self, model: str, port: int) -> None:
        self.model = model
        self.channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = pb_grpc.BackendStub(self.channel)
        self.streaming_supported = True

    async def close(self) -> None:
        await self.channel.close()

    async def health(self, timeout: float = 1.0) -> bool:
        reply = await self.stub.Health(pb.HealthMessage(), timeout=timeout)
        return reply.message == b"OK"

    async def load(self, options: pb.ModelOptions, timeout: float) -> None:
        try:
            result = await self.stub.LoadModel(options, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc.code(), exc.details(), self.model) from None
        if not result.success:
            raise BackendLoadFailed(f"Loading model '{self.model}' failed: {result.message}")

    async def free(self, timeout: float = 2.0) -> None:
        await self.stub.Free(pb.HealthMessage(), timeout=timeout)

    async def generate(
        self, request: pb.GenerateImagesRequest, on_progress: ProgressCallback | None = None
    ) -> list[GeneratedImage]:
        """All images of the batch; progress events go to `on_progress` as they arrive."""
        try:
            if self.streaming_supported:
                try:
                    return await self._generate_streaming(request, on_progress)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    self.streaming_supported = False
            return await self._generate_unary(request)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc.code(), exc.details(), self.model) from None

    async def _generate_streaming(self, request, on_progress) -> list[GeneratedImage]:
        images: list[GeneratedImage] = []
        call = self.stub.GenerateImages(request)
        events: AsyncIterator[pb.GenerateImagesEvent] = call.__aiter__()
        async for event in events:
            if event.HasField("progress"):
                if on_progress is not None:
                    on_progress(event.progress.step, event.progress.total)
            else:
                img = event.image
                images.append(GeneratedImage(img.data, img.seed, img.mime_type, img.width, img.height))
        return images

    async def _generate_unary(self, request: pb.GenerateImagesRequest) -> list[GeneratedImage]:
        """LocalAI's contract: one call per image, each written to a `dst` file we read back."""
        images = []
        with tempfile.TemporaryDirectory(prefix="localhost-ai-") as tmp:
            src = ""
            if request.src_image:
                src = os.path.join(tmp, "src.png")
                with open(src, "wb") as handle:
                    handle.write(request.src_image)
            for i in range(max(1, request.n)):
                dst = os.path.join(tmp, f"{i}.png")
                result = await self.stub.GenerateImage(
                    pb.GenerateImageRequest(
                        height=request.height,
                        width=request.width,
                        mode=request.mode,
                        step=request.steps,
                        seed=int(request.seed + i) & 0x7FFFFFFF,
                        positive_prompt=request.positive_prompt,
                        negative_prompt=request.negative_prompt,
                        dst=dst,
                        src=src,
                    )
                )
                if not result.success:
                    raise BackendLoadFailed(f"Backend for '{self.model}' failed: {result.message}")
                with open(dst, "rb") as handle:
                    png = handle.read()
                images.append(_reencode(png, request.seed + i, request.output_format, request.output_compression))
        return images


def _reencode(png: bytes, seed: int, output_format: str, compression: int) -> GeneratedImage:
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    fmt = (output_format or "png").lower()
    if fmt == "png" and image.format == "PNG":
        return GeneratedImage(png, seed, "image/png", image.width, image.height)
    buffer = io.BytesIO()
    save_as = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}.get(fmt, "PNG")
    kwargs = {} if save_as == "PNG" else {"quality": compression or 100}
    image.convert("RGB" if save_as != "PNG" else image.mode).save(buffer, format=save_as, **kwargs)
    return GeneratedImage(buffer.getvalue(), seed, f"image/{save_as.lower()}", image.width, image.height)
