"""Gallery URI schemes (http(s), file, github:, huggingface:/hf:) turned into a download URL and headers.

    https://host/path                     as is
    file:///abs/path  or  file://rel/path a local file (relative to the current directory)
    github:owner/repo/path/to/file@branch https://raw.githubusercontent.com/owner/repo/<branch or main>/path
    huggingface://owner/repo/path@rev     <HF_ENDPOINT or https://huggingface.co>/owner/repo/resolve/<rev or main>/path
    hf://owner/repo/path@rev              the same

`HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`) is sent as `Authorization: Bearer` to the Hugging Face endpoint only.
`LOCALHOST_AI_GITHUB_RAW` replaces https://raw.githubusercontent.com (for mirrors and offline tests).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
GITHUB_RAW_DEFAULT = "https://raw.githubusercontent.com"


class URIError(ValueError):
    """A URI we cannot turn into something to download."""


@dataclass(frozen=True)
class Resolved:
    """Where to fetch one URI from: an HTTP URL with headers, or a local file."""

    uri: str
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    local_path: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.local_path is not None


def hf_endpoint(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")


def _hf_token(env: Mapping[str, str]) -> str | None:
    return env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None


def _split_ref(spec: str, uri: str, what: str) -> tuple[str, str, str, str | None]:
    """`owner/repo/path@ref` -> (owner, repo, path, ref). The ref follows the LAST '@' of the last segment."""
    ref: str | None = None
    head, _, last = spec.rpartition("/")
    if "@" in last:
        last, _, ref = last.rpartition("@")
        ref = ref or None
    spec = f"{head}/{last}" if head else last
    parts = [part for part in spec.split("/") if part]
    if len(parts) < 3:
        raise URIError(f"{uri}: expected {what}owner/repo/path/to/file[@revision]")
    owner, repo, path = parts[0], parts[1], "/".join(parts[2:])
    return owner, repo, path, ref


def resolve(uri: str, env: Mapping[str, str] | None = None) -> Resolved:
    """Turn a gallery URI into a download location; raises URIError for unknown schemes or bad shapes."""
    env = os.environ if env is None else env
    text = (uri or "").strip()
    if not text:
        raise URIError("empty URI")
    lower = text.lower()
    if lower.startswith(("http://", "https://")):
        headers = {}
        token = _hf_token(env)
        # Only the Hub sees the token; a redirect to its CDN drops it (httpx strips auth cross-origin).
        if token and text.startswith(hf_endpoint(env) + "/"):
            headers["Authorization"] = f"Bearer {token}"
        return Resolved(uri=text, url=text, headers=headers)
    if lower.startswith("file://"):
        rest = text[len("file://") :]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest:
            raise URIError(f"{uri}: file:// URI names no file")
        return Resolved(uri=text, local_path=Path(unquote(rest)))
    for prefix in ("huggingface://", "hf://"):
        if lower.startswith(prefix):
            owner, repo, path, rev = _split_ref(text[len(prefix) :], text, prefix)
            endpoint = hf_endpoint(env)
            headers = {}
            token = _hf_token(env)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            return Resolved(uri=text, url=f"{endpoint}/{owner}/{repo}/resolve/{rev or 'main'}/{path}", headers=headers)
    for prefix in ("github://", "github:"):
        if lower.startswith(prefix):
            owner, repo, path, branch = _split_ref(text[len(prefix) :], text, prefix)
            raw = (env.get("LOCALHOST_AI_GITHUB_RAW") or GITHUB_RAW_DEFAULT).rstrip("/")
            return Resolved(uri=text, url=f"{raw}/{owner}/{repo}/{branch or 'main'}/{path}")
    scheme = urlsplit(text).scheme
    if scheme:
        raise URIError(
            f"{uri}: unsupported URI scheme '{scheme}:' (supported: https://, http://, file://, "
            "github:owner/repo/path@branch, huggingface://owner/repo/path@rev, hf://)"
        )
    raise URIError(f"{uri}: not a URI (expected a scheme such as https:// or huggingface://)")


def is_uri(text: str) -> bool:
    """True when `text` looks like a URI we know, not a gallery id or a plain path."""
    lower = text.strip().lower()
    return lower.startswith(("http://", "https://", "file://", "github:", "huggingface://", "hf://"))


def join_relative(base: str, relative: str) -> str:
    """`relative` resolved against the location of `base` (a URI or a local path); absolute ones unchanged."""
    if is_uri(relative) or Path(relative).is_absolute():
        return relative
    if is_uri(base):
        lower = base.lower()
        if lower.startswith(("github:", "huggingface://", "hf://")):
            # Keep the @ref on the joined path: github:o/r/dir/index.yaml@b -> github:o/r/dir/x.yaml@b
            head, _, last = base.rpartition("/")
            ref = "@" + last.rpartition("@")[2] if "@" in last else ""
            return f"{head}/{relative}{ref}"
        head = base.split("?", 1)[0].rsplit("/", 1)[0]
        return f"{head}/{relative}"
    return str(Path(base).parent / relative)
