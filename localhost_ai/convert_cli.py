"""`localhost-ai convert onnx MODEL`: export an installed diffusers model to ONNX and install it as a new model.

The export runs `backends/onnx/convert.py` in a subprocess with the backends' Python, so the host
never imports torch or onnxruntime. The new model gets its own YAML (`backend: onnx`) beside the old.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from localhost_ai.config import NAME_PATTERN
from localhost_ai.errors import APIError
from localhost_ai.serving.registry import ModelRegistry
from localhost_ai.settings import Settings, settings_from_args

# Copied from the source YAML so the converted model generates with the same defaults.
_COPIED_KEYS = ("step", "cfg_scale", "size", "threads", "device", "keep_alive", "load_timeout", "options")


class ConvertError(RuntimeError):
    """The conversion could not run or failed."""


def converted_config(source: Any, new_name: str, precision: str) -> dict[str, Any]:
    """The YAML mapping for the converted model: backend onnx, the source's generation defaults."""
    data: dict[str, Any] = {
        "name": new_name,
        "backend": "onnx",
        "description": f"{source.name} converted to ONNX ({precision})"
        + (f": {source.description}" if source.description else ""),
        "parameters": {"model": new_name},
    }
    dumped = source.model_dump(exclude_none=True)
    for key in _COPIED_KEYS:
        if key in dumped and dumped[key] not in ([], ""):
            data[key] = dumped[key]
    if source.cuda:
        data["cuda"] = True
    section = {k: v for k, v in dumped.get("diffusers", {}).items() if k in ("scheduler_type", "clip_skip") and v}
    if section:
        data["diffusers"] = section
    return data


def _write_yaml_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".yaml.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert_onnx(
    settings: Settings,
    model_name: str,
    new_name: str | None = None,
    int8: bool = False,
    fp16: bool = False,
    optimize: bool = False,
    opset: int = 17,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Convert installed model `model_name`; returns the new YAML's path."""
    models_dir = Path(settings.models_dir)
    source = ModelRegistry(models_dir).get(model_name)
    src_dir = source.model_path(models_dir)
    if source.backend not in ("diffusers", ""):
        raise ConvertError(f"{model_name} uses the {source.backend} backend; only diffusers models can be converted")
    if not (src_dir / "model_index.json").is_file():
        raise ConvertError(f"{src_dir} is not a diffusers pipeline folder (no model_index.json)")
    new_name = new_name or f"{model_name}-onnx"
    if not NAME_PATTERN.match(new_name) or ".." in new_name:
        raise ConvertError(f"invalid model name {new_name!r}")
    yaml_path, out_dir = models_dir / f"{new_name}.yaml", models_dir / new_name
    if not overwrite and (yaml_path.exists() or out_dir.exists()):
        raise ConvertError(f"{new_name} already exists in {models_dir}; pick another --name or remove it")
    script = Path(settings.backends_dir) / "onnx" / "convert.py"
    if not script.is_file():
        raise ConvertError(f"{script} not found: the onnx backend is not installed")

    # Export into a scratch folder next to the target, then swap it in: a failed run leaves nothing.
    work = Path(tempfile.mkdtemp(prefix=f".{new_name}.", dir=models_dir))
    command = [settings.backend_python, str(script), str(src_dir), str(work), "--opset", str(opset)]
    command += [flag for flag, on in (("--int8", int8), ("--fp16", fp16), ("--optimize", optimize)) if on]
    if log:
        log(f"converting {model_name} ({src_dir}) to ONNX as {new_name}")
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise ConvertError(f"conversion failed (exit {result.returncode}):\n{tail}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    _write_yaml_atomic(yaml_path, converted_config(source, new_name, precision))
    return yaml_path


def cmd_convert(args: argparse.Namespace) -> int:
    """Handler for `localhost-ai convert onnx MODEL [--name NEW] [--int8] [--fp16] [--optimize]`."""
    settings = settings_from_args(args)
    try:
        path = convert_onnx(
            settings,
            args.model,
            new_name=args.name,
            int8=args.int8,
            fp16=args.fp16,
            optimize=args.optimize,
            opset=args.opset,
            overwrite=args.overwrite,
            log=lambda message: print(message, file=sys.stderr, flush=True),
        )
    except APIError as exc:  # ModelNotFound: its message lists the installed names
        print(f"Error: {exc.message}", file=sys.stderr)
        return 1
    except (ConvertError, OSError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"Installed {path.stem} ({path})")
    return 0


def add_convert_parser(
    subparsers: Any, add_settings_arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.ArgumentParser:
    """Adds `convert onnx ...` to the CLI's subparsers; returns the `convert` parser."""
    convert = subparsers.add_parser("convert", help="Convert an installed model for another backend.")
    kinds = convert.add_subparsers(dest="convert_kind", required=True)
    onnx = kinds.add_parser("onnx", help="Export a diffusers model to ONNX (runs with the onnx backend).")
    onnx.add_argument("model", help="installed model name")
    onnx.add_argument("--name", help="name of the new model (default MODEL-onnx)")
    onnx.add_argument("--int8", action="store_true", help="dynamic int8 quantization (smaller; CPU)")
    onnx.add_argument("--fp16", action="store_true", help="fp16 weights (for CUDA)")
    onnx.add_argument("--optimize", action="store_true", help="save ONNX Runtime-optimized graphs")
    onnx.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    onnx.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    if add_settings_arguments is not None:
        add_settings_arguments(onnx)
    onnx.set_defaults(func=cmd_convert)
    return convert
