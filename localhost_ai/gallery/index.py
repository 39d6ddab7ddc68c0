"""Gallery entries (LocalAI's shape), reading the index files in `settings.galleries`, and the install plan.

An index is a YAML list. Each item is an entry mapping, or a string naming another YAML file (relative
to the index, or any URI) that holds one entry or a list of entries. A gallery in `settings.galleries`
may be named `NAME=LOCATION`; without a name it is called after its folder (`localhost-ai` for ours).
Entries are addressed as `gallery@name` or just `name` (the first gallery that has it wins).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from localhost_ai.config import format_validation_error
from localhost_ai.gallery import uris
from localhost_ai.settings import REPO_ROOT

log = logging.getLogger(__name__)

BUILTIN_INDEX = REPO_ROOT / "gallery" / "index.yaml"
BUILTIN_NAME = "localhost-ai"
_MAX_DOCUMENT = 4 << 20  # an index or config larger than this is not a gallery file
_REMOTE_TTL = 60.0

# LocalAI backend names -> ours. Names mapped to None are refused with the reason given; any other name
# is accepted only when a backend of that name exists in the backends dir.
BACKEND_ALIASES: dict[str, str] = {"": "diffusers", "diffusers": "diffusers", "huggingface-diffusers": "diffusers"}
_NO_GGML = "it runs ggml/GGUF checkpoints with stable-diffusion.cpp, which localhost-ai has no backend for"
_NOT_IMAGES = "it is not an image-generation backend; localhost-ai serves image models only"
REFUSED_BACKENDS: dict[str, str] = {
    "stablediffusion": "LocalAI's stablediffusion backend loads NCNN assets, which localhost-ai cannot run",
    "tinydream": "it loads NCNN assets, which localhost-ai cannot run",
    "stablediffusion-ggml": _NO_GGML,
    "stablediffusion-cpp": _NO_GGML,
    "sd-cpp": _NO_GGML,
    **{
        name: _NOT_IMAGES
        for name in (
            "transformers-musicgen", "bark", "bark-cpp", "coqui", "piper", "vall-e-x", "kokoro", "whisper",
            "faster-whisper", "llama-cpp", "llama", "vllm", "transformers", "exllama2", "mamba", "rwkv",
            "rerankers", "sentencetransformers", "bert-embeddings", "silero-vad", "chatterbox", "parler-tts",
        )
    },
}  # fmt: skip


class GalleryError(ValueError):
    """A gallery, entry or definition that cannot be read or used."""


class GalleryFile(BaseModel):
    model_config = ConfigDict(extra="allow")

    filename: str
    sha256: str = ""
    uri: str


class GalleryEntry(BaseModel):
    """One installable model, as LocalAI's galleries write it."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str = ""
    license: str = ""
    urls: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    icon: str = ""
    url: str = Field("", description="A base definition (with config_file and files) to start from.")
    config_file: str | dict[str, Any] | None = None
    files: list[GalleryFile] = Field(default_factory=list)
    overrides: dict[str, Any] = Field(default_factory=dict)
    gallery: str = ""
    source: str = Field("", description="Where this entry was read; relative `url`s resolve against it.")

    @property
    def id(self) -> str:
        return f"{self.gallery}@{self.name}" if self.gallery else self.name


@dataclass(frozen=True)
class Gallery:
    name: str
    location: str


@dataclass
class InstallPlan:
    """What one install writes: `<name>.yaml` from `config`, and `files` into the models dir."""

    name: str
    config: dict[str, Any]
    files: list[GalleryFile]
    source: str
    warnings: list[str] = field(default_factory=list)


def parse_gallery(text: str) -> Gallery:
    """`NAME=LOCATION` or `LOCATION`; the name defaults to `localhost-ai` for ours, else the folder's name."""
    name, sep, location = text.partition("=")
    if sep and name and "/" not in name and ":" not in name:
        return Gallery(name.strip(), location.strip())
    location = text.strip()
    if not uris.is_uri(location) and Path(location).resolve() == BUILTIN_INDEX.resolve():
        return Gallery(BUILTIN_NAME, location)
    stem = location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    parent = location.split("?", 1)[0].rstrip("/").rsplit("/", 2)[-2] if "/" in location else stem
    return Gallery(parent if stem in ("index", "") else stem, location)


