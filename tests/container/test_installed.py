"""Images from an ordinary install: ``pip install ersilia-pack`` (no source checkout) builds
the base image from a wheel of the installed files, offline.

The install is real and non-editable, into a fresh venv (``pip install --no-deps`` of a copy of
this checkout, built with no download); its dependencies come from the test interpreter's
site-packages, which the venv sees through a plain path in a ``.pth`` file (so the editable
ersilia-pack there stays out of sight). The image test builds with real podman on the python
stand-in, as tests/container/test_image.py does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import FIXTURES, ROOT

pytestmark = pytest.mark.slow
STANDIN = "localhost/python-standin:3.11-slim"
TAG = "localhost/ersilia-pack-test/installed-stdlib-simple:ci"
BUILD_TIMEOUT = 1500


@dataclass(frozen=True)
class Installed:
    python: Path
    package: Path  # the installed ersilia_pack folder

    @property
    def script(self) -> Path:
        return self.python.parent / "ersilia_pack"


def _run(*command: str | Path, **options: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, check=False, **options
    )  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """ersilia-pack installed from a copy of this checkout, not editable, in a fresh venv."""
    work = tmp_path_factory.mktemp("installed")
    source = work / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("ersilia_pack", "templates"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    venv = work / "venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", venv).returncode == 0
    python = venv / "bin" / "python"
    purelib = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    )
    # a path, not site.addsitedir: the .pth files there (the editable install) are not read
    (purelib / "outer_site.pth").write_text(sysconfig.get_path("purelib") + "\n")
    done = _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--quiet",
        source,
        cwd=work,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    where = _run(python, "-c", "import ersilia_pack; print(ersilia_pack.__file__)", cwd=work)
    package = Path(where.stdout.strip()).parent
    assert package.parent == purelib, where.stdout + where.stderr  # the installed copy
    return Installed(python=python, package=package)


def _hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_the_base_context_of_an_installed_package_is_a_wheel_of_its_files(
    installed: Installed, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    code = (
        "import json, pathlib, sys; from ersilia_pack.containerize import _base_context; "
        "print(json.dumps(_base_context(pathlib.Path(sys.argv[1]))))"
    )
    first = _run(installed.python, "-c", code, context, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    digest, package = json.loads(first.stdout)

    wheel = context / "ersilia_pack-0.2.0-py3-none-any.whl"
    assert sorted(path.name for path in context.iterdir()) == ["Dockerfile.base", wheel.name]
    assert package == f"/tmp/ersilia-pack/{wheel.name}"
    with zipfile.ZipFile(wheel) as archive:
        inside = {name: archive.read(name) for name in archive.namelist()}
    on_disk = {
        f"ersilia_pack/{path.relative_to(installed.package).as_posix()}": path.read_bytes()
        for path in installed.package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert _hashes({k: v for k, v in inside.items() if k.startswith("ersilia_pack/")}) == (
        _hashes(on_disk)
    )
    assert "ersilia_pack/templates/container/Dockerfile.base" in inside
    metadata = inside["ersilia_pack-0.2.0.dist-info/METADATA"].decode()
    assert "Requires-Dist: fastapi" in metadata and "Provides-Extra: redis" in metadata
    assert (
        b"ersilia_pack = ersilia_pack.cli:pack_command"
        in (inside["ersilia_pack-0.2.0.dist-info/entry_points.txt"])
    )
    # the same installed files, the same wheel: the base image's tag stays put
    again = tmp_path / "again"
    again.mkdir()
    second = _run(installed.python, "-c", code, again, cwd=tmp_path)
    assert json.loads(second.stdout) == [digest, package]

    # and pip installs that wheel, console scripts included
    target = tmp_path / "target"
    done = _run(
        sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", target, wheel
    )
    assert done.returncode == 0, done.stderr
    assert (target / "ersilia_pack" / "templates" / "container" / "Dockerfile.j2").is_file()
    assert (target / "bin" / "ersilia_serve").is_file()


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return _run("podman", *args, timeout=timeout)


def test_containerize_from_an_installed_package_builds_and_packs(
    installed: Installed, tmp_path: Path
) -> None:
    assert shutil.which("podman"), "podman is missing: apt-get install podman (as .ci/run does)"
    assert podman("image", "exists", STANDIN).returncode == 0, (
        f"{STANDIN} is missing: run scripts/make-python-standin.sh (as .ci/run does)"
    )
    done = _run(
        installed.script,
        "containerize",
        "--model_dir",
        FIXTURES / "stdlib-simple",
        "-t",
        TAG,
        "--base",
        STANDIN,
        "--engine",
        "podman",
        cwd=tmp_path,
        timeout=BUILD_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    assert "is not one" not in done.stderr
    assert f"ersilia-pack 0.2.0 as installed in {installed.package.parent}" in done.stderr
    assert f"built {TAG} with podman" in done.stdout
    # the image's ersilia_pack is the installed one, file for file
    listing = (
        "import hashlib, json, pathlib, ersilia_pack; "
        "root = pathlib.Path(ersilia_pack.__file__).parent; "
        "print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() "
        "for p in root.rglob('*.py') if '__pycache__' not in p.parts}))"
    )
    inside = podman("run", "--rm", TAG, "python3", "-c", listing)
    assert inside.returncode == 0, inside.stderr
    here = {
        str(path.relative_to(installed.package)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in installed.package.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert json.loads(inside.stdout) == here
    # the model was packed at build time: its bundle is done
    status = podman(
        "run", "--rm", TAG, "sh", "-c", "cat /eos/repository/stdlib-simple/*/status.json"
    )
    assert json.loads(status.stdout) == {"done": True}, status.stderr
    podman("rmi", TAG)
