"""The `localhost-ai` command: serve | run MODEL PROMPT | ps | stop MODEL | models ... | convert ... | backends."""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx

from localhost_ai.convert_cli import add_convert_parser
from localhost_ai.settings import Settings, add_settings_arguments, settings_from_args


def _base_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def cmd_serve(args: argparse.Namespace) -> int:
    from localhost_ai.server import serve_forever

    serve_forever(settings_from_args(args))
    return 0


def _generate(base_url: str, body: dict) -> dict:
    """POST with stream=true, print `Generating: step N/M` as progress arrives, return the final response."""
    result: dict | None = None
    event = ""
    with httpx.stream("POST", f"{base_url}/v1/images/generations", json={**body, "stream": True}, timeout=None) as r:
        if r.status_code != 200:
            r.read()
            raise SystemExit(f"Error: {r.json().get('error', {}).get('message', r.text)}")
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                if event == "progress":
                    print(f"\rGenerating: step {data['step']}/{data['total']}", end="", file=sys.stderr, flush=True)
                elif event == "error":
                    print(file=sys.stderr)
                    raise SystemExit(f"Error: {data['error']['message']}")
                elif event == "done":
                    result = data
    print(file=sys.stderr)
    if result is None:
        raise SystemExit("Error: the server closed the stream without a result")
    return result


def cmd_run(args: argparse.Namespace) -> int:
    from localhost_ai.server import BackgroundServer, is_up

    settings = settings_from_args(args)
    body: dict = {"model": args.model, "prompt": args.prompt, "n": args.n, "response_format": "b64_json"}
    for key, value in (
        ("size", args.size),
        ("num_inference_steps", args.steps),
        ("seed", args.seed),
        ("negative_prompt", args.negative),
        ("guidance_scale", args.guidance),
    ):
        if value is not None:
            body[key] = value
    base_url = _base_url(settings)
    if is_up(base_url):
        result = _generate(base_url, body)
    else:
        with BackgroundServer(settings) as server:
            result = _generate(server.base_url, body)
    output = Path(args.output or f"{args.model}-{result['data'][0].get('seed', 0)}.png")
    for i, item in enumerate(result["data"]):
        path = output if i == 0 else output.with_name(f"{output.stem}-{i}{output.suffix}")
        path.write_bytes(base64.b64decode(item["b64_json"]))
        print(f"Image saved to: {path.resolve()}")
        if sys.platform == "darwin" and not args.no_open:
            subprocess.run(["open", str(path)], check=False)
    return 0


def _get(settings: Settings, path: str) -> dict:
    try:
        response = httpx.get(_base_url(settings) + path, timeout=10)
    except httpx.HTTPError:
        raise SystemExit(
            f"Error: no server answers at {_base_url(settings)} (start one with `localhost-ai serve`)"
        ) from None
    return response.json()


def cmd_ps(args: argparse.Namespace) -> int:
    models = _get(settings_from_args(args), "/api/ps")["models"]
    print(f"{'NAME':<24} {'BACKEND':<10} {'PID':>8} {'IDLE':>8} {'CALLS':>6}")
    for m in models:
        print(f"{m['name']:<24} {m['backend']:<10} {m['pid']:>8} {m['idle_seconds']:>7.0f}s {m['generate_calls']:>6}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    response = httpx.post(_base_url(settings) + "/api/stop", json={"model": args.model}, timeout=30)
    if response.status_code != 200:
        raise SystemExit(f"Error: {response.json()['error']['message']}")
    print(f"{args.model}: {'unloaded' if response.json()['unloaded'] else 'was not loaded'}")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from localhost_ai.serving.backends import list_backends

    settings = settings_from_args(args)
    for backend in list_backends(Path(settings.backends_dir), settings.backend_python):
        state = "usable" if backend["usable"] else "not usable"
        print(f"{backend['name']:<10} {state:<11} {backend['reason']}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from localhost_ai import gallery_cli

    settings = settings_from_args(args)
    base_url = _base_url(settings)
    if args.models_command == "list":
        return gallery_cli.models_list(base_url, settings) or 0
    if args.models_command == "apply":
        return gallery_cli.models_apply(base_url, args.id, name=args.name, settings=settings) or 0
    return gallery_cli.models_rm(base_url, args.name, settings=settings) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localhost-ai", description="Self-hosted OpenAI-compatible image generation.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Start the HTTP server.")
    add_settings_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    run = sub.add_parser("run", help="Generate an image (through a running server, or one started in-process).")
    run.add_argument("model")
    run.add_argument("prompt")
    run.add_argument("--size", help="WIDTHxHEIGHT (default: the model's size)")
    run.add_argument("--steps", type=int)
    run.add_argument("--seed", type=int)
    run.add_argument("--negative", help="negative prompt")
    run.add_argument("--guidance", type=float, help="guidance scale")
    run.add_argument("-n", type=int, default=1, help="number of images")
    run.add_argument("-o", "--output", help="output file (default: MODEL-SEED.png)")
    run.add_argument("--no-open", action="store_true", help="do not open the image (macOS)")
    add_settings_arguments(run)
    run.set_defaults(func=cmd_run)

    for name, func, text in (
        ("ps", cmd_ps, "List loaded models."),
        ("backends", cmd_backends, "Which backends work here."),
    ):
        p = sub.add_parser(name, help=text)
        add_settings_arguments(p)
        p.set_defaults(func=func)

    stop = sub.add_parser("stop", help="Unload a model.")
    stop.add_argument("model")
    add_settings_arguments(stop)
    stop.set_defaults(func=cmd_stop)

    models = sub.add_parser("models", help="List, install and remove models.")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    m_list = models_sub.add_parser("list", help="Installed and available models.")
    m_apply = models_sub.add_parser("apply", help="Install a gallery model by id or URL.")
    m_apply.add_argument("id")
    m_apply.add_argument("--name", help="install under this name")
    m_rm = models_sub.add_parser("rm", help="Remove an installed model.")
    m_rm.add_argument("name")
    for p in (m_list, m_apply, m_rm):
        add_settings_arguments(p)
        p.set_defaults(func=cmd_models)

    add_convert_parser(sub, add_settings_arguments)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
