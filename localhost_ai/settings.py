"""Server settings: one pydantic-settings model gives CLI flags, LOCALHOST_AI_* env vars and config-file keys.

Precedence, highest first: command-line flag, environment variable, config file (YAML or JSON,
`--config` / `LOCALHOST_AI_CONFIG`), default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from localhost_ai.durations import parse_duration

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Everything `localhost-ai serve` can be told."""

    model_config = SettingsConfigDict(env_prefix="LOCALHOST_AI_", populate_by_name=True, extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on.")
    models_dir: Path = Field(
        REPO_ROOT / "models",
        validation_alias=AliasChoices("models_dir", "LOCALHOST_AI_MODELS_DIR", "MODELS_PATH"),
        description="Directory holding one <name>.yaml per model and the model files.",
    )
    backends_dir: Path = Field(REPO_ROOT / "backends", description="Directory of backend folders.")
    backend_python: str = Field(sys.executable, description="Python interpreter that runs the backends.")
    generated_dir: Path = Field(
        Path(tempfile.gettempdir()) / "localhost-ai" / "generated-images",
        description="Where images returned as URLs are stored.",
    )
    # NoDecode: the env var may be a JSON list or comma-separated; _list below parses both.
    galleries: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [str(REPO_ROOT / "gallery" / "index.yaml")],
        description="Gallery index files or URLs (JSON list or comma-separated).",
    )
    keep_alive: float = Field(
        900.0, description="Unload a model after this long idle ('15m', '30s', seconds; -1 = never)."
    )
    load_timeout: float = Field(300.0, description="Give up on a backend that is not ready after this long.")
    max_active_backends: int = Field(
        0, ge=0, description="Most backends loaded at once; the least recently used is evicted (0 = no limit)."
    )
    max_queue: int = Field(16, ge=0, description="Requests that may wait for one model before 429.")
    max_image_side: int = Field(4096, ge=8, description="Largest width or height a request may ask for.")
    preload_models: str | None = Field(
        None,
        validation_alias=AliasChoices("preload_models", "LOCALHOST_AI_PRELOAD_MODELS", "PRELOAD_MODELS"),
        description="JSON array of /models/apply bodies to install before serving.",
    )
    preload_models_config: Path | None = Field(
        None,
        validation_alias=AliasChoices(
            "preload_models_config", "LOCALHOST_AI_PRELOAD_MODELS_CONFIG", "PRELOAD_MODELS_CONFIG"
        ),
        description="YAML file listing /models/apply bodies to install before serving.",
    )
    log_level: str = Field("info", description="debug, info, warning or error.")

    @field_validator("keep_alive", "load_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("galleries", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value


def read_config_file(path: Path) -> dict[str, Any]:
    """Keys of a YAML or JSON settings file; dashes in keys are accepted for underscores."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a settings file must be a mapping of setting names to values")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def load_settings(cli_values: dict[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Merge defaults < config file < environment < CLI flags into one Settings."""
    cli_values = {k: v for k, v in (cli_values or {}).items() if v is not None}
    config_file = config_file or (
        Path(os.environ["LOCALHOST_AI_CONFIG"]) if "LOCALHOST_AI_CONFIG" in os.environ else None
    )
    file_values = read_config_file(config_file) if config_file else {}
    from_env = Settings()
    env_values = {name: getattr(from_env, name) for name in from_env.model_fields_set}
    return Settings(**{**file_values, **env_values, **cli_values})


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per Settings field, help text from its description; values are validated by Settings."""
    parser.add_argument("--config", type=Path, help="YAML or JSON file of settings (keys = flag names).")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=field.description)


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = {name: getattr(args, name, None) for name in Settings.model_fields}
    return load_settings(values, getattr(args, "config", None))
