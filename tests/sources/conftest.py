"""A real HTTP server on 127.0.0.1 for the download tests, and builders of small archives in
each dataset's real format (made on the fly; nothing binary is checked in)."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import socket
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from dicom_support import ct_dataset
from pipeline.sources.http_fetch import FetchSettings

SERVER_LIFETIME_S = 120  # the server shuts itself down even if a test hangs


@pytest.fixture(autouse=True)
def own_download_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own download cache and staging (the default is the user's ~/.cache)."""
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("MEDGAN_CACHE_DIR", str(cache))
    return cache


@dataclasses.dataclass
class Route:
    body: bytes
    drop_after: int | None = None  # the first GET sends this many bytes, then drops the connection
    auth: tuple[str, str] | None = None  # basic-auth credentials the route demands
    statuses_first: list[int] = dataclasses.field(default_factory=list)  # answered before the body
    ignore_range: bool = False


@dataclasses.dataclass(frozen=True)
class Seen:
    path: str
    range: str | None
    authorization: str | None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client hanging up (the code under test gave up) is expected; anything else is shown."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FileServer:
    """Serves registered byte strings, records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._watchdog = threading.Timer(SERVER_LIFETIME_S, self._httpd.shutdown)
        self._watchdog.daemon = True

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, body: bytes, **options: object) -> str:
        self.routes[path] = Route(body, **options)
        return self.url(path)

    def requests_for(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def start(self) -> None:
        self._thread.start()
        self._watchdog.start()

    def stop(self) -> None:
        self._watchdog.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 5

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            with server._lock:
                server.seen.append(Seen(path, self.headers.get("Range"), self.headers.get("Authorization")))
                route = server.routes.get(self.path) or server.routes.get(path)  # "path?query" routes first (TCIA's API)
                status_first = route.statuses_first.pop(0) if route and route.statuses_first else None
                drop_after = route.drop_after if route else None
                if route:
                    route.drop_after = None
            if route is None:
                return self._reply(404, b"not found")
            if route.auth and self.headers.get("Authorization") != _basic(route.auth):
                return self._reply(401, b'{"code":401,"message":"Unauthenticated"}')
            if status_first is not None:
                return self._reply(status_first, b"try again")
            body = route.body
            requested = self.headers.get("Range")
            if requested and not route.ignore_range:
                start = int(requested.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    return self._reply(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return self._reply(
                    206, body[start:], {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
                )
            if drop_after is not None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:drop_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            return self._reply(200, body)

        def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


@pytest.fixture
def server() -> FileServer:
    file_server = FileServer()
    file_server.start()
    yield file_server
    file_server.stop()


@pytest.fixture
def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused, like a machine offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/IXI-T2.tar"


@pytest.fixture
def fast() -> FetchSettings:
    """Retries without real waiting, no disk margin, log lines instead of a bar."""
    return FetchSettings(
        retries=2, backoff_s=0.01, timeout_s=5.0, chunk_bytes=4096, free_space_margin_bytes=0, progress=False
    )


class Build:
    """Small files in the formats the real datasets ship."""

    @staticmethod
    def nifti_gz(seed: int, shape: tuple[int, int, int] = (6, 5, 4)) -> bytes:
        data = np.random.default_rng(seed).random(shape, dtype=np.float32)
        return gzip.compress(nib.Nifti1Image(data, np.diag([0.94, 0.94, 1.2, 1.0])).to_bytes(), mtime=0)

    @staticmethod
    def dicom(seed: int) -> bytes:
        ds = ct_dataset(generate_uid(entropy_srcs=[str(seed)]))
        ds.Modality = "CT"
        ds.Rows, ds.Columns = 4, 4
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.random.default_rng(seed).integers(0, 2000, (4, 4), dtype=np.int16).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    @staticmethod
    def jpeg(seed: int) -> bytes:
        pixels = np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG")
        return buffer.getvalue()

    @staticmethod
    def zip(members: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return buffer.getvalue()

    @staticmethod
    def tar(members: dict[str, bytes], compression: str = "") -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return buffer.getvalue()


@pytest.fixture
def build() -> Build:
    return Build()


@pytest.fixture
def write(tmp_path: Path):
    """write(name, bytes) -> path under tmp_path/inputs."""

    def _write(name: str, data: bytes) -> Path:
        path = tmp_path / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    return _write
