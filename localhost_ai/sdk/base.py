"""The backend author's contract: subclass ImageBackend and write `load()` and `generate()`.

The base owns everything else: state, encoding images, and (through the servicer) threads,
progress streaming and error mapping.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

from localhost_ai.sdk.errors import BackendInvalidArgument
from localhost_ai.sdk.types import GenerationRequest, LoadOptions

if TYPE_CHECKING:
    from PIL import Image

# progress(step, total): called by generate() after each denoising step.
ProgressFn = Callable[[int, int], None]

MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class ImageBackend:
    """Subclass and implement `load` and `generate`; override `free` to release memory early."""

    name = "backend"

    def load(self, options: LoadOptions) -> None:
        raise NotImplementedError

    def generate(self, request: GenerationRequest, progress: ProgressFn) -> list[Image.Image]:
        """Return `request.n` images; image i must come from seed `request.seed + i`."""
        raise NotImplementedError

    def free(self) -> None:
        """Drop the loaded model; the process may be asked to load again afterwards."""

    @staticmethod
    def encode(image: Image.Image, output_format: str, compression: int) -> bytes:
        """Encode to png/jpeg/webp; `compression` is the quality (0-100) for the lossy formats."""
        fmt = (output_format or "png").lower()
        if fmt == "jpg":
            fmt = "jpeg"
        if fmt not in MIME_TYPES:
            raise BackendInvalidArgument(f"unsupported output_format {output_format!r}")
        buffer = io.BytesIO()
        if fmt == "png":
            image.save(buffer, format="PNG")
        else:
            quality = max(1, min(100, compression or 100))
            image.convert("RGB").save(buffer, format=fmt.upper(), quality=quality)
        return buffer.getvalue()
