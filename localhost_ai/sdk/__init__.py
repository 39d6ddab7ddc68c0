"""What a backend imports: the ImageBackend base class, request types, errors and serve(). No torch here."""

from localhost_ai.sdk.base import ImageBackend, ProgressFn
from localhost_ai.sdk.errors import BackendInvalidArgument, BackendOutOfMemory
from localhost_ai.sdk.serve import serve
from localhost_ai.sdk.types import GenerationRequest, LoadOptions

__all__ = [
    "BackendInvalidArgument",
    "BackendOutOfMemory",
    "GenerationRequest",
    "ImageBackend",
    "LoadOptions",
    "ProgressFn",
    "serve",
]
