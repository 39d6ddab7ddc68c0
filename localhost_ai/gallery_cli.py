"""`localhost-ai models list|apply|rm`: talk to a running server, or do the work in-process when none answers."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import httpx

from localhost_ai.gallery.jobs import human_size
from localhost_ai.gallery.uris import is_uri
from localhost_ai.settings import Settings, load_settings

_NO_SERVER = (httpx.ConnectError, httpx.ConnectTimeout)
_BAR = 24


def _in_process(settings: Settings | None) -> Any:
    from localhost_ai.serving.installs import ModelInstaller
    from localhost_ai.serving.registry import ModelRegistry

    settings = settings or load_settings()
    return ModelInstaller(settings, ModelRegistry(Path(settings.models_dir)))


def _error_text(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def models_list(base_url: str, settings: Settings | None = None, *, out: TextIO | None = None) -> int:
    """Print the gallery entries, marking the installed ones."""
    out = out or sys.stdout
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/models/available", timeout=30)
        if response.status_code >= 400:
            print(f"error: {_error_text(response)}", file=sys.stderr)
            return 1
        entries = response.json()
    except _NO_SERVER:
        installer = _in_process(settings)
        try:
            entries = installer.available()
        finally:
            installer.close()
    if not entries:
        print("No gallery entries (see --galleries).", file=out)
        return 0
    width = max(len(entry["id"]) for entry in entries)
    print(f"{'ID':<{width}}  INSTALLED  DESCRIPTION", file=out)
    for entry in entries:
        description = (entry.get("description") or "").strip().splitlines()[0:1]
        text = description[0][:70] if description else ""
        print(f"{entry['id']:<{width}}  {'yes' if entry['installed'] else '-':<9}  {text}", file=out)
    return 0


def apply_body(id_or_url: str, name: str | None = None) -> dict[str, Any]:
    """`{"url": ...}` for a URI or a local YAML file, else `{"id": ...}`."""
    looks_like_file = id_or_url.endswith((".yaml", ".yml")) and Path(id_or_url).is_file()
    body: dict[str, Any] = {"url": id_or_url} if is_uri(id_or_url) or looks_like_file else {"id": id_or_url}
    if name:
        body["name"] = name
    return body


def models_apply(
    base_url: str,
    id_or_url: str,
    name: str | None = None,
    *,
    settings: Settings | None = None,
    poll: float = 0.5,
    err: TextIO | None = None,
) -> int:
    """Install a model and draw a progress bar per file on stderr; Ctrl-C cancels the install."""
    err = err or sys.stderr
    body = apply_body(id_or_url, name)
    base = base_url.rstrip("/")
    view = ProgressView(err)
    try:
        response = httpx.post(f"{base}/models/apply", json=body, timeout=30)
    except _NO_SERVER:
        print(f"no server at {base}; installing in-process", file=err)
        return _apply_in_process(body, settings, view, poll)
    if response.status_code >= 400:
        print(f"error: {_error_text(response)}", file=err)
        return 1
    job_id = response.json()["uuid"]

    def status() -> dict[str, Any]:
        return httpx.get(f"{base}/models/jobs/{job_id}", timeout=30).json()

    def cancel() -> None:
        httpx.post(f"{base}/models/jobs/{job_id}/cancel", timeout=30)

    return _follow(status, cancel, view, poll)


def _apply_in_process(body: dict[str, Any], settings: Settings | None, view: ProgressView, poll: float) -> int:
    from localhost_ai.errors import APIError

    installer = _in_process(settings)
    try:
        try:
            job = installer.apply(body)
        except APIError as exc:
            print(f"error: {exc.message}", file=view.stream)
            return 1
        return _follow(job.snapshot, lambda: installer.cancel(job.uuid), view, poll)
    finally:
        installer.close()


def _follow(status: Callable[[], dict[str, Any]], cancel: Callable[[], Any], view: ProgressView, poll: float) -> int:
    try:
        while True:
            state = status()
            view.draw(state)
            if state["processed"]:
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        print("\ncancelling...", file=view.stream)
        cancel()
        return 130
    for warning in state.get("warnings", []):
        print(f"warning: {warning}", file=view.stream)
    if state.get("error"):
        print(f"error: {state['error']}", file=view.stream)
        return 1
    print(f"installed {state.get('name') or ''}".rstrip(), file=view.stream)
    return 0


def models_rm(base_url: str, name: str, *, settings: Settings | None = None, out: TextIO | None = None) -> int:
    """Delete an installed model (its files, and blobs no other model uses)."""
    out = out or sys.stdout
    try:
        response = httpx.post(f"{base_url.rstrip('/')}/models/delete/{name}", timeout=60)
        if response.status_code >= 400:
            print(f"error: {_error_text(response)}", file=sys.stderr)
            return 1
        result = response.json()
    except _NO_SERVER:
        from localhost_ai.errors import APIError

        installer = _in_process(settings)
        try:
            result = installer.delete(name).model_dump()
        except APIError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        finally:
            installer.close()
    print(f"removed {name}: {result.get('message', 'deleted')} ({result.get('removed_files', 0)} files)", file=out)
    return 0


class ProgressView:
    """One bar per file; redrawn in place on a terminal, one line per finished file otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._drawn = 0
        self._reported: set[str] = set()

    def draw(self, state: dict[str, Any]) -> None:
        files = state.get("files") or []
        if not self.tty:
            for item in files:
                if item["status"] in ("done", "cached") and item["filename"] not in self._reported:
                    self._reported.add(item["filename"])
                    print(self._line(item), file=self.stream)
            return
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F")  # back to the first bar
        for item in files:
            self.stream.write("\x1b[2K" + self._line(item) + "\n")
        self.stream.flush()
        self._drawn = len(files)

    @staticmethod
    def _line(item: dict[str, Any]) -> str:
        size, done = item.get("size"), item.get("downloaded") or 0
        fraction = min(1.0, done / size) if size else (1.0 if item["status"] in ("done", "cached") else 0.0)
        filled = int(fraction * _BAR)
        bar = "#" * filled + "-" * (_BAR - filled)
        note = " (already downloaded)" if item["status"] == "cached" else ""
        sizes = f"{human_size(done)} / {human_size(size)}" if size else human_size(done)
        return f"{item['filename'][-48:]:<48} [{bar}] {fraction * 100:5.1f}%  {sizes}{note}"
