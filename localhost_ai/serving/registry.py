"""The installed models: the configs read from the models dir, re-read when files change."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from localhost_ai.config import ModelConfig, scan_models_dir
from localhost_ai.errors import InvalidRequest, ModelNotFound

log = logging.getLogger(__name__)


class ModelRegistry:
    """Names -> ModelConfig for one models dir. `reload()` after installing or deleting a model."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._lock = threading.Lock()
        self._models: dict[str, ModelConfig] = {}
        self.errors: list[str] = []
        self._signature: tuple = ()
        self.reload()

    def _dir_signature(self) -> tuple:
        if not self.models_dir.is_dir():
            return ()
        entries = [*self.models_dir.glob("*.yaml"), *self.models_dir.glob("*.yml")]
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in entries if p.exists()))

    def reload(self) -> None:
        with self._lock:
            scan = scan_models_dir(self.models_dir)
            for message in scan.errors:
                if message not in self.errors:
                    log.error("skipping model config: %s", message)
            self._models, self.errors = scan.models, scan.errors
            self._signature = self._dir_signature()

    def refresh(self) -> None:
        """Re-read the dir when a YAML was added, removed or edited by hand."""
        if self._dir_signature() != self._signature:
            self.reload()

    def names(self) -> list[str]:
        self.refresh()
        return sorted(self._models)

    def all(self) -> list[ModelConfig]:
        self.refresh()
        return [self._models[name] for name in sorted(self._models)]

    def get(self, name: str) -> ModelConfig:
        self.refresh()
        config = self._models.get(name)
        if config is None:
            raise ModelNotFound(name, list(self._models))
        return config

    def resolve(self, name: str | None) -> ModelConfig:
        """The named model, or the only installed one when no name is given."""
        if name:
            return self.get(name)
        names = self.names()
        if len(names) == 1:
            return self._models[names[0]]
        if not names:
            raise InvalidRequest(
                "No model is installed. Install one with `localhost-ai models apply NAME`.", param="model"
            )
        raise InvalidRequest(
            f"'model' is required when several models are installed ({', '.join(names)}).", param="model"
        )
