"""Content-addressed blob store under `<models_dir>/.blobs`, model manifests, and safe paths in the models dir.

Each downloaded file is stored once as `.blobs/sha256-<hex>`; a model's files are hard links to blobs
(symlinks, then copies, where hard links are not possible). `.manifests/<name>.json` lists the files and
blobs of each installed model: a blob is deleted when no manifest and no running job refers to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

log = logging.getLogger(__name__)

BLOBS_DIR = ".blobs"
MANIFESTS_DIR = ".manifests"


class UnsafePath(ValueError):
    """A gallery file name that would land outside its place in the models dir."""


class StoreConflict(Exception):
    """A model file that exists with other content and is not ours to replace."""


def check_filename(filename: str) -> PurePosixPath:
    """The relative path a gallery file may take, or UnsafePath saying why it may not."""
    if not filename or not filename.strip():
        raise UnsafePath("empty file name")
    if "\\" in filename or "\x00" in filename:
        raise UnsafePath(f"'{filename}': file names use '/' and may not contain backslashes or NUL")
    if filename.startswith("/") or PurePosixPath(filename).is_absolute() or (len(filename) > 1 and filename[1] == ":"):
        raise UnsafePath(f"'{filename}': absolute paths are not allowed; name a path inside the models dir")
    path = PurePosixPath(filename)
    if any(part == ".." for part in path.parts):
        raise UnsafePath(f"'{filename}': '..' would leave the models dir")
    if path.parts[0].startswith("."):
        # .blobs and .manifests belong to the store; a file there could corrupt another model.
        raise UnsafePath(f"'{filename}': names starting with '.' are reserved in the models dir")
    if len(path.parts) == 1 and path.suffix.lower() in (".yaml", ".yml"):
        raise UnsafePath(f"'{filename}': a .yaml file at the top of the models dir would be read as a model config")
    return path


def safe_target(models_dir: Path, filename: str) -> Path:
    """`models_dir/filename`, refusing traversal and any existing symlinked folder on the way."""
    relative = check_filename(filename)
    current = models_dir
    for part in relative.parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise UnsafePath(f"'{filename}': '{current.relative_to(models_dir)}' is a symlink; refusing to follow it")
        if current.exists() and not current.is_dir():
            raise UnsafePath(f"'{filename}': '{current.relative_to(models_dir)}' exists and is not a folder")
    target = current / relative.name
    if target.is_dir() and not target.is_symlink():
        raise UnsafePath(f"'{filename}': a folder of that name exists")
    if not target.parent.resolve().is_relative_to(models_dir.resolve()):
        raise UnsafePath(f"'{filename}': resolves outside the models dir")
    return target


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class BlobStore:
    """Blobs, the per-key locks that keep two jobs from fetching one blob twice, and manifests."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self.blobs_dir = models_dir / BLOBS_DIR
        self.manifests_dir = models_dir / MANIFESTS_DIR
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._pins: Counter[str] = Counter()

    # --- blobs ---------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.blobs_dir / f"sha256-{sha256}"

    def partial_path(self, key: str) -> Path:
        return self.blobs_dir / f"{key}.partial"

    def has_blob(self, sha256: str) -> bool:
        return bool(sha256) and self.blob_path(sha256).is_file()

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def pin(self, sha256: str) -> None:
        """Mark a blob as in use by a running job, so a failing job's cleanup does not delete it."""
        with self._guard:
            self._pins[sha256] += 1

    def unpin(self, sha256: str) -> None:
        with self._guard:
            self._pins[sha256] -= 1
            if self._pins[sha256] <= 0:
                del self._pins[sha256]

    def adopt(self, existing: Path, sha256: str) -> Path:
        """Make an already-present file with a known hash the blob for it (no download needed)."""
        blob = self.blob_path(sha256)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        tmp = blob.with_name(f".{blob.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            _link_or_copy(existing, tmp)
            os.replace(tmp, blob)
        finally:
            tmp.unlink(missing_ok=True)
        return blob

    def link(self, sha256: str, target: Path) -> str:
        """Point `target` at the blob (atomically replacing it); returns 'hardlink', 'symlink' or 'copy'."""
        blob = self.blob_path(sha256)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            how = _link_or_copy(blob, tmp)
            os.replace(tmp, target)
        finally:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
        return how

    def is_linked(self, sha256: str, target: Path) -> bool:
        """True when `target` already is (a link to) the blob."""
        blob = self.blob_path(sha256)
        try:
            return target.exists() and os.path.samefile(target, blob)
        except OSError:
            return False

    def collect_garbage(self, candidates: Iterable[str] | None = None) -> list[str]:
        """Delete blobs no manifest lists and no running job pins; returns the hashes removed."""
        referenced = self.referenced()
        if candidates is None:
            candidates = [p.name.removeprefix("sha256-") for p in self.blobs_dir.glob("sha256-*")]
        removed = []
        for sha in set(candidates):
            with self.locked(f"sha256-{sha}"), self._guard:
                if sha in referenced or self._pins.get(sha):
                    continue
                path = self.blob_path(sha)
                if path.exists():
                    path.unlink()
                    removed.append(sha)
        return removed

    # --- committing an install ----------------------------------------------------------------------
    def commit_model(
        self, name: str, source: str, config: dict[str, Any], targets: dict[str, Path], hashes: dict[str, str]
    ) -> set[str]:
        """Link each file to its blob, write the manifest, then `<name>.yaml` LAST; undo all on failure.

        Returns the blobs the previous version of the model used and this one does not (to collect).
        """
        yaml_path = self.models_dir / f"{name}.yaml"
        old = self.read_manifest(name)
        old_files = {e["filename"]: e.get("sha256", "") for e in (old or {}).get("files", [])}
        created: list[str] = []
        replaced: dict[str, str] = {}
        links: dict[str, str] = {}
        try:
            for filename, target in targets.items():
                sha = hashes[filename]
                if self.is_linked(sha, target):
                    links[filename] = "existing"
                    continue
                if target.exists() or target.is_symlink():
                    if filename in old_files:
                        replaced[filename] = old_files[filename]
                    elif not target.is_file() or sha256_of(target) != sha:
                        raise StoreConflict(
                            f"refusing to overwrite {target}: it exists, was not installed from the gallery, "
                            "and differs from the download"
                        )
                else:
                    created.append(filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                links[filename] = self.link(sha, target)
            files = [{"filename": f, "sha256": hashes[f], "link": links[f]} for f in targets]
            manifest = {"name": name, "source": source, "config": yaml_path.name, "installed_at": time.time()}
            self.write_manifest(name, {**manifest, "files": files})
            write_atomic(yaml_path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        except BaseException:
            self.remove_files(created)
            for filename, old_sha in replaced.items():
                if self.has_blob(old_sha):
                    self.link(old_sha, targets[filename])
            if old is not None:
                self.write_manifest(name, old)
            else:
                self.remove_manifest(name)
            raise
        self.remove_files([f for f in old_files if f not in targets and not self.owners(f, exclude=name)])
        return set(old_files.values()) - set(hashes.values())

    # --- manifests -----------------------------------------------------------------------------------
    def manifest_path(self, name: str) -> Path:
        return self.manifests_dir / f"{name}.json"

    def read_manifest(self, name: str) -> dict[str, Any] | None:
        path = self.manifest_path(name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("%s: unreadable manifest (%s); treating the model as hand-installed", path, exc)
            return None

    def write_manifest(self, name: str, manifest: dict[str, Any]) -> None:
        write_atomic(self.manifest_path(name), json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def remove_manifest(self, name: str) -> None:
        self.manifest_path(name).unlink(missing_ok=True)

    def manifests(self) -> dict[str, dict[str, Any]]:
        found = {}
        for path in sorted(self.manifests_dir.glob("*.json")):
            manifest = self.read_manifest(path.stem)
            if manifest is not None:
                found[path.stem] = manifest
        return found

    def referenced(self, exclude: str | None = None) -> set[str]:
        return {
            entry["sha256"]
            for name, manifest in self.manifests().items()
            if name != exclude
            for entry in manifest.get("files", [])
            if entry.get("sha256")
        }

    def owners(self, filename: str, exclude: str | None = None) -> dict[str, str]:
        """Installed models (other than `exclude`) whose manifest lists `filename`, with its sha256."""
        return {
            name: entry.get("sha256", "")
            for name, manifest in self.manifests().items()
            if name != exclude
            for entry in manifest.get("files", [])
            if entry.get("filename") == filename
        }

    def remove_files(self, filenames: Iterable[str]) -> None:
        """Unlink model files and prune the folders they leave empty (never the models dir itself)."""
        for filename in filenames:
            try:
                target = safe_target(self.models_dir, filename)
            except UnsafePath as exc:
                log.warning("not removing %s", exc)
                continue
            if target.is_symlink() or target.is_file():
                target.unlink()
            prune_empty_dirs(target.parent, self.models_dir)


def prune_empty_dirs(start: Path, stop: Path) -> None:
    current = start
    while current != stop and stop in current.parents:
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


def _link_or_copy(source: Path, dest: Path) -> str:
    try:
        os.link(source, dest)
        return "hardlink"
    except OSError:
        pass
    try:
        os.symlink(os.path.relpath(source, dest.parent), dest)
        return "symlink"
    except OSError:
        shutil.copyfile(source, dest)
        return "copy"
