"""A package index on 127.0.0.1 that the tests make: tiny wheels with upload times.

It speaks the JSON simple API (PEP 691) with PEP 700 ``upload-time`` fields, which both
``uv --exclude-newer`` and ``pip --uploaded-prior-to`` need. Wheels are built here with the
standard library (a wheel is a zip with METADATA, WHEEL and RECORD). The seed packages a new
environment needs (pip, and setuptools and wheel below Python 3.12) are rebuilt as wheels from
the distributions installed in the interpreter running the tests, so nothing is downloaded.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import importlib.metadata
import io
import json
import os
import re
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OLD = "2020-01-01T00:00:00Z"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def make_wheel(
    folder: Path,
    name: str,
    version: str,
    *,
    files: dict[str, bytes] | None = None,
    requires: list[str] | None = None,
    metadata: bytes | None = None,
    dist_info_files: dict[str, bytes] | None = None,
) -> Path:
    """A pure-Python wheel ``name-version-py3-none-any.whl`` in ``folder``.

    Without ``files`` it holds a module ``<name>`` whose ``VERSION`` is ``version``.
    """
    stem = f"{re.sub(r'[-.]+', '_', name)}-{version}"
    module = re.sub(r"[-.]+", "_", name).lower()
    contents = dict(files or {f"{module}/__init__.py": f'VERSION = "{version}"\n'.encode()})
    dist_info = f"{stem}.dist-info"
    if metadata is None:
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        lines += [f"Requires-Dist: {requirement}" for requirement in requires or []]
        metadata = ("\n".join(lines) + "\n").encode()
    contents[f"{dist_info}/METADATA"] = metadata
    contents[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: ersilia-pack-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    for relative, data in (dist_info_files or {}).items():
        contents[f"{dist_info}/{relative}"] = data
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, data in contents.items():
        writer.writerow([path, _record_hash(data), len(data)])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    contents[f"{dist_info}/RECORD"] = record.getvalue().encode()
    target = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
    return target


_NOT_COPIED = frozenset({"RECORD", "WHEEL", "INSTALLER", "REQUESTED", "direct_url.json"})


def wheel_of_installed(folder: Path, name: str) -> Path:
    """A wheel of the distribution ``name`` as installed here: its files and its metadata."""
    dist = importlib.metadata.distribution(name)
    files: dict[str, bytes] = {}
    dist_info_files: dict[str, bytes] = {}
    metadata = None
    for entry in dist.files or []:
        relative = entry.as_posix()
        located = Path(str(entry.locate()))
        if relative.startswith("..") or "__pycache__" in relative or not located.is_file():
            continue
        if ".dist-info/" in relative:
            inner = relative.split("/", 1)[1]
            if inner == "METADATA":
                metadata = located.read_bytes()
            elif inner not in _NOT_COPIED:
                dist_info_files[inner] = located.read_bytes()
        else:
            files[relative] = located.read_bytes()
    return make_wheel(
        folder,
        dist.metadata["Name"],
        dist.version,
        files=files,
        metadata=metadata,
        dist_info_files=dist_info_files,
    )


@dataclass
class Release:
    project: str
    version: str
    wheel: Path
    uploaded: str


@dataclass
class LocalIndex:
    """Wheels and their upload times, served as a JSON simple index."""

    folder: Path
    releases: list[Release] = field(default_factory=list)
    url: str = ""

    def add(
        self, project: str, version: str, uploaded: str, *, requires: list[str] | None = None
    ) -> None:
        wheel = make_wheel(self.folder, project, version, requires=requires)
        self.releases.append(Release(_normal(project), version, wheel, uploaded))

    def add_installed(self, name: str) -> None:
        """A distribution of the running interpreter, uploaded long ago."""
        wheel = wheel_of_installed(self.folder, name)
        version = importlib.metadata.version(name)
        self.releases.append(Release(_normal(name), version, wheel, OLD))

    def project_page(self, project: str) -> dict[str, object] | None:
        found = [release for release in self.releases if release.project == _normal(project)]
        if not found:
            return None
        files = []
        for release in found:
            data = release.wheel.read_bytes()
            files.append(
                {
                    "filename": release.wheel.name,
                    "url": f"{self.url}/files/{release.wheel.name}",
                    "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
                    "upload-time": release.uploaded,
                    "size": len(data),
                }
            )
        return {
            "meta": {"api-version": "1.1"},
            "name": _normal(project),
            "versions": sorted({release.version for release in found}),
            "files": files,
        }

    @property
    def simple(self) -> str:
        return f"{self.url}/simple"

    def env(self) -> dict[str, str]:
        """Variables that point uv and pip at this index and nothing else."""
        return {
            "UV_DEFAULT_INDEX": self.simple,
            "UV_INDEX_URL": self.simple,
            "PIP_INDEX_URL": self.simple,
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_FIND_LINKS": "",
            "PIP_EXTRA_INDEX_URL": "",
            "UV_NO_CONFIG": "1",
        }


class _Handler(BaseHTTPRequestHandler):
    index: LocalIndex

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    head_only = False

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self.head_only:
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.head_only = True
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        parts = [part for part in path.split("/") if part]
        if parts[:1] == ["simple"] and len(parts) == 1:
            projects = sorted({release.project for release in self.index.releases})
            body = {"meta": {"api-version": "1.1"}, "projects": [{"name": p} for p in projects]}
            self._send(200, json.dumps(body).encode(), "application/vnd.pypi.simple.v1+json")
        elif parts[:1] == ["simple"] and len(parts) == 2:
            page = self.index.project_page(parts[1])
            if page is None:
                self._send(404, b"not found", "text/plain")
            else:
                self._send(200, json.dumps(page).encode(), "application/vnd.pypi.simple.v1+json")
        elif parts[:1] == ["files"] and len(parts) == 2:
            wheel = self.index.folder / parts[1]
            if wheel.is_file() and wheel.parent == self.index.folder:
                self._send(200, wheel.read_bytes(), "application/octet-stream")
            else:
                self._send(404, b"not found", "text/plain")
        else:
            self._send(404, b"not found", "text/plain")


@contextlib.contextmanager
def serving(index: LocalIndex) -> Iterator[LocalIndex]:
    """Serve ``index`` on a free port of 127.0.0.1 for the duration of the block."""
    handler = type("Handler", (_Handler,), {"index": index})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    index.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def seed_packages() -> list[str]:
    """What ``uv venv --seed`` and a pip upgrade fetch, for this interpreter."""
    names = ["pip"]
    if sys.version_info < (3, 12):
        names += ["setuptools", "wheel", "packaging"]
    return names
