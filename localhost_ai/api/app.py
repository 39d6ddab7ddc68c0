"""Builds the FastAPI application: state objects, routers, error handlers, startup and shutdown."""

from __future__ import annotations

import asyncio
import atexit
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from localhost_ai import __version__
from localhost_ai.api import images, models
from localhost_ai.api.errors import install_error_handlers
from localhost_ai.runtime.manager import ModelManager
from localhost_ai.serving.images import ImageService, ImageStore
from localhost_ai.serving.registry import ModelRegistry
from localhost_ai.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    registry = ModelRegistry(settings.models_dir)
    manager = ModelManager(settings)
    store = ImageStore(settings.generated_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        atexit.register(manager.kill_all_now)  # last resort if the loop never reaches shutdown
        await _preload(app)
        manager.start_reaper()
        log.info("localhost-ai %s serving %d model(s) from %s", __version__, len(registry.names()), settings.models_dir)
        try:
            yield
        finally:
            await manager.shutdown()
            app.state.installer.close()

    app = FastAPI(title="localhost-ai", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.manager = manager
    app.state.images = ImageService(settings, registry, manager, store)
    app.state.preload_errors = []
    install_error_handlers(app)
    app.include_router(models.router)
    app.include_router(images.router)
    _mount_gallery(app, settings, registry, manager)
    return app


def _mount_gallery(app: FastAPI, settings: Settings, registry: ModelRegistry, manager: ModelManager) -> None:
    from localhost_ai.api import gallery_routes
    from localhost_ai.serving.installs import ModelInstaller

    def unload_deleted(name: str) -> None:
        # Called from an install worker thread; the unload itself runs on the server's loop.
        loop = app.state.loop
        if loop is not None and name in manager.runners:
            asyncio.run_coroutine_threadsafe(manager.unload(name), loop)

    app.state.loop = None
    app.state.installer = ModelInstaller(settings, registry, on_deleted=unload_deleted)
    app.include_router(gallery_routes.router)


async def _preload(app: FastAPI) -> None:
    """Install PRELOAD_MODELS / --preload-models-config before the server reports ready."""
    from localhost_ai.gallery.preload import run_preloads

    app.state.loop = asyncio.get_running_loop()
    settings = app.state.settings
    if not settings.preload_models and not settings.preload_models_config:
        return
    # run_preloads logs every failure itself and leaves each one visible on GET /models/jobs.
    app.state.preload_errors = await asyncio.to_thread(run_preloads, settings, app.state.installer)
