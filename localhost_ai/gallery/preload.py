"""Install the models named by PRELOAD_MODELS / --preload-models and --preload-models-config before serving.

Both hold /models/apply bodies: `PRELOAD_MODELS` a JSON array, the config file a YAML list. Items install
concurrently (as jobs, visible on GET /models/jobs); an item whose model is already installed is skipped
without touching the network. EVERY failure is returned and logged at ERROR, not only the last.

On failure the server serves anyway (with the models that did install), and the failures stay listed on
GET /models/jobs. Set `LOCALHOST_AI_PRELOAD_STRICT=1` to refuse to start instead: `run_preloads` then
raises PreloadError carrying every failure.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from localhost_ai.errors import APIError
from localhost_ai.protocol.models import ApplyRequest
from localhost_ai.settings import Settings

if TYPE_CHECKING:
    from localhost_ai.gallery.jobs import Job
    from localhost_ai.serving.installs import ModelInstaller

log = logging.getLogger(__name__)

STRICT_ENV = "LOCALHOST_AI_PRELOAD_STRICT"


class PreloadError(RuntimeError):
    """Preloading failed and LOCALHOST_AI_PRELOAD_STRICT asks the server not to start."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__(f"{len(failures)} preload(s) failed: " + "; ".join(failures))
        self.failures = failures


def strict_mode() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def preload_items(settings: Settings) -> tuple[list[tuple[str, Any]], list[str]]:
    """(label, apply body) pairs from the setting and the config file, and one message per unreadable source."""
    items: list[tuple[str, Any]] = []
    problems: list[str] = []
    if settings.preload_models:
        try:
            data = json.loads(settings.preload_models)
        except ValueError as exc:
            problems.append(f"PRELOAD_MODELS: invalid JSON: {exc}")
            data = []
        items += _listed(data, "PRELOAD_MODELS", problems)
    if settings.preload_models_config:
        path = Path(settings.preload_models_config)
        try:
            data = yaml.safe_load(path.read_text()) or []
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path}: cannot read the preload list: {exc}")
            data = []
        items += _listed(data, str(path), problems)
    return items, problems


def _listed(data: Any, source: str, problems: list[str]) -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        problems.append(f"{source}: expected a list of /models/apply bodies, got {type(data).__name__}")
        return []
    labelled = []
    for position, body in enumerate(data, start=1):
        what = (body.get("id") or body.get("name") or body.get("url")) if isinstance(body, dict) else None
        labelled.append((f"{source} item {position}" + (f" ({what})" if what else ""), body))
    return labelled


def run_preloads(settings: Settings, installer: ModelInstaller, *, report_every: float = 5.0) -> list[str]:
    """Install every preload item; returns every failure message (empty when all went well)."""
    items, failures = preload_items(settings)
    for message in failures:
        installer.record_failure("preload", message)
    started: list[tuple[str, Job]] = []
    for label, body in items:
        try:
            request = ApplyRequest.model_validate(body)
        except ValidationError as exc:
            problem = exc.errors()[0]
            message = f"{label}: {problem['msg'].removeprefix('Value error, ')}"
            failures.append(message)
            installer.record_failure(label, message)
            continue
        name = request.name or (request.id.rpartition("@")[2] if request.id else None)
        if name and installer.is_installed(name):
            log.info("preload: %s is already installed; skipped", name)
            continue
        try:
            started.append((label, installer.apply(request)))
        except APIError as exc:
            failures.append(f"{label}: {exc.message}")
            installer.record_failure(label, f"{label}: {exc.message}")
    if started:
        log.info("preload: installing %d model(s) before serving", len(started))
    _wait_and_report(started, report_every)
    for label, job in started:
        if job.error:
            failures.append(f"{label}: {job.error}")
        else:
            log.info("preload: %s installed", job.name)
    for message in failures:
        log.error("preload failed: %s", message)
    if failures and strict_mode():
        raise PreloadError(failures)
    return failures


def _wait_and_report(started: list[tuple[str, Job]], every: float) -> None:
    last = time.monotonic()
    for _, job in started:
        while not job.done.wait(timeout=1.0):
            if time.monotonic() - last >= every:
                last = time.monotonic()
                for _, other in started:
                    if not other.processed:
                        state = other.snapshot()
                        log.info(
                            "preload: %s %.0f%% (%s %s of %s)",
                            other.name or other.source, state["progress"], state["file_name"],
                            state["downloaded_size"], state["file_size"],
                        )  # fmt: skip
