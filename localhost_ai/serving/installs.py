"""Installing and deleting models: the use cases behind /models/apply, /models/jobs, /models/available, delete."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from localhost_ai.config import NAME_PATTERN, ConfigError, load_model_config
from localhost_ai.errors import Conflict, InvalidRequest, NotFound
from localhost_ai.gallery import uris
from localhost_ai.gallery.download import RetryPolicy
from localhost_ai.gallery.index import (
    Catalog,
    GalleryEntry,
    GalleryFile,
    build_plan,
    entry_from_definition,
    load_yaml,
)
from localhost_ai.gallery.jobs import Installer, InstallError, Job, JobManager
from localhost_ai.protocol.models import ApplyRequest, DeleteResponse
from localhost_ai.serving.registry import ModelRegistry
from localhost_ai.settings import Settings

log = logging.getLogger(__name__)


class ModelInstaller:
    """Starts install jobs, reports them, lists the galleries and deletes installed models."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        on_deleted: Callable[[str], None] | None = None,
        *,
        max_jobs: int = 2,
        parallel_files: int = 4,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.on_deleted = on_deleted
        self.models_dir = Path(settings.models_dir)
        self.catalog = Catalog(list(settings.galleries))
        self.installer = Installer(
            self.models_dir, parallel_files=parallel_files, retry=retry, foreign_model=self._is_foreign
        )
        self.store = self.installer.store
        self._jobs = JobManager(max_jobs)
        self._active: dict[str, str] = {}  # model name -> uuid of the job installing it
        self._lock = threading.Lock()

    # --- installs ------------------------------------------------------------------------------------
    def apply(self, body: ApplyRequest | dict[str, Any]) -> Job:
        """Validate the request, start a job and return it at once (404 for an unknown gallery id)."""
        request = body if isinstance(body, ApplyRequest) else _parse_request(body)
        entry: GalleryEntry | None = None
        if request.id:
            entry = self.catalog.find(request.id)
            if entry is None:
                galleries = ", ".join(g.name for g in self.catalog.galleries) or "none configured"
                unreadable = (
                    f" Some gallery files could not be read: {'; '.join(self.catalog.errors)}"
                    if self.catalog.errors
                    else ""
                )
                raise NotFound(
                    f"No gallery entry '{request.id}' (galleries: {galleries}); GET /models/available lists them."
                    + unreadable,
                    param="id",
                    code="model_not_found",
                )
        elif request.url:
            _check_location(request.url)
        else:
            entry = GalleryEntry(name=request.name or "", config_file=request.config_file, source="config_file")
        name = request.name or (entry.name if entry else None)
        if name and (not NAME_PATTERN.match(name) or ".." in name):
            raise InvalidRequest(
                f"Invalid model name '{name}': use 1-128 letters, digits or ._@:+- (no '..').", param="name"
            )
        job = Job(source=request.source, name=name)
        if name:
            self._reserve(name, job, Conflict)

        def work(job: Job) -> None:
            chosen = entry or entry_from_definition(load_yaml(request.url or ""), request.url or "")
            plan = build_plan(
                chosen,
                name=request.name,
                overrides=request.overrides,
                files=[GalleryFile(**spec.model_dump()) for spec in request.files],
                backends=self._backends(),
            )
            if plan.name != name:
                self._reserve(plan.name, job, InstallError)
            self.installer.run(job, plan)

        return self._jobs.submit(job, work, self._after_install)

    def _after_install(self, job: Job, error: str | None) -> None:
        with self._lock:
            for model, owner in list(self._active.items()):
                if owner == job.uuid:
                    del self._active[model]
        if error is None:
            self.registry.reload()

    def _reserve(self, name: str, job: Job, error: type[Exception]) -> None:
        with self._lock:
            running = self._active.get(name)
            if running and running != job.uuid:
                raise error(f"An install of '{name}' is already running (job {running}); wait for it or cancel it.")
            self._active[name] = job.uuid

    def job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"No install job '{job_id}'.", param="uuid")
        return job

    def jobs(self) -> list[Job]:
        return self._jobs.all()

    def cancel(self, job_id: str) -> Job:
        self.job(job_id)
        job = self._jobs.cancel(job_id)
        assert job is not None
        return job

    def wait(self, job: Job, timeout: float | None = None) -> Job:
        job.done.wait(timeout)
        return job

    def record_failure(self, source: str, message: str) -> Job:
        """A failure that happened before a job could start (bad preload item), listed with the jobs."""
        job = self._jobs.add(Job(source=source))
        job.finish(message)
        return job

    # --- galleries and installed models ---------------------------------------------------------------
    def available(self) -> list[dict[str, Any]]:
        installed = set(self.registry.names())
        return [
            {
                "id": entry.id,
                "name": entry.name,
                "gallery": entry.gallery,
                "description": entry.description,
                "license": entry.license,
                "urls": entry.urls,
                "tags": entry.tags,
                "installed": entry.name in installed,
            }
            for entry in self.catalog.entries()
        ]

    def is_installed(self, name: str) -> bool:
        return name in self.registry.names()

    def delete(self, name: str) -> DeleteResponse:
        """Remove a model's YAML, its files (those no other model uses) and blobs nobody refers to."""
        with self._lock:
            if name in self._active:
                raise Conflict(f"An install of '{name}' is running (job {self._active[name]}); cancel it first.")
            manifest = self.store.read_manifest(name)
            yaml_path = self.models_dir / manifest["config"] if manifest else self._config_path(name)
            if manifest is None and yaml_path is None:
                raise NotFound(f"The model '{name}' is not installed.", param="name", code="model_not_found")
            if self.on_deleted is not None:
                try:
                    self.on_deleted(name)
                except Exception:  # unloading is best effort; the files go either way
                    log.exception("unloading %s before deleting it failed", name)
            # The YAML goes first, so the model disappears before any of its files do.
            if yaml_path is not None:
                yaml_path.unlink(missing_ok=True)
            removed = 0
            message = "deleted"
            if manifest:
                mine = [e["filename"] for e in manifest.get("files", [])]
                files = [f for f in mine if not self.store.owners(f, exclude=name)]
                self.store.remove_files(files)
                self.store.remove_manifest(name)
                self.store.collect_garbage(e.get("sha256", "") for e in manifest.get("files", []))
                removed = len(files)
            else:
                message = "deleted the config; its files were not installed from the gallery and were left in place"
                log.info("deleted %s: %s", name, message)
        self.registry.reload()
        return DeleteResponse(name=name, deleted=True, removed_files=removed, message=message)

    def close(self) -> None:
        """Stop running jobs (they clean up after themselves) and close the connection pool."""
        self._jobs.shutdown()
        self.installer.close()

    # --- helpers -------------------------------------------------------------------------------------
    def _config_path(self, name: str) -> Path | None:
        """The YAML that defines `name` in the models dir (file stem or its `name:` key)."""
        for path in sorted([*self.models_dir.glob("*.yaml"), *self.models_dir.glob("*.yml")]):
            if path.stem == name:
                return path
            try:
                if load_model_config(path).name == name:
                    return path
            except (ConfigError, OSError):
                continue
        return None

    def _is_foreign(self, name: str) -> bool:
        """Installed by hand (not from the gallery): a reinstall must not overwrite it."""
        return self.store.read_manifest(name) is None and name in self.registry.names()

    def _backends(self) -> set[str]:
        folder = Path(self.settings.backends_dir)
        if not folder.is_dir():
            return set()
        return {p.name for p in folder.iterdir() if (p / "backend.py").is_file()}


def _parse_request(body: dict[str, Any]) -> ApplyRequest:
    try:
        return ApplyRequest.model_validate(body)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"{where}: {message}" if where else message, param=where or None) from None


def _check_location(location: str) -> None:
    if uris.is_uri(location):
        try:
            uris.resolve(location)
        except uris.URIError as exc:
            raise InvalidRequest(str(exc), param="url") from None
    elif len(urlsplit(location).scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise InvalidRequest(f"{location}: unsupported URI scheme '{urlsplit(location).scheme}:'", param="url")
    elif not Path(location).is_file():
        raise InvalidRequest(f"{location}: not a URI and no such file", param="url")
