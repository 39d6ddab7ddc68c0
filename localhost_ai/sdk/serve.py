"""`serve(backend)`: the main loop of every backend process.

Binds 127.0.0.1:0 (or --addr), prints `LOCALHOST_AI_BACKEND_PORT <port>` on stdout so the host
learns the port without a free-port race, and exits when its parent process dies.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from localhost_ai.proto import backend_pb2_grpc as pb_grpc
from localhost_ai.sdk.base import ImageBackend
from localhost_ai.sdk.servicer import BackendServicer

PORT_MARKER = "LOCALHOST_AI_BACKEND_PORT"
MAX_MESSAGE_BYTES = 512 * 1024 * 1024

log = logging.getLogger(__name__)


def _die_with_parent(parent_pid: int) -> None:
    """Exit as soon as the parent is gone: prctl on Linux, and a polling thread everywhere."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    if parent_pid > 1:
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(backend: ImageBackend, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=f"localhost-ai {backend.name} backend")
    parser.add_argument("--addr", default="127.0.0.1:0", help="host:port to listen on (port 0 = any)")
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")

    _die_with_parent(args.parent_pid)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=8, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    pb_grpc.add_BackendServicer_to_server(BackendServicer(backend), server)
    port = server.add_insecure_port(args.addr)
    if port == 0:
        print(f"could not bind {args.addr}", file=sys.stderr)
        sys.exit(1)
    server.start()
    print(f"{PORT_MARKER} {port}", flush=True)
    log.info("%s backend listening on port %d", backend.name, port)

    stopped = threading.Event()

    def on_signal(signum, frame) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopped.wait()
    server.stop(grace=1).wait()
