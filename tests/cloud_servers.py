"""Real object-store servers for tests: moto_server (S3), gcp-storage-emulator (GCS) and
Azurite (Azure Blob), each on a free loopback port, started once per session on first use and
stopped by its own pid at the end.

Use from any test module:

    from tests.cloud_servers import *  # noqa: F401,F403  (the fixtures below)

    def test_something(s3_server):
        boto3.client("s3", endpoint_url=s3_server.endpoint_url, ...)

Install what the servers need with `scripts/setup`.
"""

from __future__ import annotations

import atexit
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "ServerProcess",
    "CloudServer",
    "free_port",
    "start_moto",
    "start_gcs_emulator",
    "start_azurite",
    "s3_server",
    "gcs_server",
    "azure_server",
    "unique_name",
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
]

REPO = Path(__file__).resolve().parent.parent
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
INSTALL_HINT = "run scripts/setup (pip install -e '.[test]' and npm ci)"


def _die_with_parent() -> None:
    """Linux: SIGTERM the server if the process (thread) that started it dies, so a crashed or
    killed test run never leaves emulators behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique_name(prefix: str = "t") -> str:
    """A bucket/container name valid on all three services (lowercase, 3-63 chars)."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


@dataclass
class ServerProcess:
    """One server we started; stopped by its pid, never by name."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    ready_path: str = "/"
    env: dict | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,  # a Ctrl-C of pytest does not hit it; we stop it ourselves
            preexec_fn=_die_with_parent,
        )
        log.close()
        atexit.register(self.stop)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", self.ready_path)
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready on port {self.port} after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, like a crashed server or a pulled cable."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class CloudServer:
    kind: str
    process: ServerProcess
    endpoint_url: str
    extra: dict = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.process.port


def start_moto(workdir: Path, port: int | None = None) -> CloudServer:
    tool = _tool("moto_server")
    if not tool:
        raise FileNotFoundError(f"moto_server not found: {INSTALL_HINT}")
    port = port or free_port()
    proc = ServerProcess("moto_server", [tool, "-H", "127.0.0.1", "-p", str(port)], port, workdir / f"moto-{port}.log")
    proc.start()
    return CloudServer("s3", proc, f"http://127.0.0.1:{port}")


def start_gcs_emulator(workdir: Path, port: int | None = None) -> CloudServer:
    tool = _tool("gcp-storage-emulator")
    if not tool:
        raise FileNotFoundError(f"gcp-storage-emulator not found: {INSTALL_HINT}")
    port = port or free_port()
    argv = [tool, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    proc = ServerProcess("gcp-storage-emulator", argv, port, workdir / f"gcs-{port}.log", ready_path="/storage/v1/b")
    proc.start()
    return CloudServer("gcs", proc, f"http://127.0.0.1:{port}")


def start_azurite(workdir: Path, port: int | None = None) -> CloudServer:
    main_js = REPO / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
    node = shutil.which("node")
    if not node or not main_js.exists():
        raise FileNotFoundError(f"Azurite not installed ({main_js}): {INSTALL_HINT}")
    port = port or free_port()
    argv = [
        node,
        str(main_js),
        "--silent",
        "--disableTelemetry",
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
    ]
    proc = ServerProcess("azurite", argv, port, workdir / f"azurite-{port}.log")
    proc.start()
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint};"
    )
    return CloudServer("azure", proc, endpoint, {"connection_string": conn})


def _session_server(tmp_path_factory, starter):
    workdir = tmp_path_factory.mktemp("cloud-servers")
    try:
        server = starter(workdir)
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto_server. Credentials: any ("testing"/"testing"); region us-east-1; path-style."""
    server = _session_server(tmp_path_factory, start_moto)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    yield server
    server.process.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """gcp-storage-emulator, in memory. Sets STORAGE_EMULATOR_HOST for the session (the google
    client and GCSStorage honour it)."""
    server = _session_server(tmp_path_factory, start_gcs_emulator)
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.endpoint_url
    yield server
    server.process.stop()
    if saved is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = saved


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory):
    """Azurite's blob service, in memory. `azure_server.extra["connection_string"]`."""
    server = _session_server(tmp_path_factory, start_azurite)
    yield server
    server.process.stop()


# -- fault injection ---------------------------------------------------------------------------


