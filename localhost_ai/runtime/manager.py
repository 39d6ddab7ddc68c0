"""The scheduler: one backend per loaded model, loaded lazily, shared by concurrent first requests,
unloaded after keep-alive, evicted least-recently-used past max_active_backends, restarted when dead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from localhost_ai.config import ModelConfig
from localhost_ai.errors import BackendLoadFailed, BackendTimeout
from localhost_ai.proto import backend_pb2 as pb
from localhost_ai.runtime.client import BackendClient
from localhost_ai.runtime.process import BackendProcess
from localhost_ai.runtime.runner import Runner
from localhost_ai.settings import Settings

log = logging.getLogger(__name__)


def backend_command(settings: Settings, config: ModelConfig) -> list[str]:
    """`<python> <backends_dir>/<backend>/backend.py --addr 127.0.0.1:0 --parent-pid <pid>`."""
    script = Path(settings.backends_dir) / config.backend / "backend.py"
    if not script.is_file():
        known = sorted(p.name for p in Path(settings.backends_dir).iterdir() if (p / "backend.py").is_file())
        raise BackendLoadFailed(
            f"Model '{config.name}' asks for backend '{config.backend}', which is not installed "
            f"(available: {', '.join(known) or 'none'})."
        )
    return [settings.backend_python, str(script), "--addr", "127.0.0.1:0", "--parent-pid", str(os.getpid())]


def load_options(settings: Settings, config: ModelConfig) -> pb.ModelOptions:
    """The LoadModel message for a model YAML, with the weights path made absolute."""
    path = config.model_path(Path(settings.models_dir).resolve())
    return pb.ModelOptions(
        Model=str(path),
        ModelPath=str(path),
        ModelFile=str(path) if path.is_file() else "",
        PipelineType=config.diffusers.pipeline_type,
        SchedulerType=config.diffusers.scheduler_type,
        CFGScale=config.cfg_scale or 0.0,
        F16Memory=config.f16,
        CUDA=config.cuda or bool(config.diffusers.cuda),
        LowVRAM=config.low_vram,
        Threads=config.threads,
        CLIPSkip=config.diffusers.clip_skip,
        IMG2IMG=config.diffusers.img2img,
        Options=config.options,
        Device="cuda" if config.cuda and config.device == "auto" else config.device,
    )


class ModelManager:
    """Owns every Runner. `runner(config)` returns a live, loaded backend for the model."""

    def __init__(self, settings: Settings, command_for: Callable[[Settings, ModelConfig], list[str]] = backend_command):
        self.settings = settings
        self.command_for = command_for
        self.runners: dict[str, Runner] = {}
        self.starts: dict[str, int] = {}
        self._loading: dict[str, asyncio.Task[Runner]] = {}
        self._reaper: asyncio.Task | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start_reaper(self, interval: float = 1.0) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(interval))

    async def shutdown(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*(self.unload(name) for name in list(self.runners)), return_exceptions=True)

    def kill_all_now(self) -> None:
        for runner in self.runners.values():
            runner.process.kill_now()

    # --- loading ------------------------------------------------------------------------------
    async def runner(self, config: ModelConfig) -> Runner:
        current = self.runners.get(config.name)
        if current is not None and current.alive and current.config == config:
            return current
        if current is not None:
            reason = "died" if not current.alive else "changed its config"
            log.warning("model %s %s; restarting its backend", config.name, reason)
            await self.unload(config.name)
        task = self._loading.get(config.name)
        if task is None:
            # One load per model however many requests arrive at once; they all await this task.
            task = asyncio.create_task(self._load(config))
            self._loading[config.name] = task
            task.add_done_callback(lambda _t, name=config.name: self._loading.pop(name, None))
        return await asyncio.shield(task)

    async def _load(self, config: ModelConfig) -> Runner:
        await self._make_room(config.name)
        timeout = config.load_timeout or self.settings.load_timeout
        process = BackendProcess(config.name, self.command_for(self.settings, config))
        self.starts[config.name] = self.starts.get(config.name, 0) + 1
        log.info("starting %s backend for model %s", config.backend, config.name)
        client: BackendClient | None = None
        try:
            async with asyncio.timeout(timeout):
                port = await process.start(timeout)
                client = BackendClient(config.name, port)
                await process.wait_ready(client.health, timeout)
                await client.load(load_options(self.settings, config), timeout=timeout)
        except TimeoutError:
            await self._abandon(process, client)
            raise BackendTimeout(
                f"Model '{config.name}' did not load within {timeout:.0f}s. Last backend output:\n"
                + ("\n".join(process.stderr_tail) or "(none)")
            ) from None
        except BaseException:
            await self._abandon(process, client)
            raise
        keep_alive = config.keep_alive if config.keep_alive is not None else self.settings.keep_alive
        runner = Runner(config, process, client, keep_alive=keep_alive, max_queue=self.settings.max_queue)
        self.runners[config.name] = runner
        log.info("model %s loaded (pid %s, port %s)", config.name, process.pid, port)
        return runner

    @staticmethod
    async def _abandon(process: BackendProcess, client: BackendClient | None) -> None:
        if client is not None:
            await client.close()
        await process.stop(grace=2.0)

    async def _make_room(self, incoming: str) -> None:
        limit = self.settings.max_active_backends
        if limit <= 0:
            return
        while len([n for n in self.runners if n != incoming]) >= limit:
            idle = [r for r in self.runners.values() if not r.in_use] or list(self.runners.values())
            victim = min(idle, key=lambda r: r.last_used)
            log.info("evicting model %s (max_active_backends=%d)", victim.name, limit)
            await self.unload(victim.name)

    # --- unloading ----------------------------------------------------------------------------
    async def unload(self, name: str) -> bool:
        runner = self.runners.pop(name, None)
        if runner is None:
            return False
        log.info("unloading model %s", name)
        await runner.stop()
        return True

    async def _reap_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap()
            except Exception:
                log.exception("reaper failed")

    async def reap(self) -> None:
        """Unload idle models past their keep-alive, and forget dead backends."""
        for runner in list(self.runners.values()):
            if not runner.alive and not runner.in_use:
                log.warning("backend of model %s is gone: %s", runner.name, runner.process.describe_exit())
                await self.unload(runner.name)
            elif runner.keep_alive >= 0 and not runner.in_use and runner.idle_for() > runner.keep_alive:
                log.info("model %s idle for %.0fs; unloading", runner.name, runner.idle_for())
                await self.unload(runner.name)

    def ps(self) -> list[dict]:
        return [{**r.info(), "starts": self.starts.get(r.name, 0)} for r in self.runners.values()]
