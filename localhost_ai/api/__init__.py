"""The HTTP layer: thin FastAPI routes over serving/, and the one error renderer."""
