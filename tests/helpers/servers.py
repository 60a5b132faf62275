"""Real local servers for integration tests: an MLflow tracking server and moto's S3.

Each server runs in its own process group (``start_new_session``) so that stopping it
also ends its worker children (uvicorn, the job runner). Nothing here reaches the network
beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
#: No telemetry, no update checks, for this process and every server started here.
OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A server started by a test: its URL, process and log file."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the whole process group (SIGTERM, then SIGKILL) and reap the leader."""
        stop_group(self.proc, timeout)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """End ``proc`` and every process in its group (SIGTERM, then SIGKILL); idempotent."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):  # children that ignored SIGTERM
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )


def start_mlflow_server(root: Path, timeout: float = 60.0) -> ServerProcess:
    """Start ``mlflow server`` (sqlite backend, proxied artifacts under ``root``)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    # the server's background job runner is not needed for tracking
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = root / "server.log"
    proc = _spawn(cmd, log_path, env)
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(url, proc, log_path)
    try:
        wait_http(f"{url}/health", proc, timeout)
    except Exception as exc:
        server.stop()
        raise RuntimeError(f"{exc}\n--- server log ---\n{server.log_tail()}") from exc
    return server


def start_moto_server(root: Path, timeout: float = 30.0) -> ServerProcess:
    """Start moto's standalone server (S3 and friends) on a free port."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = root / "moto.log"
    proc = _spawn([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log_path)
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(url, proc, log_path)
    try:
        wait_http(f"{url}/moto-api/", proc, timeout)
    except Exception as exc:
        server.stop()
        raise RuntimeError(f"{exc}\n--- moto log ---\n{server.log_tail()}") from exc
    return server
