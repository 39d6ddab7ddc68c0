"""Gallery end to end: the real server installs from a loopback HTTP gallery (preload and /models/apply),
then generates with what it installed."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time

import httpx
import pytest
import yaml
from PIL import Image

from tests.fixtures.http_server import FileServer, gallery_entry_for_folder
from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def gallery(tmp_path, random_pipeline_dir):
    root = tmp_path / "www"
    shutil.copytree(random_pipeline_dir, root / "tiny")
    with FileServer(root) as server:
        config = "backend: diffusers\nparameters:\n  model: {name}\nstep: 2\nsize: 64x64\n"
        entries = [
            gallery_entry_for_folder(server, "tiny", name, config=config.format(name=name))
            for name in ("tiny-a", "tiny-b", "tiny-broken")
        ]
        server.not_found("missing.bin")
        entries[2]["files"][0].update(uri=server.url("missing.bin"), sha256="")
        (root / "index.yaml").write_text(yaml.safe_dump(entries))
        yield server


def generate_png(base_url: str, model: str) -> Image.Image:
    response = httpx.post(
        f"{base_url}/v1/images/generations", json={"model": model, "prompt": "a red circle", "seed": 1}, timeout=120
    )
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))


def test_preload_one_good_two_bad_then_apply_and_generate(tmp_path, gallery):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    preload = [{"id": "tiny-a"}, {"id": "no-such-model"}, {"id": "tiny-broken"}]
    server = ServerProcess(
        models_dir,
        "--galleries",
        json.dumps([f"test={gallery.url('index.yaml')}"]),
        env={"PRELOAD_MODELS": json.dumps(preload)},
    ).start()
    try:
        base = server.base_url
        # the good item is installed before the server answers; both failures are reported
        assert [m["id"] for m in httpx.get(f"{base}/v1/models", timeout=30).json()["data"]] == ["tiny-a"]
        errors = [job["error"] for job in httpx.get(f"{base}/models/jobs", timeout=10).json().values() if job["error"]]
        assert len(errors) == 2
        assert any("no-such-model" in e for e in errors) and any("404" in e for e in errors)
        log = server.output()
        assert "no-such-model" in log and "tiny-broken" in log
        assert generate_png(base, "tiny-a").size == (64, 64)

        # install another by id over the API, follow the job to 100, generate with it
        job = httpx.post(f"{base}/models/apply", json={"id": "test@tiny-b"}, timeout=10).json()
        deadline = time.monotonic() + 60
        while not (status := httpx.get(job["status"], timeout=10).json())["processed"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status["progress"] == 100 and status["error"] is None, status
        assert generate_png(base, "tiny-b").size == (64, 64)
        available = {m["name"]: m["installed"] for m in httpx.get(f"{base}/models/available", timeout=10).json()}
        assert available["tiny-b"] is True and available["tiny-broken"] is False

        # deleting a model that shares every blob with another keeps the other one working
        assert httpx.post(f"{base}/models/delete/tiny-b", timeout=30).status_code == 200
        assert generate_png(base, "tiny-a").size == (64, 64)
        assert httpx.post(f"{base}/models/apply", json={"id": "nope"}, timeout=10).status_code == 404
    finally:
        server.stop()
