"""Routes about models and the server: health, model list with backend usability, loaded models, unload."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from pydantic import BaseModel

from localhost_ai.serving.backends import list_backends

router = APIRouter()


@router.get("/health")
@router.get("/healthz")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    state = request.app.state
    backends = {b["name"]: b for b in list_backends(Path(state.settings.backends_dir), state.settings.backend_python)}
    loaded = set(state.manager.runners)
    data = []
    for config in state.registry.all():
        backend = backends.get(config.backend, {"usable": False, "reason": "no such backend"})
        data.append(
            {
                "id": config.name,
                "object": "model",
                "created": 0,
                "owned_by": "localhost-ai",
                "backend": config.backend,
                "backend_usable": backend["usable"],
                "backend_reason": backend["reason"],
                "loaded": config.name in loaded,
                "default_size": config.size,
                "description": config.description,
            }
        )
    return {"object": "list", "data": data, "backends": list(backends.values()), "errors": state.registry.errors}


@router.get("/v1/backends")
async def backends(request: Request) -> dict:
    settings = request.app.state.settings
    return {"object": "list", "data": list_backends(Path(settings.backends_dir), settings.backend_python)}


@router.get("/api/ps")
async def ps(request: Request) -> dict:
    return {"models": request.app.state.manager.ps()}


class StopRequest(BaseModel):
    model: str


@router.post("/api/stop")
async def stop(body: StopRequest, request: Request) -> dict:
    request.app.state.registry.get(body.model)  # 404 for a model that is not installed
    unloaded = await request.app.state.manager.unload(body.model)
    return {"model": body.model, "unloaded": unloaded}
