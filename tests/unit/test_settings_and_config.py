"""Settings precedence (flag > env > file > default) and model YAML validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from localhost_ai.config import ConfigError, load_model_config, scan_models_dir
from localhost_ai.durations import parse_duration
from localhost_ai.settings import load_settings


def test_settings_precedence(tmp_path, monkeypatch):
    config = tmp_path / "server.yaml"
    config.write_text("port: 7000\nkeep-alive: 2m\nmax_queue: 3\n")
    monkeypatch.setenv("LOCALHOST_AI_PORT", "7100")
    monkeypatch.setenv("PRELOAD_MODELS", '[{"id": "x"}]')
    settings = load_settings({"max_queue": "5"}, config)
    assert settings.port == 7100  # env beats file
    assert settings.keep_alive == 120  # file beats default
    assert settings.max_queue == 5  # flag beats everything
    assert settings.preload_models == '[{"id": "x"}]'


@pytest.mark.parametrize(
    "text, seconds", [("15m", 900), ("30s", 30), ("1h30m", 5400), (90, 90), ("-1", -1), ("500ms", 0.5)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_duration():
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_model_yaml_errors_name_path_and_field(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstep: lots\ndiffusers:\n  scheduler_type: 3\nsize: 12\n")
    with pytest.raises(ConfigError) as info:
        load_model_config(bad)
    message = str(info.value)
    assert f"{bad}: step:" in message and f"{bad}: diffusers.scheduler_type:" in message


def test_broken_file_does_not_stop_the_others(tmp_path: Path):
    (tmp_path / "good.yaml").write_text("name: good\nparameters:\n  model: good\nstep: 4\ncfg_scale: 3\n")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    (tmp_path / "wrong.yaml").write_text("- a list\n")
    (tmp_path / "noname.yaml").write_text("backend: diffusers\n")
    scan = scan_models_dir(tmp_path)
    assert set(scan.models) == {"good", "noname"}
    assert scan.models["good"].cfg_scale == 3.0
    assert len(scan.errors) == 2 and any("broken.yaml" in e for e in scan.errors)


def test_localai_config_with_extra_llm_keys_loads(tmp_path: Path):
    path = tmp_path / "sd.yaml"
    path.write_text(
        "name: stablediffusion\nbackend: diffusers\nf16: true\ncuda: true\ncontext_size: 2048\n"
        "parameters:\n  model: runwayml/stable-diffusion-v1-5\n"
        "diffusers:\n  pipeline_type: StableDiffusionPipeline\n  scheduler_type: k_dpmpp_2m\n"
        "  enable_parameters: negative_prompt,num_inference_steps\n"
        "options:\n  - clip_skip:2\n"
    )
    config = load_model_config(path)
    assert config.diffusers.scheduler_type == "k_dpmpp_2m" and config.unknown_keys() == ["context_size"]
