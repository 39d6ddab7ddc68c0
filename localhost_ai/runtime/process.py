"""One backend subprocess: spawn, learn its port, wait for health, tail stderr, stop (SIGTERM then SIGKILL).

The child binds port 0 and prints `LOCALHOST_AI_BACKEND_PORT <port>`, so there is no window in
which another process can take a port we picked.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from localhost_ai.errors import BackendLoadFailed, BackendTimeout

log = logging.getLogger(__name__)

PORT_MARKER = "LOCALHOST_AI_BACKEND_PORT"  # the same marker as localhost_ai.sdk.serve prints
STDERR_TAIL_LINES = 30


class BackendProcess:
    """A spawned backend; `start()` returns once it listens, `stop()` is idempotent."""

    def __init__(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._pumps: list[asyncio.Task] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def exited(self) -> bool:
        return self.proc is None or self.proc.returncode is not None

    def describe_exit(self) -> str:
        code = self.proc.returncode if self.proc else None
        how = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
        tail = "\n".join(self.stderr_tail) or "(no output)"
        return f"backend '{self.name}' exited with {how}. Last output:\n{tail}"

    async def start(self, timeout: float) -> int:
        """Spawn and wait for the port line, racing process exit and `timeout`."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            # Own process group: a Ctrl-C in the terminal reaches the host, which stops us cleanly.
            start_new_session=True,
        )
        self._pumps.append(asyncio.create_task(self._pump_stderr()))
        try:
            self.port = await asyncio.wait_for(self._read_port(), timeout)
        except TimeoutError:
            await self.stop()
            raise BackendTimeout(f"backend '{self.name}' did not start listening within {timeout:.0f}s") from None
        self._pumps.append(asyncio.create_task(self._drain_stdout()))
        return self.port

    async def _read_port(self) -> int:
        assert self.proc and self.proc.stdout
        while True:
            line = await self.proc.stdout.readline()
            if not line:  # EOF: the child died before it listened
                await self.proc.wait()
                await asyncio.sleep(0.05)  # let the stderr pump catch the last lines
                raise BackendLoadFailed(self.describe_exit())
            text = line.decode(errors="replace").strip()
            if text.startswith(PORT_MARKER):
                return int(text.split()[1])
            log.debug("[%s stdout] %s", self.name, text)

    async def _pump_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        async for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip()
            self.stderr_tail.append(text)
            log.debug("[%s] %s", self.name, text)

    async def _drain_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        async for line in self.proc.stdout:
            log.debug("[%s stdout] %s", self.name, line.decode(errors="replace").rstrip())

    async def wait_ready(self, check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.1) -> None:
        """Poll `check` (the Health call) until it passes, racing process exit and `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.exited:
                raise BackendLoadFailed(self.describe_exit())
            try:
                if await check():
                    return
            except Exception as exc:  # not listening yet
                log.debug("health check of %s: %s", self.name, exc)
            if loop.time() > deadline:
                await self.stop()
                raise BackendTimeout(f"backend '{self.name}' did not become healthy within {timeout:.0f}s")
            await asyncio.sleep(interval)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), grace)
            except ProcessLookupError:
                pass
            except TimeoutError:
                log.warning("backend %s ignored SIGTERM for %.0fs; killing it", self.name, grace)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await proc.wait()
        for task in self._pumps:
            task.cancel()
        self._pumps.clear()

    def kill_now(self) -> None:
        """Synchronous last resort for interpreter exit."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
