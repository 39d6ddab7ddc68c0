"""Install throughput: a plain httpx streaming download vs an install through ModelInstaller, same file, same server.

    .venv/bin/python bench/install_throughput.py [--size-mb 150] [--repeat 3]

Serves one random file from `python -m http.server` on 127.0.0.1 (a separate process, so it does not
share our GIL), then times (a) httpx streaming it to disk and (b) ModelInstaller installing it (sha256
while streaming, fsync, blob store, hard link, config written). Prints the best of --repeat runs of
each in MB/s and the ratio install/plain (1.0 = the installer costs nothing over a bare download). The
installer fsyncs each file before renaming it into place, so "plain + fsync" is printed as well: the
part of the gap that is the price of durability, not of the installer.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from localhost_ai.serving.installs import ModelInstaller
from localhost_ai.serving.registry import ModelRegistry
from localhost_ai.settings import Settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(folder: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.head(base + "/", timeout=1)
            return process, base
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the http.server process did not start")


def plain_download(url: str, dest: Path, durable: bool = False) -> float:
    start = time.perf_counter()
    with httpx.Client(timeout=60) as client, client.stream("GET", url) as response, open(dest, "wb") as out:
        response.raise_for_status()
        for chunk in response.iter_raw():
            out.write(chunk)
        if durable:
            out.flush()
            os.fsync(out.fileno())
    elapsed = time.perf_counter() - start
    dest.unlink()
    return elapsed


def installer_download(url: str, digest: str, work: Path) -> float:
    models = work / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir(parents=True)
    index = work / "index.yaml"
    config = "backend: diffusers\nparameters:\n  model: bench\n"
    entry = {
        "name": "bench",
        "config_file": config,
        "files": [{"filename": "bench/weights.bin", "sha256": digest, "uri": url}],
    }
    index.write_text(yaml.safe_dump([entry]))
    settings = Settings(models_dir=models, galleries=[f"bench={index}"])
    installer = ModelInstaller(settings, ModelRegistry(models))
    try:
        start = time.perf_counter()
        job = installer.wait(installer.apply({"id": "bench"}))
        elapsed = time.perf_counter() - start
    finally:
        installer.close()
    if job.error:
        raise RuntimeError(f"install failed: {job.error}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mb * 1_000_000
    with tempfile.TemporaryDirectory(prefix="install-bench-") as tmp:
        work = Path(tmp)
        served = work / "served"
        served.mkdir()
        hasher = hashlib.sha256()
        with open(served / "weights.bin", "wb") as out:
            for _ in range(args.size_mb):
                block = os.urandom(1_000_000)
                hasher.update(block)
                out.write(block)
        process, base = _serve(served)
        try:
            url = f"{base}/weights.bin"
            plain, durable, install = [], [], []
            for _ in range(args.repeat):  # interleaved, so drift in machine load hits all alike
                plain.append(plain_download(url, work / "plain.bin"))
                durable.append(plain_download(url, work / "plain.bin", durable=True))
                install.append(installer_download(url, hasher.hexdigest(), work))
        finally:
            process.terminate()
            process.wait(timeout=10)
    best_plain, best_durable, best_install = min(plain), min(durable), min(install)
    mb = size / 1e6
    print(f"file: {mb:.0f} MB over loopback HTTP, best of {args.repeat}")
    print(f"plain httpx stream to disk        : {mb / best_plain:8.1f} MB/s  ({best_plain:.2f} s)")
    print(f"plain httpx stream + fsync        : {mb / best_durable:8.1f} MB/s  ({best_durable:.2f} s)")
    print(f"ModelInstaller install            : {mb / best_install:8.1f} MB/s  ({best_install:.2f} s)")
    print(f"ratio install/plain (time)        : {best_install / best_plain:8.2f}x")
    print(f"ratio install/(plain+fsync) (time): {best_install / best_durable:8.2f}x")


if __name__ == "__main__":
    main()
