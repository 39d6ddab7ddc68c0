"""Installing models from a gallery served by a real loopback HTTP server: resume, checksums, cancel, cleanup."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from localhost_ai.api.errors import install_error_handlers  # noqa: E402
from localhost_ai.api.gallery_routes import router  # noqa: E402
from localhost_ai.config import load_model_config  # noqa: E402
from localhost_ai.gallery.download import RetryPolicy  # noqa: E402
from localhost_ai.gallery.jobs import Job  # noqa: E402
from localhost_ai.gallery.preload import run_preloads  # noqa: E402
from localhost_ai.serving.installs import ModelInstaller  # noqa: E402
from localhost_ai.serving.registry import ModelRegistry  # noqa: E402
from localhost_ai.settings import Settings  # noqa: E402
from tests.fixtures.http_server import FileServer, gallery_entry_for_folder  # noqa: E402

WEIGHTS = "tiny/unet/diffusion_pytorch_model.safetensors"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A small diffusers-like folder (a few KB) to serve."""
    root = tmp_path / "served"
    files = {
        "tiny/model_index.json": json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "x"]}),
        "tiny/scheduler/scheduler_config.json": json.dumps({"_class_name": "DDIMScheduler"}),
        "tiny/unet/config.json": json.dumps({"sample_size": 8}),
        "tiny/vae/config.json": json.dumps({"latent_channels": 4}),
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    (root / WEIGHTS).write_bytes(os.urandom(48_000))
    (root / "tiny/vae/diffusion_pytorch_model.safetensors").write_bytes(os.urandom(8_000))
    return root


@pytest.fixture
def server(served: Path) -> Iterator[FileServer]:
    with FileServer(served) as running:
        yield running


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


def _write_index(tmp_path: Path, entries: list[dict]) -> Path:
    index = tmp_path / "gallery" / "index.yaml"
    index.parent.mkdir(exist_ok=True)
    index.write_text(yaml.safe_dump(entries, sort_keys=False))
    return index


@pytest.fixture
def make_installer(tmp_path: Path, models_dir: Path) -> Iterator:
    made: list[ModelInstaller] = []

    def make(entries: list[dict], **settings: object) -> ModelInstaller:
        index = _write_index(tmp_path, entries)
        config = Settings(models_dir=models_dir, galleries=[f"test={index}"], **settings)
        installer = ModelInstaller(
            config, ModelRegistry(models_dir), retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
        )
        made.append(installer)
        return installer

    yield make
    for installer in made:
        installer.close()


def _client(installer: ModelInstaller) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.installer = installer
    return TestClient(app)


def _wait(installer: ModelInstaller, job: Job) -> dict:
    assert installer.wait(job, timeout=15).processed, "the job did not finish in time"
    return job.snapshot()


def _leftovers(models_dir: Path) -> list[str]:
    """Every file in the models dir (folders left empty do not count)."""
    return sorted(p.relative_to(models_dir).as_posix() for p in models_dir.rglob("*") if not p.is_dir())


