"""Writes gallery/tiny-shapes.yaml's config and file list (with sha256) from the shipped model folder."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
URI = "github:localhost-ai/localhost-ai/models/tiny-shapes/{path}@main"


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    """Multi-line strings (the inline config) as readable `|` blocks."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


yaml.SafeDumper.add_representer(str, _block_strings)


def main() -> None:
    model = REPO / "models" / "tiny-shapes"
    entry_path = REPO / "gallery" / "tiny-shapes.yaml"
    text = entry_path.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    entry = yaml.safe_load(text)
    config = yaml.safe_load((REPO / "models" / "tiny-shapes.yaml").read_text())
    config.pop("name", None)
    entry["config_file"] = yaml.safe_dump(config, sort_keys=False)
    entry["files"] = [
        {
            "filename": f"tiny-shapes/{path.relative_to(model).as_posix()}",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "uri": URI.format(path=path.relative_to(model).as_posix()),
        }
        for path in sorted(model.rglob("*"))
        if path.is_file() and path.name != "training_log.json"
    ]
    entry.pop("checksums", None)
    header = "\n".join(line for line in header.splitlines() if "sha256" not in line and "UNVERIFIED" not in line)
    entry_path.write_text(header + "\n" + yaml.safe_dump(entry, sort_keys=False, width=110))
    print(f"wrote {entry_path} ({len(entry['files'])} files)", file=sys.stderr)


if __name__ == "__main__":
    main()