class FaultProxy:
    """A tiny HTTP/1.1 forward proxy on loopback that sits between a client and a server and
    misbehaves on demand: answers with an HTTP error, resets the connection, or flips a byte of
    a request body, for the next N matching requests; everything else is forwarded untouched.

        proxy = FaultProxy(server.port).start()
        proxy.fail(3, status=503, methods={"PUT"})   # the next three PUTs get a 503
        ...
        proxy.stop()
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        import threading

        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._rules: list[dict] = []
        self._lock = threading.Lock()
        #: (method, path, what happened: "forwarded <status>" | "failed <status>" | "reset" | "corrupted <status>")
        self.log: list[tuple[str, str, str]] = []
        #: (method, path, request headers as sent by the client)
        self.headers_seen: list[tuple[str, str, dict]] = []
        self._server = None
        self._thread = None
        #: rules without their own path_contains only match paths containing this (if set)
        self.default_path: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, count: int, status: int = 503, code: str = "ServiceUnavailable", methods=None, path_contains=None):
        self._add({"action": "fail", "count": count, "status": status, "code": code, "methods": methods, "path": path_contains})

    def reset(self, count: int, methods=None, path_contains=None):
        self._add({"action": "reset", "count": count, "methods": methods, "path": path_contains})

    def delay(self, count: int, seconds: float, methods=None, path_contains=None):
        """Answer the next N matching requests only after `seconds` (a slow or stalled server)."""
        self._add({"action": "delay", "count": count, "seconds": seconds, "methods": methods, "path": path_contains})

    def corrupt(self, count: int, methods=("PUT",), path_contains=None):
        self._add({"action": "corrupt", "count": count, "methods": set(methods), "path": path_contains})

    def clear(self):
        with self._lock:
            self._rules.clear()
            self.log.clear()
            self.headers_seen.clear()

    def outcomes(self, method: str | None = None) -> list[str]:
        with self._lock:
            return [what for m, _path, what in self.log if method is None or m == method]

    def _add(self, rule: dict):
        with self._lock:
            self._rules.append(rule)

    def _take(self, method: str, path: str) -> dict | None:
        with self._lock:
            for rule in self._rules:
                if rule["count"] <= 0:
                    continue
                if rule["methods"] and method not in rule["methods"]:
                    continue
                wanted = rule["path"] or self.default_path
                if wanted and wanted not in path:
                    continue
                rule["count"] -= 1
                return rule
        return None

    def _record(self, method: str, path: str, what: str):
        with self._lock:
            self.log.append((method, path, what))

    def start(self) -> "FaultProxy":
        import http.server
        import threading

        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                method, path = self.command, self.path
                body = self._body()
                with proxy._lock:
                    proxy.headers_seen.append((method, path, {k.lower(): v for k, v in self.headers.items()}))
                rule = proxy._take(method, path)
                if rule and rule["action"] == "reset":
                    proxy._record(method, path, "reset")
                    import struct

                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if rule and rule["action"] == "fail":
                    proxy._record(method, path, f"failed {rule['status']}")
                    payload = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{rule["code"]}</Code>'
                        f"<Message>injected by FaultProxy</Message></Error>"
                    ).encode()
                    self.send_response(rule["status"])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("x-ms-error-code", rule["code"])
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(payload)
                    return
                if rule and rule["action"] == "delay":
                    time.sleep(rule["seconds"])
                corrupted = False
                if rule and rule["action"] == "corrupt" and body:
                    middle = len(body) // 2
                    body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
                    corrupted = True
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "transfer-encoding", "content-length", "proxy-connection")}
                if body or method in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(method, path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                    status = response.status
                    out_headers = response.getheaders()
                except OSError:
                    proxy._record(method, path, "upstream down")
                    self.close_connection = True
                    self.connection.close()
                    return
                finally:
                    conn.close()
                proxy._record(method, path, f"{'corrupted' if corrupted else 'forwarded'} {status}")
                self.send_response_only(status, response.reason)
                length_sent = False
                for key, value in out_headers:
                    lower = key.lower()
                    if lower in ("transfer-encoding", "connection"):
                        continue
                    if lower == "content-length":
                        if method == "HEAD":
                            self.send_header(key, value)
                            length_sent = True
                        continue
                    self.send_header(key, value)
                if method != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                elif not length_sent:
                    self.send_header("Content-Length", "0")
                self.end_headers()
                if method != "HEAD" and payload:
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


__all__.append("FaultProxy")