def test_apply_by_id_over_the_api(server: FileServer, make_installer, models_dir: Path) -> None:
    installer = make_installer([gallery_entry_for_folder(server, "tiny", "tiny")])
    client = _client(installer)
    listed = client.get("/models/available").json()
    assert [(m["id"], m["installed"]) for m in listed] == [("test@tiny", False)]

    answer = client.post("/models/apply", json={"id": "test@tiny"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"].endswith(f"/models/jobs/{body['uuid']}")
    seen = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status = client.get(f"/models/jobs/{body['uuid']}").json()
        seen.append(status["progress"])
        if status["processed"]:
            break
        time.sleep(0.02)
    assert status["message"] == "completed" and status["error"] is None, status
    assert status["progress"] == 100 and seen == sorted(seen)
    assert status["warnings"] == []
    assert installer.registry.names() == ["tiny"]
    config = load_model_config(models_dir / "tiny.yaml")
    assert (config.backend, config.parameters.model, config.step) == ("diffusers", "tiny", 2)
    assert (models_dir / WEIGHTS).read_bytes() == (server.root / WEIGHTS).read_bytes()
    assert client.get("/models/jobs").json()[body["uuid"]]["processed"] is True
    assert client.get("/models/available").json()[0]["installed"] is True


def test_apply_by_url_with_name_and_overrides(server: FileServer, make_installer, models_dir: Path) -> None:
    definition = gallery_entry_for_folder(server, "tiny", "tiny")
    (server.root / "defs").mkdir()
    (server.root / "defs/tiny.yaml").write_text(yaml.safe_dump(definition))
    installer = make_installer([])
    job = installer.apply({"url": server.url("defs/tiny.yaml"), "name": "tiny-copy", "overrides": {"step": 4}})
    status = _wait(installer, job)
    assert status["message"] == "completed", status
    config = load_model_config(models_dir / "tiny-copy.yaml")
    assert (config.name, config.step, config.parameters.model) == ("tiny-copy", 4, "tiny")
    assert "tiny-copy" in installer.registry.names()


def test_resume_after_dropped_connection_fetches_no_byte_twice(server: FileServer, make_installer) -> None:
    installer = make_installer([gallery_entry_for_folder(server, "tiny", "tiny")])
    size = (server.root / WEIGHTS).stat().st_size
    server.drop_after(WEIGHTS, 20_000)
    status = _wait(installer, installer.apply({"id": "tiny"}))
    assert status["message"] == "completed", status
    first, second = server.requests_for(WEIGHTS)
    assert (first.range, first.sent) == (None, 20_000)
    assert (second.range, second.status, second.start) == ("bytes=20000-", 206, 20_000)
    assert first.sent + second.sent == size


def test_server_ignoring_range_restarts_from_zero(server: FileServer, make_installer, models_dir: Path) -> None:
    installer = make_installer([gallery_entry_for_folder(server, "tiny", "tiny")])
    server.ignore_range(WEIGHTS)
    server.drop_after(WEIGHTS, 10_000)
    status = _wait(installer, installer.apply({"id": "tiny"}))
    assert status["message"] == "completed", status
    assert [r.status for r in server.requests_for(WEIGHTS)] == [200, 200]
    assert (models_dir / WEIGHTS).read_bytes() == (server.root / WEIGHTS).read_bytes()


def _symlinked(models_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (models_dir / "linked").symlink_to(outside, target_is_directory=True)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("corrupt", "sha256 mismatch: expected {good}, got {bad}"),
        ("not_found", "HTTP 404 Not Found for http://"),
        ("truncate", "download truncated: received 30000 of 48000 bytes"),
        ("../evil", "'..' would leave the models dir"),
        ("/abs/evil.bin", "absolute paths are not allowed"),
        ("linked/evil.bin", "'linked' is a symlink; refusing to follow it"),
    ],
)
def test_failures_are_clear_and_leave_nothing(
    fault: str, expected: str, server: FileServer, make_installer, models_dir: Path, tmp_path: Path
) -> None:
    entry = gallery_entry_for_folder(server, "tiny", "tiny")
    weights = next(f for f in entry["files"] if f["filename"] == WEIGHTS)
    good = weights["sha256"]
    bad = _sha(bytes(b ^ 0x5A for b in (server.root / WEIGHTS).read_bytes()))
    if fault == "corrupt":
        server.corrupt(WEIGHTS)
    elif fault == "not_found":
        server.not_found(WEIGHTS)
    elif fault == "truncate":
        server.truncate(WEIGHTS, 30_000)
    else:
        if fault.startswith("linked"):
            _symlinked(models_dir, tmp_path)
        weights["filename"] = fault
    installer = make_installer([entry])
    status = _wait(installer, installer.apply({"id": "tiny"}))
    assert status["message"].startswith("error: ") and status["error"], status
    assert expected.format(good=good, bad=bad) in status["error"]
    assert _leftovers(models_dir) == []
    assert installer.registry.names() == []
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside" / "evil.bin").exists()


def test_cancel_stops_a_running_download_and_cleans_up(server: FileServer, make_installer, models_dir: Path) -> None:
    installer = make_installer([gallery_entry_for_folder(server, "tiny", "tiny")])
    client = _client(installer)
    server.slow(WEIGHTS, chunk=1000, delay=0.02)  # ~1 s for the whole file
    job = installer.apply({"id": "tiny"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (WEIGHTS in job.files and job.files[WEIGHTS].downloaded):
        time.sleep(0.01)
    assert client.post("/models/apply", json={"id": "tiny"}).status_code == 409  # one install per name
    answer = client.post(f"/models/jobs/{job.uuid}/cancel")
    assert answer.status_code == 200 and answer.json()["cancelled"] is True
    status = _wait(installer, job)
    assert status["cancelled"] is True and status["message"] == "error: cancelled by request", status
    assert server.requests_for(WEIGHTS)[0].sent < 48_000
    assert _leftovers(models_dir) == []


def test_shared_file_is_stored_once_and_survives_deleting_one_model(
    served: Path, server: FileServer, make_installer, models_dir: Path
) -> None:
    (served / "other").mkdir()
    (served / "other/weights.bin").write_bytes((served / WEIGHTS).read_bytes())
    first = gallery_entry_for_folder(server, "tiny", "tiny")
    second = gallery_entry_for_folder(server, "other", "other", config="parameters:\n  model: other\n")
    installer = make_installer([first, second])
    assert _wait(installer, installer.apply({"id": "tiny"}))["message"] == "completed"
    assert _wait(installer, installer.apply({"id": "other"}))["message"] == "completed"
    assert server.requests_for("other/weights.bin") == []  # its blob was already in the store
    shared_a, shared_b = models_dir / WEIGHTS, models_dir / "other/weights.bin"
    assert os.stat(shared_a).st_ino == os.stat(shared_b).st_ino
    digest = _sha(shared_a.read_bytes())
    assert [p.name for p in (models_dir / ".blobs").iterdir()].count(f"sha256-{digest}") == 1

    client = _client(installer)
    assert client.post("/models/delete/tiny").json()["removed_files"] == 6
    assert not (models_dir / "tiny").exists() and not (models_dir / "tiny.yaml").exists()
    assert _sha(shared_b.read_bytes()) == digest
    assert installer.registry.names() == ["other"]
    client.post("/models/delete/other")
    assert _leftovers(models_dir) == []
    assert client.post("/models/delete/other").status_code == 404


def test_run_preloads_reports_every_failure(server: FileServer, make_installer, tmp_path: Path) -> None:
    broken = gallery_entry_for_folder(server, "tiny", "broken")
    server.not_found("missing.bin")
    broken["files"][0].update(uri=server.url("missing.bin"), sha256="")  # no blob can stand in for it
    preload_file = tmp_path / "preload.yaml"
    preload_file.write_text(yaml.safe_dump([{"id": "test@broken"}]))
    installer = make_installer(
        [gallery_entry_for_folder(server, "tiny", "tiny"), broken],
        preload_models=json.dumps([{"id": "tiny"}, {"id": "no-such-model"}]),
        preload_models_config=preload_file,
    )
    failures = run_preloads(installer.settings, installer)
    assert len(failures) == 2, failures
    assert "No gallery entry 'no-such-model'" in failures[0]
    assert "broken" in failures[1] and "HTTP 404" in failures[1]
    assert installer.registry.names() == ["tiny"]
    assert sum(1 for job in installer.jobs() if job.error) == 2  # both visible on GET /models/jobs

    requests_before = len(server.log)
    started = time.monotonic()
    assert len(run_preloads(installer.settings, installer)) == 2  # tiny is skipped, the others fail again
    assert time.monotonic() - started < 5
    assert not [r for r in server.log[requests_before:] if r.path.startswith("tiny/")]


def test_localai_gallery_files_install_unchanged(
    server: FileServer, make_installer, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = gallery_entry_for_folder(server, "tiny", "stablediffusion_assets")["files"]
    stablediffusion = {  # the shape of LocalAI's gallery/stablediffusion.yaml
        "name": "stablediffusion",
        "config_file": (
            "name: stablediffusion\nbackend: diffusers\nf16: true\nstep: 25\ncuda: false\n"
            "parameters:\n  model: stablediffusion_assets\n"
            "diffusers:\n  pipeline_type: StableDiffusionPipeline\n  cuda: false\n"
            '  enable_parameters: "negative_prompt,num_inference_steps"\n  scheduler_type: "k_dpmpp_2m"\n'
        ),
        "files": files,
    }
    # An index entry whose `url` names a base definition on GitHub, as LocalAI's index.yaml does.
    base = server.root / "mudler/LocalAI/master/gallery/dreamshaper.yaml"
    base.parent.mkdir(parents=True)
    base.write_text(
        'name: "dreamshaper"\nconfig_file: |\n  backend: diffusers\n  step: 25\n  f16: true\n'
        "  diffusers:\n    pipeline_type: StableDiffusionPipeline\n    cuda: true\n"
    )
    monkeypatch.setenv("LOCALHOST_AI_GITHUB_RAW", server.base_url)
    dreamshaper = {
        "name": "dreamshaper",
        "url": "github:mudler/LocalAI/gallery/dreamshaper.yaml@master",
        "overrides": {"parameters": {"model": "stablediffusion_assets"}, "diffusers": {"cuda": False}},
        "files": files,
        "tags": ["text-to-image"],
    }
    installer = make_installer([stablediffusion, dreamshaper])
    assert _wait(installer, installer.apply({"id": "stablediffusion"}))["message"] == "completed"
    status = _wait(installer, installer.apply({"id": "dreamshaper"}))
    assert status["message"] == "completed", status
    sd = load_model_config(models_dir / "stablediffusion.yaml")
    assert (sd.backend, sd.step, sd.f16, sd.diffusers.scheduler_type) == ("diffusers", 25, True, "k_dpmpp_2m")
    assert sd.model_path(models_dir).is_dir()
    ds = load_model_config(models_dir / "dreamshaper.yaml")
    assert (ds.name, ds.step, ds.diffusers.cuda, ds.parameters.model) == (
        "dreamshaper",
        25,
        False,
        "stablediffusion_assets",
    )


def test_backends_we_cannot_run_are_refused(server: FileServer, make_installer, models_dir: Path) -> None:
    entry = gallery_entry_for_folder(server, "tiny", "flux-ggml", config="backend: stablediffusion-ggml\n")
    installer = make_installer([entry])
    status = _wait(installer, installer.apply({"id": "flux-ggml"}))
    assert "backend 'stablediffusion-ggml' is not supported" in status["error"] and "ggml" in status["error"]
    assert server.log == [] and _leftovers(models_dir) == []


def test_hand_made_model_is_not_overwritten(server: FileServer, make_installer, models_dir: Path) -> None:
    (models_dir / "tiny.yaml").write_text("name: tiny\nparameters:\n  model: mine\n")
    installer = make_installer([gallery_entry_for_folder(server, "tiny", "tiny")])
    status = _wait(installer, installer.apply({"id": "tiny"}))
    assert "already exists and was not installed from the gallery" in status["error"]
    assert (models_dir / "tiny.yaml").read_text().endswith("model: mine\n")
    assert installer.delete("tiny").removed_files == 0


def test_api_rejects_bad_requests(make_installer) -> None:
    client = _client(make_installer([]))
    for body in ({}, {"id": "a", "url": "http://x/y.yaml"}, {"name": "x"}, [1, 2]):
        answer = client.post("/models/apply", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "exactly one of" in client.post("/models/apply", json={}).json()["error"]["message"]
    assert client.post("/models/apply", json={"url": "ollama://x"}).status_code == 400
    assert client.post("/models/apply", json={"id": "nope"}).status_code == 404
    assert client.get("/models/jobs/nope").status_code == 404
    assert client.post("/models/jobs/nope/cancel").status_code == 404
    assert client.post("/models/delete/nope").json()["error"]["code"] == "model_not_found"


def test_cli_against_a_server_and_in_process(
    server: FileServer, make_installer, models_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    import socket
    import threading

    import uvicorn

    from localhost_ai.gallery_cli import models_apply, models_list, models_rm

    installer = make_installer([gallery_entry_for_folder(server, "tiny", "tiny")])
    app = _client(installer).app
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=api.run, daemon=True)
    thread.start()
    try:
        while not api.started:
            time.sleep(0.01)
        base = f"http://127.0.0.1:{port}"
        assert models_apply(base, "tiny", poll=0.02) == 0
        assert "installed tiny" in capsys.readouterr().err
        assert models_list(base) == 0
        assert "test@tiny  yes" in capsys.readouterr().out
        assert models_rm(base, "tiny") == 0
        assert models_apply(base, "nope", poll=0.02) == 1
        assert "No gallery entry 'nope'" in capsys.readouterr().err
    finally:
        api.should_exit = True
        thread.join(timeout=5)

    # With no server listening, the same commands work in-process on the models dir.
    settings = installer.settings
    assert models_apply(f"http://127.0.0.1:{port}", "tiny", settings=settings, poll=0.02) == 0
    assert "installing in-process" in capsys.readouterr().err
    assert (models_dir / "tiny.yaml").is_file()
    assert models_rm(f"http://127.0.0.1:{port}", "tiny", settings=settings) == 0
    assert _leftovers(models_dir) == []


def test_reinstall_reuses_blobs_and_never_clobbers_foreign_files(
    server: FileServer, make_installer, models_dir: Path
) -> None:
    installer = make_installer([gallery_entry_for_folder(server, "tiny", "tiny")])
    assert _wait(installer, installer.apply({"id": "tiny"}))["message"] == "completed"
    requests = len(server.log)
    again = _wait(installer, installer.apply({"id": "tiny", "overrides": {"step": 8}}))
    assert again["message"] == "completed" and {f["status"] for f in again["files"]} == {"cached"}
    assert len(server.log) == requests  # every blob was already in the store
    assert load_model_config(models_dir / "tiny.yaml").step == 8

    installer.delete("tiny")
    (models_dir / "tiny/unet").mkdir(parents=True)
    (models_dir / WEIGHTS).write_bytes(b"my own weights")
    status = _wait(installer, installer.apply({"id": "tiny"}))
    assert "refusing to overwrite" in status["error"]
    assert _leftovers(models_dir) == [WEIGHTS] and (models_dir / WEIGHTS).read_bytes() == b"my own weights"
