"""localhost-ai: a self-hosted, OpenAI-compatible image-generation server."""

__version__ = "0.1.0"
