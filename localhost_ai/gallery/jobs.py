"""Install jobs: download a plan's files into the blob store, link them in, and write the config YAML last.

A job runs on a worker thread; the files of one model download concurrently. Blobs already in the store
(same sha256) are not fetched again. Nothing appears in the models dir until every file is verified; the
`<name>.yaml` is written last and atomically, so a model is visible only when complete. On a failure or
cancel, partial downloads, blobs this job fetched and files it linked are removed again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from localhost_ai.config import ConfigError, parse_model_config
from localhost_ai.gallery.download import (
    DownloadCancelled,
    DownloadError,
    RetryPolicy,
    download,
    make_client,
    normalize_sha256,
)
from localhost_ai.gallery.index import GalleryError, GalleryFile, InstallPlan
from localhost_ai.gallery.store import BlobStore, StoreConflict, UnsafePath, safe_target, sha256_of
from localhost_ai.gallery.uris import URIError, resolve

log = logging.getLogger(__name__)

# Failures whose message is already the whole story for the user (no traceback, no type name).
EXPECTED_ERRORS = (GalleryError, DownloadError, UnsafePath, StoreConflict, ConfigError, URIError)


class InstallError(Exception):
    """An install that cannot go ahead (a name or file conflict); the message says what to do."""


def human_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


@dataclass
class FileProgress:
    filename: str
    size: int | None = None
    downloaded: int = 0
    status: str = "pending"  # pending | downloading | cached | done


@dataclass
class Job:
    """One install, as `GET /models/jobs/<uuid>` shows it."""

    source: str
    name: str | None = None
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    processed: bool = False
    message: str = "processing"
    error: str | None = None
    cancelled: bool = False
    warnings: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    files: dict[str, FileProgress] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    _current: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_files(self, names: list[str]) -> None:
        with self._lock:
            self.files = {name: FileProgress(name) for name in names}

    def update(self, filename: str, downloaded: int, size: int | None, status: str = "downloading") -> None:
        with self._lock:
            entry = self.files[filename]
            entry.downloaded, entry.status = downloaded, status
            entry.size = size if size is not None else entry.size
            self._current = filename

    def warn(self, message: str) -> None:
        log.warning("install %s: %s", self.name or self.source, message)
        with self._lock:
            self.warnings.append(message)

    def finish(self, error: str | None = None, cancelled: bool = False) -> None:
        with self._lock:
            self.processed, self.cancelled, self.error = True, cancelled, error
            self.message = "completed" if error is None else f"error: {error}"
            self.finished_at = time.time()
        self.done.set()

    @property
    def progress(self) -> float:
        if self.processed:
            return 100.0 if self.error is None else self._ratio()
        return min(99.0, self._ratio())

    def _ratio(self) -> float:
        entries = list(self.files.values())
        if not entries:
            return 0.0
        sized = [e for e in entries if e.size]
        if not sized:
            return 0.0
        fraction = sum(min(e.downloaded, e.size or 0) for e in sized) / sum(e.size or 0 for e in sized)
        return round(100.0 * fraction * len(sized) / len(entries), 2)

    def snapshot(self) -> dict[str, Any]:
        """LocalAI's job status fields, then ours (name, warnings, per-file bytes)."""
        with self._lock:
            current = self.files.get(self._current) or next(iter(self.files.values()), None)
            return {
                "uuid": self.uuid,
                "processed": self.processed,
                "progress": self.progress,
                "file_name": current.filename if current else "",
                "file_size": human_size(current.size) if current else "",
                "downloaded_size": human_size(current.downloaded) if current else "",
                "message": self.message,
                "error": self.error,
                "cancelled": self.cancelled,
                "name": self.name,
                "source": self.source,
                "warnings": list(self.warnings),
                "files": [vars(entry).copy() for entry in self.files.values()],
                "created_at": self.created_at,
                "finished_at": self.finished_at,
            }


@dataclass(frozen=True)
class _Target:
    item: GalleryFile
    path: Path
    sha256: str  # as the gallery gives it; "" = unverified


