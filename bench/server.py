"""Start the bench's own Courier server as a subprocess, and stop it by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

BENCH_METRICS_TOKEN = "bench-metrics-token-for-loopback-only"
BENCH_ENV = {
    # Every client comes from loopback: no per-address caps or throttles.
    "COURIER_MAX_CONNECTIONS_PER_ADDRESS": "0",
    "COURIER_REGISTER_RATE_PER_ADDRESS": "0",
    "COURIER_LOGIN_RATE_PER_ADDRESS": "0",
    "COURIER_LOGIN_FAILURE_RATE_PER_USER": "0",
    # /metrics on the server's own port, behind a token, instead of a fixed second port.
    "COURIER_METRICS_LISTEN": "off",
    "COURIER_METRICS_TOKEN": BENCH_METRICS_TOKEN,
    "COURIER_SEND_RATE": "1000000",
    "COURIER_SEND_BURST": "1000000",
    "COURIER_FRAME_RATE": "1000000",
    "COURIER_FRAME_BURST": "1000000",
    "COURIER_MAX_CONNECTIONS_PER_USER": "100000",
}


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def courier_command() -> list[str]:
    script = Path(sys.executable).parent / "courier"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from courier.cli import main; sys.exit(main())"]


class ServerProcess:
    """One `courier serve` on a loopback port; its output goes to a log file."""

    def __init__(
        self, data_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.host = "127.0.0.1"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("server not started")
        return self.proc.pid

    async def start(self, wait_s: float = 60.0) -> None:
        """Launch (again, after a kill: same port, same data dir) and wait for /healthz."""
        self.launch()
        await self.wait_healthy(wait_s)

    async def wait_listening(self, wait_s: float = 60.0) -> bool:
        """Until the port accepts TCP connections (which can be well before /healthz answers,
        when a crowd of clients reaches the server first)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            return True
        return False

    def kill(self) -> int | None:
        """SIGKILL, as a crash: no shutdown code runs. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.proc = None
        return proc.returncode

    def launch(self) -> None:
        raise_fd_limit()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **BENCH_ENV, **self.extra_env}
        args = [
            *courier_command(),
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
            )

    async def wait_healthy(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode}; see {self.log_path}"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    async with session.get(
                        f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not healthy after {wait_s:.0f} s; see {self.log_path}")

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)
        self.proc = None
        return proc.returncode
