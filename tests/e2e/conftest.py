"""Session fixtures for the end-to-end tests: a models dir with the shipped model and random ones, and a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.server import REPO, ServerProcess

SHIPPED = REPO / "models" / "tiny-shapes"


@pytest.fixture(scope="session")
def random_pipeline_dir(tmp_path_factory) -> Path:
    from tests.fixtures.tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("random") / "tiny-random", seed=0, sample_size=64)


@pytest.fixture(scope="session")
def e2e_models_dir(tmp_path_factory, random_pipeline_dir: Path) -> Path:
    """`shapes`: the shipped trained model (random weights until it exists); `random-*`: special-purpose copies."""
    models = tmp_path_factory.mktemp("models")
    shapes = SHIPPED if (SHIPPED / "model_index.json").is_file() else random_pipeline_dir
    (models / "shapes.yaml").write_text(
        f"name: shapes\nbackend: diffusers\nparameters:\n  model: {shapes}\nstep: 8\nsize: 64x64\n"
    )
    for name, extra in {
        "random-keepalive": "keep_alive: 1s\n",
        "random-concurrent": "",
        "random-crash": "",
    }.items():
        (models / f"{name}.yaml").write_text(
            f"name: {name}\nbackend: diffusers\nparameters:\n  model: {random_pipeline_dir}\nstep: 4\nsize: 64x64\n"
            + extra
        )
    (models / "broken.yaml").write_text("name: broken\nstep: many\n")
    return models


@pytest.fixture(scope="session")
def server(e2e_models_dir: Path):
    proc = ServerProcess(e2e_models_dir, "--keep-alive", "10m", "--max-queue", "4").start()
    yield proc
    proc.stop()
