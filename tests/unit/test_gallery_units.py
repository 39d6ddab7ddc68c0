"""Gallery seams without a network: URI schemes, deep merge, path checks, index parsing, plans and backends."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from localhost_ai.gallery import uris
from localhost_ai.gallery.download import normalize_sha256
from localhost_ai.gallery.index import (
    BUILTIN_INDEX,
    Catalog,
    Gallery,
    GalleryEntry,
    GalleryError,
    build_plan,
    deep_merge,
    entry_from_definition,
    map_backend,
    parse_gallery,
    read_index,
)
from localhost_ai.gallery.jobs import Job, human_size
from localhost_ai.gallery.store import UnsafePath, check_filename, safe_target
from localhost_ai.protocol.models import ApplyRequest

# --- URIs ---------------------------------------------------------------------------------------------


def test_huggingface_uri_resolves_to_resolve_url_with_token() -> None:
    env = {"HF_TOKEN": "secret"}
    got = uris.resolve("huggingface://stabilityai/sd-turbo/unet/config.json@fp16", env)
    assert got.url == "https://huggingface.co/stabilityai/sd-turbo/resolve/fp16/unet/config.json"
    assert got.headers == {"Authorization": "Bearer secret"}
    alias = uris.resolve("hf://stabilityai/sd-turbo/model_index.json", {"HF_ENDPOINT": "http://mirror:8080/"})
    assert alias.url == "http://mirror:8080/stabilityai/sd-turbo/resolve/main/model_index.json"
    assert alias.headers == {}


def test_hf_token_only_goes_to_the_hub() -> None:
    env = {"HF_TOKEN": "secret"}
    assert uris.resolve("https://huggingface.co/a/b/resolve/main/x", env).headers == {"Authorization": "Bearer secret"}
    assert uris.resolve("https://example.com/a/b/x", env).headers == {}


def test_github_and_file_uris() -> None:
    got = uris.resolve("github:mudler/LocalAI/gallery/flux.yaml@master", {})
    assert got.url == "https://raw.githubusercontent.com/mudler/LocalAI/master/gallery/flux.yaml"
    assert uris.resolve("github://o/r/a/b.yaml", {}).url == "https://raw.githubusercontent.com/o/r/main/a/b.yaml"
    assert uris.resolve("file:///srv/models/x.bin", {}).local_path == Path("/srv/models/x.bin")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ollama://llama3", "unsupported URI scheme 'ollama:'"),
        ("huggingface://only-owner/repo", "expected huggingface://owner/repo/path"),
        ("just-a-name", "not a URI"),
        ("", "empty URI"),
    ],
)
def test_bad_uris_say_why(uri: str, message: str) -> None:
    with pytest.raises(uris.URIError, match=message):
        uris.resolve(uri, {})


def test_join_relative_keeps_the_ref() -> None:
    assert uris.join_relative("github:o/r/gallery/index.yaml@v1", "sd.yaml") == "github:o/r/gallery/sd.yaml@v1"
    assert uris.join_relative("https://h/g/index.yaml", "sd.yaml") == "https://h/g/sd.yaml"
    assert uris.join_relative("/srv/g/index.yaml", "sd.yaml") == "/srv/g/sd.yaml"
    assert uris.join_relative("/srv/g/index.yaml", "https://x/y.yaml") == "https://x/y.yaml"


# --- merge, hashes, paths -----------------------------------------------------------------------------


def test_deep_merge_merges_mappings_and_replaces_the_rest() -> None:
    base = {"parameters": {"model": "a", "seed": 1}, "options": ["x"], "step": 4}
    merged = deep_merge(base, {"parameters": {"model": "b"}, "options": ["y"], "f16": True})
    assert merged == {"parameters": {"model": "b", "seed": 1}, "options": ["y"], "step": 4, "f16": True}
    assert base["parameters"]["model"] == "a"  # the input is not modified


def test_normalize_sha256() -> None:
    digest = "AB" * 32
    assert normalize_sha256(f"sha256:{digest}") == digest.lower()
    assert normalize_sha256("") == ""
    with pytest.raises(ValueError, match="not a sha256"):
        normalize_sha256("1234")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil", "'..' would leave"),
        ("a/../../evil", "'..' would leave"),
        ("/etc/passwd", "absolute paths"),
        ("C:/x", "absolute paths"),
        ("a\\..\\b", "backslashes"),
        (".blobs/sha256-x", "reserved"),
        ("other-model.yaml", "read as a model config"),
        ("", "empty"),
    ],
)
def test_unsafe_file_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(UnsafePath, match=message):
        check_filename(name)


def test_safe_target_refuses_symlinked_folders(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "real").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (models / "link").symlink_to(tmp_path / "elsewhere")
    assert safe_target(models, "real/unet/w.bin") == models / "real/unet/w.bin"
    assert safe_target(models, "sd/config.yaml") == models / "sd/config.yaml"  # nested yaml files are fine
    with pytest.raises(UnsafePath, match="'link' is a symlink"):
        safe_target(models, "link/w.bin")


# --- galleries ----------------------------------------------------------------------------------------


def test_gallery_names() -> None:
    assert parse_gallery("mine=https://h/x/index.yaml") == Gallery("mine", "https://h/x/index.yaml")
    assert parse_gallery(str(BUILTIN_INDEX)).name == "localhost-ai"
    assert parse_gallery("https://h/community/index.yaml").name == "community"
    assert parse_gallery("/srv/extra.yaml").name == "extra"


def test_index_entries_includes_and_broken_items(tmp_path: Path) -> None:
    (tmp_path / "sd.yaml").write_text(yaml.safe_dump({"name": "sd", "config_file": "backend: diffusers\n"}))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump([{"name": "a"}, {"name": "b", "tags": ["x"]}]))
    index = tmp_path / "index.yaml"
    index.write_text(yaml.safe_dump(["sd.yaml", "two.yaml", {"name": "inline", "files": "nope"}, "missing.yaml"]))
    entries, errors = read_index(Gallery("g", str(index)))
    assert [e.id for e in entries] == ["g@sd", "g@a", "g@b"]
    assert entries[0].source == str(tmp_path / "sd.yaml")
    assert len(errors) == 2 and "item 3: files" in errors[0] and "missing.yaml" in errors[1]


def test_catalog_finds_by_gallery_and_name(tmp_path: Path) -> None:
    first, second = tmp_path / "one.yaml", tmp_path / "two.yaml"
    first.write_text(yaml.safe_dump([{"name": "SD-Turbo"}]))
    second.write_text(yaml.safe_dump([{"name": "sd-turbo"}, {"name": "flux"}]))
    catalog = Catalog([f"one={first}", f"two={second}"])
    assert catalog.find("sd-turbo").gallery == "two"  # exact name beats a case-insensitive one
    assert catalog.find("one@sd-turbo").gallery == "one"
    assert catalog.find("FLUX").name == "flux"
    assert catalog.find("one@flux") is None and catalog.find("nothing") is None


def test_builtin_gallery_parses_and_plans() -> None:
    catalog = Catalog([str(BUILTIN_INDEX)])
    entries = catalog.entries()
    assert catalog.errors == []
    names = {entry.name for entry in entries}
    assert {"sd-turbo", "sdxl-turbo", "stable-diffusion-v1-5", "lcm-dreamshaper-v7", "flux.1-schnell"} <= names
    for entry in entries:
        plan = build_plan(entry, backends={"diffusers"})
        assert plan.config["backend"] == "diffusers" and plan.files, entry.name
        assert all(f.filename.startswith(plan.config["parameters"]["model"] + "/") for f in plan.files)
        for item in plan.files:
            check_filename(item.filename)
            uris.resolve(item.uri, {})


# --- plans and backends -------------------------------------------------------------------------------


def test_plan_merges_base_definition_entry_and_request(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(
        "name: base\nconfig_file: |\n  backend: diffusers\n  step: 25\n  diffusers:\n    cuda: true\n"
        "files:\n- {filename: m/a.bin, uri: 'https://h/a.bin'}\n"
    )
    entry = GalleryEntry(
        name="dream",
        url="base.yaml",
        source=str(tmp_path / "index.yaml"),
        description="A model.\nMore text.",
        overrides={"diffusers": {"cuda": False}, "parameters": {"model": "m"}},
        files=[{"filename": "m/b.bin", "uri": "https://h/b.bin"}],
    )
    plan = build_plan(entry, name="mine", overrides={"step": 4}, backends=set())
    assert plan.name == "mine"
    assert plan.config == {
        "backend": "diffusers",
        "step": 4,
        "diffusers": {"cuda": False},
        "parameters": {"model": "m"},
        "name": "mine",
        "description": "A model.",
    }
    assert [f.filename for f in plan.files] == ["m/a.bin", "m/b.bin"]


def test_bare_model_config_as_definition() -> None:
    entry = entry_from_definition({"name": "x", "backend": "diffusers", "parameters": {"model": "x"}}, "u")
    assert build_plan(entry).config["parameters"] == {"model": "x"}


@pytest.mark.parametrize(
    ("backend", "result"),
    [
        (None, "diffusers"),
        ("diffusers", "diffusers"),
        ("mine", "mine"),
        ("stablediffusion-ggml", "ggml"),
        ("stablediffusion", "NCNN"),
        ("transformers-musicgen", "not an image-generation backend"),
        ("llama-cpp", "not an image-generation backend"),
        ("nonsense", "available backends: diffusers, mine"),
    ],
)
def test_backend_table(backend: str | None, result: str) -> None:
    if result in ("diffusers", "mine"):
        assert map_backend(backend, {"mine"}) == result
    else:
        with pytest.raises(GalleryError, match=result):
            map_backend(backend, {"mine"})


def test_plan_without_a_name_is_refused() -> None:
    with pytest.raises(GalleryError, match="no name"):
        build_plan(GalleryEntry(name="", config_file="backend: diffusers\n"))


# --- protocol and job status --------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"id": "a", "url": "b"}, {"id": "a", "config_file": "x: 1"}, {"id": ""}])
def test_apply_request_needs_exactly_one_source(body: dict) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        ApplyRequest.model_validate(body)


def test_apply_request_accepts_localai_bodies() -> None:
    request = ApplyRequest.model_validate({"id": "localai@sd", "galleries": [{"name": "x", "url": "y"}]})
    assert request.id == "localai@sd" and request.overrides == {}
    inline = ApplyRequest.model_validate({"config_file": {"backend": "diffusers"}, "name": "n"})
    assert inline.source.startswith("inline")


def test_job_progress_and_sizes() -> None:
    job = Job(source="x")
    job.add_files(["a", "b"])
    job.update("a", 500, 1000)
    assert job.progress == 25.0  # half of one of two files whose size is known
    job.update("b", 0, 1000)
    assert job.progress == 25.0
    job.update("a", 1000, 1000)
    job.update("b", 1000, 1000)
    assert job.progress == 99.0  # 100 only once the config is written
    job.finish()
    snapshot = job.snapshot()
    assert (snapshot["progress"], snapshot["message"], snapshot["downloaded_size"]) == (100.0, "completed", "1.0 kB")
    assert human_size(3_400_000_000) == "3.4 GB" and human_size(12) == "12 B"
