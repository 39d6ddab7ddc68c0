"""Request and response models of the gallery API (/models/apply, /models/jobs, /models/available), LocalAI's shape."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


class FileSpec(BaseModel):
    """A file to download into the models dir."""

    model_config = ConfigDict(extra="ignore")

    filename: str = Field(..., min_length=1, description="Path inside the models dir, e.g. 'sd-turbo/unet/x.bin'.")
    sha256: str = Field(
        "", description="Expected sha256 (64 hex digits); empty = installed unverified, with a warning."
    )
    uri: str = Field(..., min_length=1, description="https://, file://, github:, huggingface:// or hf:// URI.")


class ApplyRequest(BaseModel):
    """Body of POST /models/apply: exactly one of `id`, `url`, `config_file`."""

    # LocalAI clients send more (e.g. `galleries`); unknown fields are ignored.
    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(None, description="A gallery entry: 'gallery@name' or 'name'.")
    url: str | None = Field(None, description="A gallery definition (or bare model config) YAML to install.")
    config_file: str | dict[str, Any] | None = Field(None, description="An inline model config (YAML text or mapping).")
    name: str | None = Field(None, description="Install under this name instead of the entry's.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Deep-merged into the model config.")
    files: list[FileSpec] = Field(default_factory=list, description="Extra files to download.")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ApplyRequest:
        given = [key for key in ("id", "url", "config_file") if getattr(self, key) not in (None, "")]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            # A custom error type keeps pydantic's "Value error, " prefix out of the client's message.
            raise PydanticCustomError(
                "one_source", "give exactly one of 'id', 'url' or 'config_file' (got {found})", {"found": found}
            )
        return self

    @property
    def source(self) -> str:
        """How jobs and logs name what is being installed."""
        if self.id:
            return self.id
        if self.url:
            return self.url
        return f"inline config ({self.name or 'unnamed'})"


class ApplyResponse(BaseModel):
    uuid: str
    status: str = Field(..., description="URL of the job's status.")


class JobFile(BaseModel):
    filename: str
    size: int | None = None
    downloaded: int = 0
    status: str = "pending"


class JobStatus(BaseModel):
    """GET /models/jobs/<uuid>: LocalAI's fields, then ours."""

    uuid: str
    processed: bool
    progress: float = Field(..., ge=0, le=100)
    file_name: str = ""
    file_size: str = Field("", description="Size of the file being downloaded, human-readable (as LocalAI).")
    downloaded_size: str = Field("", description="Bytes of it received so far, human-readable (as LocalAI).")
    message: str = Field(..., description="'processing', 'completed' or 'error: ...'.")
    error: str | None = None
    cancelled: bool = False
    # --- localhost-ai ---
    name: str | None = None
    source: str = ""
    warnings: list[str] = Field(default_factory=list)
    files: list[JobFile] = Field(default_factory=list)
    created_at: float | None = None
    finished_at: float | None = None


class AvailableModel(BaseModel):
    """One entry of GET /models/available."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    gallery: str
    description: str = ""
    license: str = ""
    urls: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    installed: bool = False


class DeleteResponse(BaseModel):
    name: str
    deleted: bool = True
    removed_files: int = 0
    message: str = "deleted"
