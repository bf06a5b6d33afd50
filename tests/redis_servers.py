"""Throwaway redis-server instances for tests: `from tests.redis_servers import *`.

Each server listens on a free loopback port with its own directory, never 6379, and is stopped
by its own pid. `redis_factory()` starts one (extra config as keyword arguments);
`redis_server` is a fresh server for one test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

import pytest

REDIS_SERVER = shutil.which("redis-server")

__all__ = ["RedisServer", "free_port", "redis_factory", "redis_server", "needs_redis"]

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    port: int
    dir: str
    proc: subprocess.Popen
    password: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, db: int = 0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start(base: str, password: str | None = None, **config: str) -> RedisServer:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix=f"redis-{port}-", dir=base)
    args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", data_dir,
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", os.path.join(data_dir, "log")]
    if password:
        args += ["--requirepass", password]
    for key, value in config.items():
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        args += [f"--{key.replace('_', '-')}", *map(str, values)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port=port, dir=data_dir, proc=proc, password=password)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited: see {data_dir}/log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return server
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"redis-server on port {port} did not start")


@pytest.fixture(scope="session")
def redis_factory():
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    base = tempfile.mkdtemp(prefix="insite-redis-tests-")
    servers: list[RedisServer] = []

    def start(password: str | None = None, **config: str) -> RedisServer:
        server = _start(base, password=password, **config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def redis_server(redis_factory):
    server = redis_factory()
    yield server
    server.stop()
