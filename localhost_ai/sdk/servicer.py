"""The gRPC servicer: a thin adapter from backend.proto to an ImageBackend.

Generation runs on one worker thread, so Health and Status still answer while a batch is busy.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from localhost_ai.proto import backend_pb2 as pb
from localhost_ai.proto import backend_pb2_grpc as pb_grpc
from localhost_ai.sdk.base import MIME_TYPES, ImageBackend
from localhost_ai.sdk.errors import BackendNotLoaded, grpc_code_for
from localhost_ai.sdk.types import GenerationRequest, LoadOptions

log = logging.getLogger(__name__)
State = pb.StatusResponse.State


class GenerationCancelled(Exception):
    """The client went away; raised from the progress callback to stop the pipeline early."""


class BackendServicer(pb_grpc.BackendServicer):
    def __init__(self, backend: ImageBackend) -> None:
        self.backend = backend
        self.state = State.UNINITIALIZED
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._lock = threading.Lock()

    # --- LocalAI-compatible calls -------------------------------------------------------------
    def Health(self, request: pb.HealthMessage, context: grpc.ServicerContext) -> pb.Reply:
        return pb.Reply(message=b"OK")

    def Status(self, request: pb.HealthMessage, context: grpc.ServicerContext) -> pb.StatusResponse:
        return pb.StatusResponse(state=self.state)

    def LoadModel(self, request: pb.ModelOptions, context: grpc.ServicerContext) -> pb.Result:
        options = LoadOptions.from_pb(request)
        try:
            self._worker.submit(self.backend.load, options).result()
        except Exception as exc:  # reported in the Result, as LocalAI's backends do
            if isinstance(exc, (OSError, ValueError)):  # expected: bad path or config, no traceback needed
                log.error("loading %s failed: %s", options.model, exc)
            else:
                log.exception("loading %s failed", options.model)
            self.state = State.ERROR
            return pb.Result(success=False, message=f"{type(exc).__name__}: {exc}")
        self.state = State.READY
        return pb.Result(success=True, message="model loaded")

    def Free(self, request: pb.HealthMessage, context: grpc.ServicerContext) -> pb.Result:
        self._worker.submit(self.backend.free).result()
        self.state = State.UNINITIALIZED
        return pb.Result(success=True, message="freed")

    def GenerateImage(self, request: pb.GenerateImageRequest, context: grpc.ServicerContext) -> pb.Result:
        """LocalAI's unary call: one image, written to `dst`."""
        src = b""
        if request.src:
            with open(request.src, "rb") as handle:
                src = handle.read()
        gen = GenerationRequest.from_localai_pb(request, src_image=src)
        gen.output_format = "jpeg" if request.dst.lower().endswith((".jpg", ".jpeg")) else "png"
        images = self._run(gen, context, on_progress=None)
        with open(request.dst, "wb") as handle:
            handle.write(images[0].data)
        return pb.Result(success=True, message=f"image written to {request.dst}")

    # --- localhost-ai streaming call ----------------------------------------------------------
    def GenerateImages(
        self, request: pb.GenerateImagesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GenerateImagesEvent]:
        events: queue.Queue[pb.GenerateImagesEvent | None] = queue.Queue()

        def on_progress(step: int, total: int) -> None:
            events.put(pb.GenerateImagesEvent(progress=pb.Progress(step=step, total=total)))

        gen = GenerationRequest.from_pb(request)
        future = self._worker.submit(self._generate_encoded, gen, context, on_progress)
        future.add_done_callback(lambda _: events.put(None))
        while (event := events.get()) is not None:
            yield event
        for image in self._result_or_abort(future, context):
            yield pb.GenerateImagesEvent(image=image)

    # --- shared machinery ---------------------------------------------------------------------
    def _run(self, gen, context, on_progress) -> list[pb.EncodedImage]:
        future = self._worker.submit(self._generate_encoded, gen, context, on_progress)
        return self._result_or_abort(future, context)

    def _result_or_abort(self, future, context: grpc.ServicerContext) -> list[pb.EncodedImage]:
        try:
            return future.result()
        except GenerationCancelled:
            context.abort(grpc.StatusCode.CANCELLED, "request cancelled by the client")
        except Exception as exc:
            code = grpc_code_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("generation failed")
            context.abort(code, f"{type(exc).__name__}: {exc}" if code == grpc.StatusCode.INTERNAL else str(exc))
        raise AssertionError("unreachable")

    def _generate_encoded(self, gen: GenerationRequest, context, on_progress) -> list[pb.EncodedImage]:
        if self.state not in (State.READY, State.BUSY):
            raise BackendNotLoaded("no model is loaded: call LoadModel first")

        def progress(step: int, total: int) -> None:
            if not context.is_active():
                raise GenerationCancelled()
            if on_progress is not None:
                on_progress(step, total)

        self.state = State.BUSY
        try:
            images = self.backend.generate(gen, progress)
        finally:
            self.state = State.READY
        if len(images) != gen.n:
            raise RuntimeError(f"backend returned {len(images)} images for n={gen.n}")
        fmt = "jpeg" if gen.output_format == "jpg" else gen.output_format
        return [
            pb.EncodedImage(
                index=i,
                data=self.backend.encode(image, fmt, gen.output_compression),
                seed=seed,
                mime_type=MIME_TYPES.get(fmt, "image/png"),
                width=image.width,
                height=image.height,
            )
            for i, (image, seed) in enumerate(zip(images, gen.seeds, strict=True))
        ]


def decode_image(data: bytes):
    """Open encoded image bytes with Pillow (img2img sources)."""
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")