class _Acquired:
    """Blobs a job holds (pinned) and the ones it created, for cleanup; shared by its download threads."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.pinned: list[str] = []
        self.created: set[str] = set()

    def pin(self, sha: str, created: bool) -> None:
        self.store.pin(sha)
        with self.lock:
            self.pinned.append(sha)
            if created:
                self.created.add(sha)

    def release(self, garbage: set[str] | None = None) -> None:
        for sha in self.pinned:
            self.store.unpin(sha)
        self.store.collect_garbage(self.created | (garbage or set()))


class Installer:
    """Carries out an InstallPlan for a Job in the models dir."""

    def __init__(
        self,
        models_dir: Path,
        *,
        parallel_files: int = 4,
        retry: RetryPolicy | None = None,
        foreign_model: Callable[[str], bool] = lambda name: False,
    ) -> None:
        self.models_dir = models_dir
        self.store = BlobStore(models_dir)
        self.parallel_files = parallel_files
        self.retry = retry
        self.foreign_model = foreign_model
        self._commit_lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()

    def client(self) -> httpx.Client:
        """One connection pool for every job (creating a client costs ~0.1 s of TLS setup)."""
        with self._client_lock:
            if self._client is None:
                self._client = make_client()
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def run(self, job: Job, plan: InstallPlan) -> None:
        job.name = plan.name
        for message in plan.warnings:
            job.warn(message)
        yaml_path = self.models_dir / f"{plan.name}.yaml"
        config = parse_model_config(plan.config, yaml_path)
        if self.store.read_manifest(plan.name) is None and (yaml_path.exists() or self.foreign_model(plan.name)):
            raise InstallError(
                f"a model named '{plan.name}' already exists and was not installed from the gallery; "
                'delete it first or install under another name ("name": ...)'
            )
        targets = self._check_files(plan)
        job.add_files([item.filename for item in plan.files])
        acquired = _Acquired(self.store)
        try:
            hashes = self._fetch_all(job, targets, acquired)
            if job.stop.is_set():
                raise DownloadCancelled(f"{plan.name}: cancelled")
            with self._commit_lock:  # one commit at a time: two installs may link into the same folder
                old_blobs = self.store.commit_model(
                    plan.name, plan.source, plan.config, {t.item.filename: t.path for t in targets}, hashes
                )
        except BaseException:
            acquired.release()
            raise
        acquired.release(old_blobs)
        if not config.model_path(self.models_dir).exists():
            job.warn(
                f"parameters.model '{config.parameters.model or plan.name}' is not in the models dir; "
                "the backend will have to find it elsewhere (for example a Hugging Face repo id)"
            )

    def _check_files(self, plan: InstallPlan) -> list[_Target]:
        """Refuse unsafe names, bad hashes and files another model installed differently, before any download."""
        targets = []
        for position, item in enumerate(plan.files):
            path = safe_target(self.models_dir, item.filename)
            try:
                sha = normalize_sha256(item.sha256)
            except ValueError as exc:
                raise InstallError(f"files[{position}] ({item.filename}): sha256: {exc}") from None
            resolve(item.uri)  # an unknown scheme fails now, not after the other files downloaded
            for owner, owned in self.store.owners(item.filename, exclude=plan.name).items():
                if owned != sha or not sha:
                    raise InstallError(f"{item.filename}: already installed by model '{owner}' with other content")
            targets.append(_Target(item, path, sha))
        return targets

    def _fetch_all(self, job: Job, targets: list[_Target], acquired: _Acquired) -> dict[str, str]:
        if not targets:
            return {}
        client = self.client()
        with ThreadPoolExecutor(self.parallel_files, thread_name_prefix="download") as pool:
            futures = {pool.submit(self._obtain, job, target, acquired, client): target for target in targets}
            finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [future for future in finished if future.exception() is not None]
            if failed:
                job.stop.set()  # siblings stop at their next chunk; the first failure is the one reported
                wait(pending)
                errors = [f.exception() for f in failed]
                real = [e for e in errors if not isinstance(e, DownloadCancelled)]
                raise (real or errors)[0]  # type: ignore[misc]
            return {futures[future].item.filename: future.result() for future in finished}

    def _obtain(self, job: Job, file: _Target, acquired: _Acquired, client: httpx.Client) -> str:
        """The sha256 of the file's blob, fetching it unless the store (or the target) already has it."""
        item, target, sha, name = file.item, file.path, file.sha256, file.item.filename

        def progress(done: int, total: int | None) -> None:
            job.update(name, done, total)

        if job.stop.is_set():
            raise DownloadCancelled(f"{name}: cancelled")
        resolved = resolve(item.uri)
        if sha:
            with self.store.locked(f"sha256-{sha}"):
                if self.store.has_blob(sha):
                    size = self.store.blob_path(sha).stat().st_size
                    acquired.pin(sha, created=False)
                    job.update(name, size, size, "cached")
                    return sha
                if target.is_file() and not target.is_symlink() and sha256_of(target) == sha:
                    # Shipped with the repo or copied by hand: adopt it rather than fetch it again.
                    self.store.adopt(target, sha)
                    acquired.pin(sha, created=True)
                    size = target.stat().st_size
                    job.update(name, size, size, "cached")
                    return sha
                result = download(
                    resolved, self.store.partial_path(f"sha256-{sha}"), self.store.blob_path(sha), sha256=sha,
                    name=name, client=client, progress=progress, cancel=job.stop, retry=self.retry,
                )  # fmt: skip
                acquired.pin(sha, created=True)
        else:
            key = "url-" + hashlib.sha256(item.uri.encode()).hexdigest()[:32]

            def final(digest: str) -> Path:
                acquired.pin(digest, created=not self.store.has_blob(digest))  # pinned before it is visible
                return self.store.blob_path(digest)

            with self.store.locked(key):
                result = download(
                    resolved, self.store.partial_path(key), final, name=name, client=client,
                    progress=progress, cancel=job.stop, retry=self.retry,
                )  # fmt: skip
            job.warn(f"{name}: no sha256 in the gallery entry; installed UNVERIFIED (sha256 {result.sha256})")
        job.update(name, result.size, result.size, "done")
        return result.sha256


