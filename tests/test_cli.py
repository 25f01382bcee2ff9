"""The `courier serve` command as a user runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.procs import free_port


def test_serve_reads_a_toml_config_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "courier.toml"
    cfg.write_text(
        f'[courier]\nport = {port}\ndata-dir = "{tmp_path / "d"}"\nargon2_time_cost = 1\n'
        'metrics_listen = "127.0.0.1:0"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "courier", "serve", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert json.loads(r.read())["status"] == "ok"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert (tmp_path / "d" / "store").is_dir()


def test_bad_settings_exit_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "courier", "serve", "--data-dir", str(tmp_path)],
        env={"COURIER_SEND_RATE": "fast", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "COURIER_SEND_RATE" in result.stderr


def test_help_lists_serve() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "courier", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and "serve" in result.stdout
