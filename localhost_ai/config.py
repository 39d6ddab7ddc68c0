"""ModelConfig: the per-model YAML schema (LocalAI's shape plus our defaults), and reading a models dir.

A broken file is reported as `path: field: problem` and never stops the other models from loading.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from localhost_ai.durations import parse_duration

log = logging.getLogger(__name__)

SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$")


class _Strict(BaseModel):
    # Unknown keys are kept (LocalAI configs carry LLM-only fields) and listed as warnings.
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)


class Parameters(_Strict):
    model: str = Field("", description="Model folder or file, relative to the models dir.")
    seed: int | None = None


class DiffusersSection(_Strict):
    pipeline_type: str = ""
    scheduler_type: str = ""
    cuda: bool | None = None
    enable_parameters: str = ""
    img2img: bool = False
    clip_skip: int = 0


class DownloadFile(_Strict):
    filename: str
    sha256: str = ""
    uri: str


class ModelConfig(_Strict):
    """One models/<name>.yaml."""

    name: str
    backend: str = "diffusers"
    description: str = ""
    parameters: Parameters = Field(default_factory=Parameters)
    step: int | None = Field(None, ge=1, le=1000, description="Default inference steps.")
    cfg_scale: float | None = Field(None, ge=0, description="Default guidance scale.")
    f16: bool = False
    cuda: bool = False
    low_vram: bool = False
    threads: int = Field(0, ge=0)
    device: str = Field("auto", description="auto | cuda | mps | cpu")
    diffusers: DiffusersSection = Field(default_factory=DiffusersSection)
    options: list[str] = Field(default_factory=list, description='Extra pipeline kwargs as "key:value".')
    download_files: list[DownloadFile] = Field(default_factory=list)
    # localhost-ai extensions
    size: str = Field("512x512", description="Default WxH when a request gives none.")
    keep_alive: float | None = Field(None, description="Per-model idle unload time; overrides the server's.")
    load_timeout: float | None = None

    @field_validator("cfg_scale", mode="before")
    @classmethod
    def _float(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("keep_alive", "load_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value) or ".." in value:
            raise ValueError("must be 1-128 letters, digits or ._@:+- and may not contain '..'")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in {"auto", "cuda", "mps", "cpu"}:
            raise ValueError("must be one of auto, cuda, mps, cpu")
        return value

    @property
    def default_size(self) -> tuple[int, int]:
        return parse_size(self.size)

    def model_path(self, models_dir: Path) -> Path:
        """Where the weights are: parameters.model relative to the models dir (or absolute)."""
        target = Path(self.parameters.model or self.name)
        return target if target.is_absolute() else models_dir / target

    def unknown_keys(self) -> list[str]:
        found = list((self.model_extra or {}).keys())
        for section_name in ("parameters", "diffusers"):
            section = getattr(self, section_name)
            found += [f"{section_name}.{key}" for key in (section.model_extra or {})]
        return found


def parse_size(text: str) -> tuple[int, int]:
    """`"WxH"` -> (width, height); raises ValueError with OpenAI-style wording."""
    match = SIZE_PATTERN.match(text or "")
    if not match:
        raise ValueError(f"Invalid size format: '{text}'. Expected format: 'WIDTHxHEIGHT'")
    return int(match.group(1)), int(match.group(2))


def format_validation_error(path: Path | str, error: ValidationError) -> str:
    """`path: field.sub: problem; ...` for every problem pydantic found."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(file)"
        parts.append(f"{path}: {where}: {problem['msg']}")
    return "; ".join(parts)


class ConfigError(ValueError):
    """A model YAML that cannot be used."""


def parse_model_config(data: Any, source: Path | str) -> ModelConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (file): expected a mapping of keys to values")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def load_model_config(path: Path) -> ModelConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: (file): invalid YAML: {exc}") from None
    if isinstance(data, dict) and "name" not in data:
        data = {**data, "name": path.stem}
    config = parse_model_config(data, path)
    for key in config.unknown_keys():
        log.debug("%s: %s: not used by localhost-ai (ignored)", path, key)
    return config


@dataclass
class ModelsScan:
    """The result of reading a models dir: good configs by name, and one message per broken file."""

    models: dict[str, ModelConfig] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def scan_models_dir(models_dir: Path) -> ModelsScan:
    scan = ModelsScan()
    if not models_dir.is_dir():
        return scan
    for path in sorted([*models_dir.glob("*.yaml"), *models_dir.glob("*.yml")]):
        if path.name.startswith("."):
            continue
        try:
            config = load_model_config(path)
        except (ConfigError, OSError) as exc:
            scan.errors.append(str(exc))
            continue
        if config.name in scan.models:
            scan.errors.append(f"{path}: name: '{config.name}' is already defined by another file")
            continue
        scan.models[config.name] = config
    return scan
