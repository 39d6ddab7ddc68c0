"""Streaming downloads into `<file>.partial`: resumed with HTTP Range, sha256 checked while streaming, renamed last.

A dropped connection resumes from the bytes already on disk (they are never fetched again); a server
that ignores Range is detected (200 instead of 206) and the file restarts from zero. A body shorter than
its Content-Length, a checksum mismatch, an HTTP error or a cancel deletes the partial file and raises.
A partial file left by a killed process is picked up (hashed, then resumed) by the next download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from localhost_ai.gallery.uris import Resolved, resolve

log = logging.getLogger(__name__)

Progress = Callable[[int, "int | None"], None]
"""Called with (bytes on disk, total bytes or None) as a download advances."""

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_LOCAL_CHUNK = 1 << 20


class DownloadError(Exception):
    """A download that failed for good; the message says which file and why."""


class DownloadCancelled(DownloadError):
    """The download was stopped through its cancel event."""


class ChecksumMismatch(DownloadError):
    """The bytes arrived but their sha256 is not the published one."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient failures; give up after `attempts` tries in a row that brought no new bytes."""

    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 5.0
    max_total_attempts: int = 200

    def delay(self, failures: int) -> float:
        return min(self.max_delay, self.base_delay * (2 ** max(0, failures - 1)))


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    sha256: str
    size: int
    resumed_from: int = 0


def normalize_sha256(value: str | None) -> str:
    """'' for no checksum, else 64 lowercase hex digits (a 'sha256:' prefix is accepted); ValueError otherwise."""
    text = (value or "").strip().lower().removeprefix("sha256:")
    if text and not SHA256_PATTERN.match(text):
        raise ValueError(f"'{value}' is not a sha256 (expected 64 hex digits)")
    return text


def make_client(timeout: float = 30.0) -> httpx.Client:
    # Redirects are followed (the Hub answers with 302s to its CDN); the read timeout bounds a stalled server.
    return httpx.Client(follow_redirects=True, timeout=httpx.Timeout(timeout, connect=10.0))


class _Transient(Exception):
    """An attempt that may succeed when retried (dropped connection, short body, 5xx)."""


class _Restart(_Transient):
    """The server cannot continue our partial file (416, or another range than asked): start from zero."""


