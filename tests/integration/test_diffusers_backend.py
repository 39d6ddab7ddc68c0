"""The real diffusers backend process over real gRPC, with a tiny random-weight SD pipeline."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("torch")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from localhost_ai.proto import backend_pb2 as pb  # noqa: E402
from localhost_ai.proto import backend_pb2_grpc as pb_grpc  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BACKEND = ROOT / "backends" / "diffusers" / "backend.py"
PORT_MARKER = "LOCALHOST_AI_BACKEND_PORT"
START_TIMEOUT_S = 120.0
RPC_TIMEOUT_S = 60.0


class Backend:
    """A running backend subprocess and a stub, remembering which model options are loaded."""

    def __init__(self, proc: subprocess.Popen, stub: pb_grpc.BackendStub, stderr_path: Path) -> None:
        self.proc, self.stub, self.stderr_path = proc, stub, stderr_path
        self.loaded: pb.ModelOptions | None = None

    def load(self, model: Path | str, **fields) -> pb.Result:
        # One thread: the test machine's cores are shared, and spinning worker threads slow it down.
        options = pb.ModelOptions(Model=str(model), ModelPath=str(model), Threads=1, Device="cpu", **fields)
        if self.loaded == options:
            return pb.Result(success=True, message="already loaded")
        result = self.stub.LoadModel(options, timeout=RPC_TIMEOUT_S)
        self.loaded = options if result.success else None
        return result

    def generate(self, **fields) -> tuple[list[pb.Progress], list[pb.EncodedImage]]:
        fields = {"positive_prompt": "a red circle", "width": 64, "height": 64, "steps": 3, **fields}
        progress: list[pb.Progress] = []
        images: list[pb.EncodedImage] = []
        for event in self.stub.GenerateImages(pb.GenerateImagesRequest(**fields), timeout=RPC_TIMEOUT_S):
            if event.HasField("progress"):
                progress.append(event.progress)
            else:
                images.append(event.image)
        return progress, images

    def stderr_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]


def _read_port(proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break  # stdout closed: the process died
            if line.startswith(PORT_MARKER):
                return int(line.split()[1])
        if proc.poll() is not None:
            break
    raise RuntimeError("backend did not report its port")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    stderr_path = tmp_path_factory.mktemp("backend-log") / "stderr.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(BACKEND), "--addr", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=str(ROOT),
        )
    try:
        try:
            port = _read_port(proc)
        except RuntimeError:
            pytest.fail(f"backend did not start:\n{stderr_path.read_text(errors='replace')[-4000:]}")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        yield Backend(proc, pb_grpc.BackendStub(channel), stderr_path)
        channel.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def sd(backend: Backend, tiny_pipeline_dir: Path) -> Backend:
    """The backend with the tiny pipeline loaded under its own (DDIM) scheduler."""
    result = backend.load(tiny_pipeline_dir)
    assert result.success, result.message + "\n" + backend.stderr_tail()
    return backend


def _pixels(image: pb.EncodedImage) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image.data)).convert("RGB"), dtype=np.int16)


def test_health(backend: Backend) -> None:
    assert backend.stub.Health(pb.HealthMessage(), timeout=10).message == b"OK"


def test_load_missing_path_fails_clearly(backend: Backend, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = backend.load(missing)
    assert not result.success
    assert "not found" in result.message and str(missing) in result.message


def test_load_unknown_scheduler_lists_names(backend: Backend, tiny_pipeline_dir: Path) -> None:
    result = backend.load(tiny_pipeline_dir, SchedulerType="nope")
    assert not result.success
    assert "euler_a" in result.message and "dpmpp_2m" in result.message


def test_batch_streams_progress_then_distinct_images(sd: Backend) -> None:
    progress, images = sd.generate(n=3, seed=42, width=64, height=48)
    assert [(p.step, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert [(i.index, i.seed, i.mime_type) for i in images] == [(k, 42 + k, "image/png") for k in range(3)]
    for image in images:
        opened = Image.open(io.BytesIO(image.data))
        assert opened.format == "PNG"
        assert opened.size == (64, 48) == (image.width, image.height)
    assert len({image.data for image in images}) == 3


def test_seed_reproducibility(sd: Backend) -> None:
    _, first = sd.generate(seed=7)
    _, again = sd.generate(seed=7)
    _, other = sd.generate(seed=8)
    assert first[0].data == again[0].data
    assert first[0].data != other[0].data


def test_batch_image_i_matches_single_image_with_seed_plus_i(sd: Backend) -> None:
    _, batch = sd.generate(n=3, seed=100)
    for i in range(3):
        _, single = sd.generate(n=1, seed=100 + i)
        # Batched and single convolutions may round differently: allow one level of 255.
        assert np.abs(_pixels(batch[i]) - _pixels(single[0])).max() <= 2


def test_jpeg_output(sd: Backend) -> None:
    _, images = sd.generate(output_format="jpeg", output_compression=80)
    assert images[0].data[:3] == b"\xff\xd8\xff"
    assert images[0].mime_type == "image/jpeg"
    assert Image.open(io.BytesIO(images[0].data)).format == "JPEG"


def test_size_not_multiple_of_vae_factor_is_invalid_argument(sd: Backend) -> None:
    with pytest.raises(grpc.RpcError) as info:
        sd.generate(width=30, height=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "multiple of 8" in info.value.details()


def test_unknown_option_is_invalid_argument(sd: Backend) -> None:
    with pytest.raises(grpc.RpcError) as info:
        sd.generate(options={"no_such_kwarg": "1"})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no_such_kwarg" in info.value.details()


def test_health_and_status_answer_during_generation(sd: Backend) -> None:
    steps = 200  # far more than the test waits for: the call is cancelled once Health answered
    call = sd.stub.GenerateImages(
        pb.GenerateImagesRequest(positive_prompt="x", width=64, height=64, steps=steps, n=1), timeout=RPC_TIMEOUT_S
    )
    seen: list[int] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        health = status = None
        for event in call:
            seen.append(event.progress.step)
            if len(seen) == 1:
                health = pool.submit(sd.stub.Health, pb.HealthMessage(), timeout=10)
                status = pool.submit(sd.stub.Status, pb.HealthMessage(), timeout=10)
            if health is not None and health.done() and status.done():
                break
        assert health.result().message == b"OK"
        assert status.result().state == pb.StatusResponse.BUSY
        assert len(seen) < steps
        call.cancel()
    # The cancelled batch stops at its next step and the backend serves the next request.
    progress, images = sd.generate(steps=2)
    assert len(images) == 1 and progress[-1].step == 2


def test_localai_unary_generate_image_writes_png(sd: Backend, tmp_path: Path) -> None:
    dst = tmp_path / "out.png"
    request = pb.GenerateImageRequest(positive_prompt="a cat", width=64, height=32, step=2, seed=3, dst=str(dst))
    result = sd.stub.GenerateImage(request, timeout=RPC_TIMEOUT_S)
    assert result.success
    with Image.open(dst) as image:
        assert image.format == "PNG" and image.size == (64, 32)


def test_img2img_from_src_image(sd: Backend) -> None:
    _, source = sd.generate(seed=5, width=32, height=32)
    progress, images = sd.generate(src_image=source[0].data, strength=0.5, steps=4, n=2, width=64, height=64)
    assert progress[-1].total == 2  # img2img runs steps * strength denoising steps
    assert [(i.width, i.height) for i in images] == [(64, 64)] * 2


@pytest.mark.parametrize("scheduler", ["euler_a", "k_dpmpp_2m"])
def test_localai_scheduler_names(backend: Backend, tiny_pipeline_dir: Path, scheduler: str) -> None:
    result = backend.load(tiny_pipeline_dir, SchedulerType=scheduler, CFGScale=3.0)
    assert result.success, result.message
    progress, images = backend.generate(n=2, seed=11, steps=3)
    assert progress[-1].step == progress[-1].total and len(images) == 2
    # Ancestral samplers draw noise every step: still reproducible, from the per-image generators.
    _, again = backend.generate(n=1, seed=12, steps=3)
    assert np.abs(_pixels(images[1]) - _pixels(again[0])).max() <= 2


def test_free_then_generate_needs_a_load(backend: Backend, tiny_pipeline_dir: Path) -> None:
    backend.load(tiny_pipeline_dir)
    assert backend.stub.Free(pb.HealthMessage(), timeout=30).success
    backend.loaded = None
    with pytest.raises(grpc.RpcError) as info:
        backend.generate()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_tiny_pipeline_files_are_deterministic(tmp_path: Path) -> None:
    """Same seed, byte-identical files (the tokenizer trainer numbers tokens in hash order)."""
    from tests.fixtures.tiny_pipeline import build_tiny_pipeline

    first, second = build_tiny_pipeline(tmp_path / "a", seed=1), build_tiny_pipeline(tmp_path / "b", seed=1)
    files = sorted(f.relative_to(first) for f in first.rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(second) for f in second.rglob("*") if f.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


def test_backend_exits_with_its_parent(tmp_path: Path) -> None:
    """Started under a short-lived parent, the backend must not outlive it."""
    script = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, {str(BACKEND)!r}], stdout=subprocess.PIPE, text=True)\n"
        "print(p.pid, p.stdout.readline().split()[1], flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=START_TIMEOUT_S)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    alive = _alive(pid)
    if alive:
        os.kill(pid, 9)
    assert not alive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