def fetch_text(location: str, timeout: float = 30.0) -> str:
    """The text of a local file or a URI (http(s), file, github:, huggingface:)."""
    try:
        if uris.is_uri(location):
            resolved = uris.resolve(location)
            if resolved.local_path is None:
                response = httpx.get(resolved.url, headers=resolved.headers, follow_redirects=True, timeout=timeout)
                if response.status_code >= 400:
                    raise GalleryError(f"{location}: HTTP {response.status_code} {response.reason_phrase}")
                if len(response.content) > _MAX_DOCUMENT:
                    raise GalleryError(f"{location}: larger than {_MAX_DOCUMENT} bytes; not a gallery file")
                return response.text
            location = str(resolved.local_path)
        path = Path(location)
        if path.stat().st_size > _MAX_DOCUMENT:
            raise GalleryError(f"{location}: larger than {_MAX_DOCUMENT} bytes; not a gallery file")
        return path.read_text(encoding="utf-8")
    except uris.URIError as exc:
        raise GalleryError(str(exc)) from None
    except httpx.HTTPError as exc:
        raise GalleryError(f"{location}: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise GalleryError(f"{location}: {exc.strerror or exc}") from None


def load_yaml(location: str) -> Any:
    text = fetch_text(location)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GalleryError(f"{location}: invalid YAML: {exc}") from None


def parse_entry(data: Any, source: str, gallery: str = "") -> GalleryEntry:
    if not isinstance(data, dict):
        raise GalleryError(f"{source}: an entry must be a mapping, got {type(data).__name__}")
    try:
        entry = GalleryEntry.model_validate(data)
    except ValidationError as exc:
        raise GalleryError(format_validation_error(source, exc)) from None
    return entry.model_copy(update={"gallery": gallery, "source": source})


def read_index(gallery: Gallery) -> tuple[list[GalleryEntry], list[str]]:
    """Entries of one gallery, plus one message per entry or included file that could not be read."""
    data = load_yaml(gallery.location)
    if not isinstance(data, list):
        raise GalleryError(f"{gallery.location}: a gallery index must be a YAML list of entries or file names")
    entries: list[GalleryEntry] = []
    errors: list[str] = []
    for position, item in enumerate(data, start=1):
        source = f"{gallery.location}: item {position}"
        try:
            if isinstance(item, str):
                included = uris.join_relative(gallery.location, item)
                loaded = load_yaml(included)
                for sub in loaded if isinstance(loaded, list) else [loaded]:
                    entries.append(parse_entry(sub, included, gallery.name))
            else:
                entries.append(parse_entry(item, source, gallery.name))
        except GalleryError as exc:
            errors.append(str(exc))
    return entries, errors


class Catalog:
    """All entries of the configured galleries; local indexes are re-read when they change."""

    def __init__(self, galleries: list[str]) -> None:
        self.galleries = [parse_gallery(text) for text in galleries]
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Any, list[GalleryEntry], list[str]]] = {}
        self.errors: list[str] = []

    def _stamp(self, gallery: Gallery) -> Any:
        """Changes when the index may have changed: file mtimes locally, a time bucket for remote ones."""
        location = gallery.location
        if uris.is_uri(location):
            try:
                local = uris.resolve(location).local_path
            except uris.URIError:
                return None
            if local is None:
                return int(time.monotonic() // _REMOTE_TTL)
            location = str(local)
        try:
            return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in Path(location).parent.glob("*.y*ml")))
        except OSError:
            return None

    def entries(self) -> list[GalleryEntry]:
        found: list[GalleryEntry] = []
        errors: list[str] = []
        with self._lock:
            for gallery in self.galleries:
                stamp = self._stamp(gallery)
                cached = self._cache.get(gallery.location)
                if cached is None or cached[0] != stamp:
                    try:
                        loaded, problems = read_index(gallery)
                    except GalleryError as exc:
                        loaded, problems = [], [str(exc)]
                    for message in problems:
                        log.error("gallery %s: %s", gallery.name, message)
                    cached = (stamp, loaded, problems)
                    self._cache[gallery.location] = cached
                found += cached[1]
                errors += cached[2]
            self.errors = errors
        return found

    def find(self, model_id: str) -> GalleryEntry | None:
        """`gallery@name` or `name`; exact name first, then case-insensitive."""
        gallery, sep, name = model_id.strip().rpartition("@")
        entries = self.entries()
        if sep:
            entries = [entry for entry in entries if entry.gallery == gallery]
        for match in (lambda e: e.name == name, lambda e: e.name.lower() == name.lower()):
            for entry in entries:
                if match(entry):
                    return entry
        return None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` merged in: mappings merge key by key, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def config_mapping(config_file: str | dict[str, Any] | None, source: str) -> dict[str, Any]:
    """An entry's `config_file` (inline YAML text or a mapping) as a dict."""
    if config_file is None:
        return {}
    if isinstance(config_file, dict):
        return copy.deepcopy(config_file)
    try:
        data = yaml.safe_load(config_file) or {}
    except yaml.YAMLError as exc:
        raise GalleryError(f"{source}: config_file: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise GalleryError(f"{source}: config_file: expected a mapping of keys to values")
    return data


def entry_from_definition(data: Any, source: str) -> GalleryEntry:
    """A fetched definition: a gallery entry (config_file/files), or a bare model config used as config_file."""
    if isinstance(data, dict) and "config_file" not in data and "files" not in data and "url" not in data:
        return GalleryEntry(name=str(data.get("name", "")), config_file=data, source=source)
    if isinstance(data, dict) and "name" not in data:
        data = {**data, "name": ""}
    return parse_entry(data, source)


def map_backend(name: str | None, available: set[str]) -> str:
    """Our backend for a LocalAI backend name, or GalleryError saying why we cannot run it."""
    key = (name or "").strip().lower()
    if key in BACKEND_ALIASES:
        return BACKEND_ALIASES[key]
    if key in REFUSED_BACKENDS:
        raise GalleryError(f"backend '{name}' is not supported: {REFUSED_BACKENDS[key]}")
    if key in available:
        return key
    known = ", ".join(sorted(available | {"diffusers"}))
    raise GalleryError(f"backend '{name}' is not supported (available backends: {known})")


def build_plan(
    entry: GalleryEntry,
    *,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
    files: list[GalleryFile] | None = None,
    backends: set[str] | None = None,
    depth: int = 0,
) -> InstallPlan:
    """Resolve an entry (and the base definition its `url` names) into the config and files to install."""
    config: dict[str, Any] = {}
    all_files: list[GalleryFile] = []
    if entry.url:
        if depth >= 3:
            raise GalleryError(f"{entry.source}: url: definitions nest more than 3 levels deep")
        location = uris.join_relative(entry.source, entry.url) if entry.source else entry.url
        base = build_plan(entry_from_definition(load_yaml(location), location), backends=backends, depth=depth + 1)
        config, all_files = base.config, base.files
    config = deep_merge(config, config_mapping(entry.config_file, entry.source or entry.name))
    config = deep_merge(config, entry.overrides)
    config = deep_merge(config, overrides or {})
    all_files += entry.files + (files or [])
    final_name = name or entry.name or str(config.get("name") or "")
    if depth:
        return InstallPlan(final_name, config, all_files, entry.source)
    if not final_name:
        raise GalleryError("the model has no name: give 'name' in the request or the definition")
    config["name"] = final_name
    if entry.description and not config.get("description"):
        config["description"] = entry.description.strip().splitlines()[0][:300]
    config["backend"] = map_backend(config.get("backend"), backends or set())
    by_name = {item.filename: item for item in all_files}  # a later file of the same name wins
    return InstallPlan(final_name, config, list(by_name.values()), entry.id if entry.gallery else entry.source)
