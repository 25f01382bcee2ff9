"""Run `courier serve` as a real subprocess, on a fixed port and data dir so that it can be
killed and started again (crash tests, the SDK's and the web app's recovery tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Tests' clients all come from loopback: no per-address caps or throttles unless a test sets them.
LOOPBACK_CLIENTS = {
    "COURIER_MAX_CONNECTIONS_PER_ADDRESS": "0",
    "COURIER_REGISTER_RATE_PER_ADDRESS": "0",
    "COURIER_LOGIN_RATE_PER_ADDRESS": "0",
    "COURIER_LOGIN_FAILURE_RATE_PER_USER": "0",
}


class ServerProcess:
    def __init__(
        self, data_dir: Path, port: int | None = None, log_path: Path | None = None, **env: str
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "COURIER_ARGON2_TIME_COST": "1",  # cheap hashing keeps the tests fast
            "COURIER_ARGON2_MEMORY_KIB": "8192",
            "COURIER_LOG_LEVEL": "warning",
            **LOOPBACK_CLIENTS,
            "COURIER_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start and wait until /healthz answers 200."""
        cmd = [
            sys.executable,
            "-m",
            "courier",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            out = self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"courier serve exited with {self.process.returncode}: {self.log()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"courier serve did not become healthy: {self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a power cut for the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self._close_log()

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._close_log()
        return self.process.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