def download(
    source: str | Resolved,
    partial: Path,
    final: Path | Callable[[str], Path],
    *,
    sha256: str = "",
    name: str | None = None,
    client: httpx.Client | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    retry: RetryPolicy | None = None,
) -> DownloadResult:
    """Fetch `source` into `partial`, verify it, and rename it to `final` (or `final(sha256_hex)`).

    `name` is how messages refer to the file (defaults to the URI). Raises DownloadError (ChecksumMismatch,
    DownloadCancelled) after deleting the partial file.
    """
    resolved = resolve(source) if isinstance(source, str) else source
    label = name or resolved.uri
    try:
        expected = normalize_sha256(sha256)
    except ValueError as exc:
        raise DownloadError(f"{label}: {exc}") from None
    cancel = cancel or threading.Event()
    partial.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    resumed_from = _rehash_existing(partial, hasher)
    if resumed_from:
        log.info("%s: resuming from %d bytes left by an earlier run", label, resumed_from)
    try:
        with open(partial, "ab") as out:
            sink = _HashingWriter(out, hasher)
            try:
                if resolved.is_local:
                    size = _copy_local(resolved, sink, resumed_from, label, progress, cancel)
                else:
                    owns_client = client is None
                    http = client or make_client()
                    try:
                        size = _fetch_http(resolved, sink, resumed_from, label, http, progress, cancel, retry)
                    finally:
                        if owns_client:
                            http.close()
                actual = sink.finish()
            finally:
                sink.close()
        if expected and actual != expected:
            hint = f" (it resumed {resumed_from} bytes left by an earlier run)" if resumed_from else ""
            raise ChecksumMismatch(f"{label}: sha256 mismatch: expected {expected}, got {actual}{hint}")
        target = final(actual) if callable(final) else final
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)
        return DownloadResult(path=target, sha256=actual, size=size, resumed_from=resumed_from)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class _HashingWriter:
    """Writes and hashes chunks on its own thread, so disk writes and sha256 overlap the network reads.

    hashlib and file writes release the GIL, so the reading thread keeps receiving meanwhile.
    """

    def __init__(self, out: BinaryIO, hasher: hashlib._Hash) -> None:
        self.out, self.hasher = out, hasher
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="download-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            try:
                if chunk is None:
                    return
                if self._error is None:
                    self.out.write(chunk)
                    self.hasher.update(chunk)
            except BaseException as exc:  # reported to the reading thread on its next call
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise DownloadError(f"cannot write {self.out.name}: {self._error}") from self._error

    def write(self, chunk: bytes) -> None:
        self._raise()
        self._queue.put(chunk)

    def drain(self) -> None:
        self._queue.join()
        self._raise()

    def restart(self) -> None:
        """Drop everything written so far (the server cannot continue it)."""
        self.drain()
        self.out.seek(0)
        self.out.truncate(0)
        self.hasher = hashlib.sha256()

    def finish(self) -> str:
        """Wait for the writes, make them durable, and return the sha256 of the whole file."""
        self.drain()
        self.out.flush()
        os.fsync(self.out.fileno())
        return self.hasher.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def _rehash_existing(partial: Path, hasher: hashlib._Hash) -> int:
    if not partial.is_file():
        return 0
    size = 0
    with open(partial, "rb") as existing:
        while chunk := existing.read(_LOCAL_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return size


def _copy_local(
    resolved: Resolved,
    sink: _HashingWriter,
    offset: int,
    label: str,
    progress: Progress | None,
    cancel: threading.Event,
) -> int:
    path = resolved.local_path
    assert path is not None
    try:
        total = path.stat().st_size
        source = open(path, "rb")  # closed by the with-block below
    except OSError as exc:
        raise DownloadError(f"{label}: cannot read {path}: {exc.strerror or exc}") from None
    with source:
        if offset > total:
            sink.restart()
            offset = 0
        source.seek(offset)
        done = offset
        while chunk := source.read(_LOCAL_CHUNK):
            if cancel.is_set():
                raise DownloadCancelled(f"{label}: cancelled")
            sink.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return done


def _fetch_http(
    resolved: Resolved,
    sink: _HashingWriter,
    offset: int,
    label: str,
    client: httpx.Client,
    progress: Progress | None,
    cancel: threading.Event,
    retry: RetryPolicy | None,
) -> int:
    policy = retry or RetryPolicy()
    failures_in_a_row = 0
    attempts = 0
    total: int | None = None
    while True:
        if cancel.is_set():
            raise DownloadCancelled(f"{label}: cancelled")
        attempts += 1
        start = offset
        headers = {"Accept-Encoding": "identity", **resolved.headers}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with client.stream("GET", resolved.url, headers=headers) as response:
                body_start, total, chunks = _open_body(response, offset, label)
                if body_start != offset:
                    # The server ignored Range and sent the whole file (200): keep this body, drop ours.
                    log.info("%s: server ignored Range at byte %d; restarting from 0", label, offset)
                    sink.restart()
                    offset = start = 0
                _check_disk_space(sink.out, total, offset, label)
                for chunk in chunks:
                    sink.write(chunk)
                    offset += len(chunk)
                    if progress:
                        progress(offset, total)
                    if cancel.is_set():
                        raise DownloadCancelled(f"{label}: cancelled")
            if total is not None and offset < total:
                raise _Transient(f"the body ended after {offset} of {total} bytes")
            if total is not None and offset > total:
                raise DownloadError(f"{label}: the server sent {offset} bytes, more than the {total} it announced")
            return offset
        except (httpx.TransportError, _Transient) as exc:
            if isinstance(exc, _Restart):
                sink.restart()
                offset = 0
            failures_in_a_row = 0 if offset > start else failures_in_a_row + 1
            if failures_in_a_row >= policy.attempts or attempts >= policy.max_total_attempts:
                raise DownloadError(
                    _give_up_message(label, resolved.url, offset, total, failures_in_a_row, exc)
                ) from None
            delay = policy.delay(failures_in_a_row)
            log.warning("%s: %s; retrying from byte %d in %.2fs", label, _describe(exc), offset, delay)
            if cancel.wait(delay):
                raise DownloadCancelled(f"{label}: cancelled") from None


def _open_body(response: httpx.Response, offset: int, label: str) -> tuple[int, int | None, Iterator[bytes]]:
    """(byte offset the body starts at, total file size or None, chunks); raises for HTTP errors."""
    status = response.status_code
    if status == 416 and offset:
        # Our partial is longer than the file (it changed upstream, or a stale partial): start over.
        raise _Restart(f"HTTP 416: the server cannot resume at byte {offset}")
    if status in _RETRY_STATUSES:
        raise _Transient(f"HTTP {status} {response.reason_phrase}")
    if status >= 400:
        raise DownloadError(_http_error_message(label, response))
    encoded = response.headers.get("content-encoding", "identity").lower() not in ("identity", "")
    # Despite Accept-Encoding: identity a server may compress; then sizes and ranges are not file bytes.
    chunks = response.iter_bytes() if encoded else response.iter_raw()
    length = None if encoded else _int(response.headers.get("content-length"))
    if status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", "").strip())
        if not match or int(match.group(1)) != offset:
            raise _Restart(f"HTTP 206 with Content-Range {response.headers.get('content-range')!r}, not byte {offset}")
        total = match.group(3)
        return offset, (int(total) if total != "*" else None), chunks
    return 0, length, chunks


def _check_disk_space(out: BinaryIO, total: int | None, offset: int, label: str) -> None:
    if total is None:
        return
    needed = total - offset
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(out.name))).free
    if needed > free:
        raise DownloadError(f"{label}: not enough disk space: {needed} more bytes needed, {free} free")


def _http_error_message(label: str, response: httpx.Response) -> str:
    message = f"{label}: HTTP {response.status_code} {response.reason_phrase} for {response.request.url}"
    if response.status_code in (401, 403):
        message += " (the repository may be gated or private: accept its terms on the Hub and set HF_TOKEN)"
    return message


def _give_up_message(label: str, url: str, offset: int, total: int | None, tries: int, exc: BaseException) -> str:
    if total is not None and offset < total:
        return (
            f"{label}: download truncated: received {offset} of {total} bytes; the server closed the "
            f"connection {tries} times in a row without sending more ({_describe(exc)})"
        )
    return f"{label}: download failed after {tries} attempts in a row from {url}: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, _Transient) else f"{type(exc).__name__}: {text}"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
