"""The process manager against real backend subprocesses and real gRPC (a torch-free fake backend)."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
from PIL import Image

from localhost_ai.config import ModelConfig
from localhost_ai.errors import BackendBusy, BackendCrashed, BackendLoadFailed, BackendTimeout, InvalidRequest
from localhost_ai.proto import backend_pb2 as pb
from localhost_ai.runtime.manager import ModelManager
from localhost_ai.settings import Settings

BACKENDS = Path(__file__).resolve().parents[1] / "fixtures" / "backends"


def make_settings(tmp_path: Path, **overrides) -> Settings:
    return Settings(models_dir=tmp_path, backends_dir=BACKENDS, **overrides)


def model(name: str, backend: str = "fake", path: str = "ok", **extra) -> ModelConfig:
    return ModelConfig.model_validate({"name": name, "backend": backend, "parameters": {"model": path}, **extra})


def request(n: int = 1, steps: int = 2, seed: int = 0) -> pb.GenerateImagesRequest:
    return pb.GenerateImagesRequest(positive_prompt="x", width=16, height=16, steps=steps, n=n, seed=seed)


def run(coro):
    return asyncio.run(coro)


def test_generate_streams_progress_and_images(tmp_path):
    async def scenario():
        manager = ModelManager(make_settings(tmp_path))
        try:
            runner = await manager.runner(model("a"))
            progress: list[tuple[int, int]] = []
            images = await runner.generate(request(n=3, steps=3, seed=10), lambda s, t: progress.append((s, t)))
            assert progress == [(1, 3), (2, 3), (3, 3)]
            assert [img.seed for img in images] == [10, 11, 12]
            assert all(img.mime_type == "image/png" and img.width == 16 for img in images)
            with pytest.raises(InvalidRequest):
                await runner.generate(pb.GenerateImagesRequest(positive_prompt="x", width=12, height=16, n=1))
        finally:
            await manager.shutdown()

    run(scenario())


def test_concurrent_first_requests_share_one_load(tmp_path):
    async def scenario():
        manager = ModelManager(make_settings(tmp_path))
        try:
            config = model("a")
            runners = await asyncio.gather(*(manager.runner(config) for _ in range(5)))
            assert len({id(r) for r in runners}) == 1
            assert manager.starts["a"] == 1
        finally:
            await manager.shutdown()

    run(scenario())


def test_early_exit_reports_stderr_tail(tmp_path):
    async def scenario():
        manager = ModelManager(make_settings(tmp_path))
        with pytest.raises(BackendLoadFailed) as info:
            await manager.runner(model("c", backend="crashing"))
        assert "libfoo.so.1" in info.value.message and "code 3" in info.value.message

    run(scenario())


def test_load_timeout_is_504_and_kills_the_child(tmp_path):
    async def scenario():
        manager = ModelManager(make_settings(tmp_path))
        started = time.monotonic()
        with pytest.raises(BackendTimeout):
            await manager.runner(model("h", backend="hanging", load_timeout=1.5))
        assert time.monotonic() - started < 10
        with pytest.raises(BackendTimeout):
            await manager.runner(model("s", path="slow-load", load_timeout=2))
        assert not manager.runners

    run(scenario())


def test_failed_load_reports_message_and_is_retried(tmp_path):
    async def scenario():
        manager = ModelManager(make_settings(tmp_path))
        for _ in range(2):
            with pytest.raises(BackendLoadFailed) as info:
                await manager.runner(model("f", path="fail-load"))
            assert "no model at" in info.value.message
        assert manager.starts["f"] == 2 and not manager.runners

    run(scenario())


def test_unknown_backend_is_a_clear_error(tmp_path):
    async def scenario():
        manager = ModelManager(make_settings(tmp_path))
        with pytest.raises(BackendLoadFailed, match="not installed"):
            await manager.runner(model("x", backend="nope"))

    run(scenario())


def test_queue_is_ordered_and_bounded(tmp_path):
    async def scenario():
        manager = ModelManager(make_settings(tmp_path, max_queue=2))
        try:
            runner = await manager.runner(model("q", options=["step_delay:0.2"]))
            order: list[int] = []

            async def one(seed: int):
                await runner.generate(request(seed=seed, steps=1))
                order.append(seed)

            first = asyncio.create_task(one(1))
            await asyncio.sleep(0.05)
            queued = [asyncio.create_task(one(s)) for s in (2, 3)]
            await asyncio.sleep(0.05)
            with pytest.raises(BackendBusy) as info:
                await runner.generate(request(seed=4))
            assert info.value.status_code == 429 and "Retry-After" in info.value.headers
            await asyncio.gather(first, *queued)
            assert order == [1, 2, 3]
        finally:
            await manager.shutdown()

    run(scenario())


def test_killed_backend_is_502_and_restarted(tmp_path):
    async def scenario():
        manager = ModelManager(make_settings(tmp_path))
        try:
            config = model("k", options=["step_delay:0.5"])
            runner = await manager.runner(config)
            task = asyncio.create_task(runner.generate(request(steps=20)))
            await asyncio.sleep(0.3)
            runner.process.proc.kill()
            with pytest.raises(BackendCrashed):
                await asyncio.wait_for(task, 5)
            again = await manager.runner(config)
            assert again is not runner and manager.starts["k"] == 2
            assert len(await again.generate(request(steps=1))) == 1
        finally:
            await manager.shutdown()

    run(scenario())


def test_keep_alive_and_lru_eviction(tmp_path):
    async def scenario():
        manager = ModelManager(make_settings(tmp_path, max_active_backends=2))
        try:
            a = await manager.runner(model("a", keep_alive="0.5s"))
            await manager.runner(model("b"))
            await a.generate(request(steps=1))  # a is now more recently used than b
            await manager.runner(model("c"))
            assert set(manager.runners) == {"a", "c"}  # b was the least recently used
            await asyncio.sleep(0.7)
            await manager.reap()
            assert set(manager.runners) == {"c"}
            assert a.process.exited
        finally:
            await manager.shutdown()
        assert not manager.runners

    run(scenario())


def test_localai_backend_without_streaming_falls_back_to_unary_calls(tmp_path):
    async def scenario():
        manager = ModelManager(make_settings(tmp_path))
        try:
            runner = await manager.runner(model("l", backend="localai"))
            images = await runner.generate(request(n=2, seed=40))
            assert not runner.client.streaming_supported
            assert [img.seed for img in images] == [40, 41]
            # the fake paints each image's red channel with its seed: each unary call got its own seed
            reds = [Image.open(io.BytesIO(img.data)).getpixel((8, 8))[0] for img in images]
            assert reds == [40, 41]
            msg = request(n=1, seed=7)
            msg.output_format = "jpeg"
            [jpeg] = await runner.generate(msg)
            assert jpeg.mime_type == "image/jpeg" and Image.open(io.BytesIO(jpeg.data)).format == "JPEG"
        finally:
            await manager.shutdown()

    run(scenario())
