"""A Runner: one model's live backend process, its gRPC client, and its bounded request queue."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from localhost_ai.config import ModelConfig
from localhost_ai.errors import APIError, BackendBusy, BackendCrashed
from localhost_ai.proto import backend_pb2 as pb
from localhost_ai.runtime.client import BackendClient, GeneratedImage, ProgressCallback
from localhost_ai.runtime.process import BackendProcess


@dataclass
class Runner:
    config: ModelConfig
    process: BackendProcess
    client: BackendClient
    keep_alive: float
    max_queue: int
    started_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    generate_calls: int = 0
    waiting: int = 0
    busy: bool = False
    _turn: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def alive(self) -> bool:
        return not self.process.exited

    @property
    def in_use(self) -> bool:
        return self.busy or self.waiting > 0

    def idle_for(self) -> float:
        return time.monotonic() - self.last_used

    async def generate(
        self, request: pb.GenerateImagesRequest, on_progress: ProgressCallback | None = None
    ) -> list[GeneratedImage]:
        """Queue behind earlier requests (in order, bounded), then run one backend call."""
        if self._turn.locked() and self.waiting >= self.max_queue:
            raise BackendBusy(
                f"Model '{self.name}' has {self.waiting} requests waiting (max_queue={self.max_queue}); retry later.",
                retry_after=max(1, self.waiting),
            )
        self.waiting += 1
        try:
            await self._turn.acquire()  # asyncio.Lock wakes waiters in FIFO order
        finally:
            self.waiting -= 1
        self.busy = True
        try:
            if not self.alive:
                raise BackendCrashed(self.process.describe_exit())
            self.generate_calls += 1
            try:
                return await self.client.generate(request, on_progress)
            except APIError:
                if not self.alive or isinstance(await self._probe(), Exception):
                    raise BackendCrashed(
                        f"The backend for model '{self.name}' crashed during the request: "
                        + self.process.describe_exit()
                    ) from None
                raise
        finally:
            self.busy = False
            self.last_used = time.monotonic()
            self._turn.release()

    async def _probe(self) -> Exception | None:
        try:
            await self.client.health(timeout=1.0)
            return None
        except Exception as exc:
            return exc

    async def stop(self) -> None:
        if self.alive:
            try:
                await asyncio.wait_for(self.client.free(), 2.0)
            except Exception:
                pass  # Free is a courtesy; SIGTERM follows regardless
        await self.client.close()
        await self.process.stop()

    def info(self) -> dict:
        return {
            "name": self.name,
            "backend": self.config.backend,
            "pid": self.process.pid,
            "port": self.process.port,
            "started_at": int(self.started_at),
            "idle_seconds": round(self.idle_for(), 1),
            "keep_alive": self.keep_alive,
            "busy": self.busy,
            "waiting": self.waiting,
            "generate_calls": self.generate_calls,
        }