class JobManager:
    """Runs jobs on a small thread pool and remembers the most recent ones for `GET /models/jobs`."""

    def __init__(self, max_jobs: int = 2, keep: int = 256) -> None:
        self._pool = ThreadPoolExecutor(max_jobs, thread_name_prefix="install")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep

    def add(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.uuid] = job
            finished = [key for key, old in self._jobs.items() if old.processed]
            for key in finished[: max(0, len(self._jobs) - self._keep)]:
                del self._jobs[key]
        return job

    def submit(self, job: Job, work: Callable[[Job], None], on_done: Callable[[Job, str | None], None]) -> Job:
        """Run `work(job)` on the pool; `on_done(job, error)` runs before the job reports its end."""
        self.add(job)
        self._pool.submit(self._run, job, work, on_done)
        return job

    def _run(self, job: Job, work: Callable[[Job], None], on_done: Callable[[Job, str | None], None]) -> None:
        error: str | None = None
        try:
            if job.stop.is_set():
                raise DownloadCancelled("cancelled before it started")
            work(job)
        except BaseException as exc:  # every failure must end the job, never the worker
            if job.cancelled:
                error = "cancelled by request"
            elif isinstance(exc, EXPECTED_ERRORS + (InstallError,)):
                error = str(exc)
            else:
                log.exception("install %s failed", job.name or job.source)
                error = f"{type(exc).__name__}: {exc}"
        if error:
            log.error("install %s (job %s) failed: %s", job.name or job.source, job.uuid, error)
        else:
            log.info("installed %s (job %s)", job.name, job.uuid)
        try:
            on_done(job, error)
        except Exception:  # a failing callback must not leave the job unfinished
            log.exception("install %s: after-install step failed", job.name or job.source)
        job.finish(error, cancelled=job.cancelled and error is not None)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None and not job.processed:
            job.cancelled = True
            job.stop.set()
        return job

    def shutdown(self) -> None:
        for job in self.all():
            job.stop.set()
        self._pool.shutdown(wait=True, cancel_futures=False)
