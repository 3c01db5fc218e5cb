"""Real images with real podman: the base image on the python stand-in, the demo model's image on
it, a container serving the demo on a mapped port, and the build's errors as a user sees them.

The stand-in for python:3.11-slim (``scripts/make-python-standin.sh``, run by ``.ci/run``) is
needed because this machine cannot pull images; the images built on it are real.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import DEMO_DIR, FIXTURES, ROOT, run_command

from ersilia_pack.containerize import CA_TARGET, PIP_CONF_TARGET
from ersilia_pack.model_dir import read_model_dir

STANDIN = "localhost/python-standin:3.11-slim"
TAG = "localhost/ersilia-pack-test/eos-demo:ci"
BUILD_TIMEOUT = 1500
pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT + 300)]


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass(frozen=True)
class Built:
    tag: str
    base_tag: str
    output: str
    image_id: str


@pytest.fixture(scope="module")
def built() -> Built:
    """The base image (built when missing) and the demo's image, built once for this module."""
    assert podman("image", "exists", STANDIN).returncode == 0, (
        f"{STANDIN} is missing: run scripts/make-python-standin.sh (as .ci/run does)"
    )
    done = run_command(
        "ersilia_pack",
        "containerize",
        "--model_dir",
        DEMO_DIR,
        "-t",
        TAG,
        "--base",
        STANDIN,
        "--engine",
        "podman",
        timeout=BUILD_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    match = re.search(r"on (localhost/ersilia-pack-base:\S+),", done.stdout)
    assert match, done.stdout
    return Built(tag=TAG, base_tag=match.group(1), output=done.stdout, image_id=image_id(TAG))


def image_id(tag: str) -> str:
    done = podman("image", "inspect", "--format", "{{.Id}}", tag)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def inspect(tag: str) -> dict[str, Any]:
    done = podman("image", "inspect", tag)
    assert done.returncode == 0, done.stderr
    image: dict[str, Any] = json.loads(done.stdout)[0]
    return image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def container(tag: str, port: int) -> Iterator[str]:
    """Run ``tag`` detached with its port 80 on ``port``; its name. Removed on the way out."""
    name = f"ersilia-pack-test-{port}"
    # Docker lets a non-root user bind port 80 in every container; podman needs the sysctl.
    started = podman(
        "run",
        "--detach",
        "--name",
        name,
        "--sysctl",
        "net.ipv4.ip_unprivileged_port_start=80",
        "--publish",
        f"127.0.0.1:{port}:80",
        tag,
    )
    try:
        assert started.returncode == 0, started.stderr
        yield name
    finally:
        podman("stop", "--time", "10", name, timeout=60)
        podman("rm", "--force", name, timeout=60)


def http(method: str, url: str, payload: Any = None) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def wait_ready(base_url: str, name: str, within: float = 180) -> dict[str, Any]:
    """Poll ``/readyz`` until 200; fails with the container's log when it never gets there."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, body = http("GET", f"{base_url}/readyz")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            last = error
        else:
            if status == 200:
                assert isinstance(body, dict)
                return body
            last = (status, body)
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state not in ("running", "created", "configured"):
            break
        time.sleep(0.5)
    logs = podman("logs", name)
    raise AssertionError(f"never ready ({last}); log:\n{logs.stdout}{logs.stderr}")


def examples(api: str) -> tuple[list[str], list[dict[str, str]]]:
    folder = DEMO_DIR / "model" / "framework" / "examples"
    with (folder / f"{api}_input.csv").open() as handle:
        inputs = [row[0] for row in list(csv.reader(handle))[1:]]
    with (folder / f"{api}_output.csv").open() as handle:
        outputs = list(csv.DictReader(handle))
    return inputs, outputs


def assert_rows_match(rows: list[dict[str, Any]], expected: list[dict[str, str]]) -> None:
    """Rows as the demo's example output has them: numbers within 1e-4, strings equal."""
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert row.keys() == want.keys()
        for column, text in want.items():
            value = row[column]
            if isinstance(value, str):
                assert value == text, (column, row, want)
            else:
                assert math.isclose(value, float(text), rel_tol=1e-4), (column, row, want)


def test_base_image_holds_ersilia_pack_on_the_standin(built: Built) -> None:
    assert "with podman" in built.output
    assert f"above {STANDIN} take" in built.output
    base = inspect(built.base_tag)
    standin = inspect(STANDIN)
    # Layers on top of the stand-in's, not a copy of it.
    assert (
        base["RootFS"]["Layers"][: len(standin["RootFS"]["Layers"])] == standin["RootFS"]["Layers"]
    )
    assert base["Size"] > standin["Size"]
    done = podman(
        "run", "--rm", built.base_tag, "sh", "-c", "ersilia_pack --version && id -u ersilia"
    )
    assert done.returncode == 0, done.stderr
    assert "ersilia_pack" in done.stdout
    assert done.stdout.split()[-1] == "10001"


def test_base_image_holds_these_sources(built: Built) -> None:
    """Every module of the package in the base image is the one here, not a cached older one."""
    package = ROOT / "ersilia_pack"
    here = {
        str(path.relative_to(package)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(package.rglob("*.py"))
        if "__pycache__" not in path.parts
    }
    listing = (
        "import hashlib, json, pathlib, ersilia_pack; "
        "root = pathlib.Path(ersilia_pack.__file__).parent; "
        "print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() "
        "for p in root.rglob('*.py') if 'templates' not in p.parts "
        "and '__pycache__' not in p.parts}))"
    )
    done = podman("run", "--rm", built.base_tag, "python3", "-c", listing)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == here


def test_model_image_serves_as_a_user_on_port_80_with_a_health_check(built: Built) -> None:
    image = inspect(built.tag)
    config = image["Config"]
    assert config["User"] == "10001:10001"
    assert "80/tcp" in config["ExposedPorts"]
    assert config["Cmd"] == [
        "ersilia_serve",
        "--repository_dir",
        "/eos/repository/eos-demo",
        "--host",
        "0.0.0.0",
        "--port",
        "80",
    ]
    # podman shows the health check beside the config, docker inside it.
    health = image.get("Healthcheck") or config["Healthcheck"]
    assert "/readyz" in " ".join(health["Test"])
    assert config["Labels"]["io.ersilia.model-hash"] == read_model_dir(DEMO_DIR).model_hash


def test_build_secrets_and_sources_stay_out_of_the_image(built: Built) -> None:
    paths = [PIP_CONF_TARGET, CA_TARGET, "/build/model", "/tmp/ersilia-pack"]
    check = " ; ".join(f'test -e {path} && echo "left: {path}"' for path in paths)
    done = podman("run", "--rm", "--user", "0", built.tag, "sh", "-c", f"{check}; true")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", built.tag)
    assert "BEGIN CERTIFICATE" not in history.stdout
    assert "index-url" not in history.stdout


def test_container_serves_the_demo_on_the_mapped_port(built: Built) -> None:
    port = free_port()
    with container(built.tag, port) as name:
        url = f"http://127.0.0.1:{port}"
        assert wait_ready(url, name)["ready"] is True
        status, health = http("GET", f"{url}/healthz")
        assert status == 200, health
        inputs, expected = examples("run")
        status, rows = http("POST", f"{url}/run", inputs)
        assert status == 200, rows
        assert_rows_match(rows, expected)
        esol_inputs, esol_expected = examples("esol")
        status, esol = http("POST", f"{url}/esol", esol_inputs)
        assert status == 200, esol
        assert_rows_match(esol, esol_expected)
        # The image's own health check, as the engine runs it.
        health_check = podman("healthcheck", "run", name)
        assert health_check.returncode == 0, health_check.stdout + health_check.stderr
        # The server runs as the image's user, and its state folder is that user's.
        who = podman("exec", name, "sh", "-c", "id -u; ls /eos/repository/eos-demo/*/state")
        assert who.returncode == 0, who.stderr
        assert who.stdout.split()[0] == "10001"
        assert "state.db" in who.stdout.split()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway real ``redis-server`` on a free port of 127.0.0.1; its URL."""
    executable = shutil.which("redis-server")
    assert executable, "redis-server is not on PATH: apt-get install redis-server"
    port = free_port()
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert process.poll() is None and time.monotonic() < deadline, "no redis-server"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def replica(tag: str, port: int, redis_url: str) -> Iterator[str]:
    """The image serving on the host's network at ``port``, sharing the store at ``redis_url``,
    as a Kubernetes replica does (there too the command names the port); its name."""
    name = f"ersilia-pack-test-replica-{port}"
    started = podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--env",
        f"ERSILIA_PACK_REDIS_URL={redis_url}",
        tag,
        "ersilia_serve",
        "--repository_dir",
        "/eos/repository/eos-demo",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    )
    try:
        assert started.returncode == 0, started.stderr
        yield name
    finally:
        podman("stop", "--time", "10", name, timeout=60)
        podman("rm", "--force", name, timeout=60)


def test_two_containers_share_jobs_and_the_cache_through_redis(built: Built) -> None:
    inputs, expected = examples("run")
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis_server())
        ports = [free_port(), free_port()]
        names = [stack.enter_context(replica(built.tag, port, redis_url)) for port in ports]
        first, second = (f"http://127.0.0.1:{port}" for port in ports)
        for url, name in zip((first, second), names):
            wait_ready(url, name)
        status, job = http("POST", f"{first}/job/submit?api=run", inputs)
        assert status == 202, job
        deadline = time.monotonic() + 120
        while True:
            status, progress = http("GET", f"{second}/job/status/{job['job_id']}")
            assert status == 200, progress
            if progress["state"] not in ("queued", "running") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert progress["state"] == "done", progress
        status, rows = http("GET", f"{second}/job/result/{job['job_id']}?orient=records")
        assert status == 200, rows
        assert_rows_match(rows, expected)
        # The rows the job computed on one replica answer the other from the shared cache.
        request = urllib.request.Request(
            f"{second}/run?cache_only=true",
            data=json.dumps(inputs).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.headers["X-Cached-Rows"] == str(len(inputs))
            assert_rows_match(json.loads(response.read()), expected)


def test_second_build_reuses_every_layer(built: Built) -> None:
    again = run_command(
        "ersilia_pack",
        "containerize",
        "--model_dir",
        DEMO_DIR,
        "-t",
        TAG,
        "--base",
        STANDIN,
        "--engine",
        "podman",
        timeout=BUILD_TIMEOUT,
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"base image {built.base_tag} is there" in again.stderr
    assert "Using cache" in again.stderr
    assert image_id(TAG) == built.image_id


def test_a_base_image_the_engine_cannot_get_fails_the_build(built: Built) -> None:
    done = run_command(
        "ersilia_pack",
        "containerize",
        "--model_dir",
        DEMO_DIR,
        "--base",
        "localhost/no-such-python:3.11",
        "--engine",
        "podman",
        "-q",
        timeout=BUILD_TIMEOUT,
    )
    # the base image is pulled before the build, and a pull that fails says what to do
    assert done.returncode == 4, done.stdout + done.stderr
    assert "error: the base image localhost/no-such-python:3.11 could not be pulled" in (
        done.stderr
    )
    assert "pass --base with an image this machine has" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_changed_model_folder_is_packed_again(built: Built, tmp_path: Path) -> None:
    """Any file of the model folder counts, not only those in the model hash."""
    model_dir = shutil.copytree(FIXTURES / "stdlib-simple", tmp_path / "stdlib-simple")
    with (model_dir / "install.sh").open("a") as handle:
        handle.write("cp notes.txt /usr/local/share/notes.txt\n")
    tag = "localhost/ersilia-pack-test/stdlib-simple:ci"
    seen = []
    for version in ("first", "second"):
        (model_dir / "notes.txt").write_text(version)
        done = run_command(
            "ersilia_pack",
            "containerize",
            "--model_dir",
            model_dir,
            "-t",
            tag,
            "--base",
            STANDIN,
            "--engine",
            "podman",
            "-q",
            timeout=BUILD_TIMEOUT,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        notes = podman("run", "--rm", tag, "cat", "/usr/local/share/notes.txt")
        assert notes.stdout == version, notes.stderr
        seen.append(image_id(tag))
    assert seen[0] != seen[1]
    podman("rmi", tag)


def test_failing_install_fails_the_build_with_its_output(built: Built) -> None:
    done = run_command(
        "ersilia_pack",
        "containerize",
        "--model_dir",
        FIXTURES / "failing-install",
        "-t",
        "localhost/ersilia-pack-test/failing-install:ci",
        "--base",
        STANDIN,
        "--engine",
        "podman",
        "-q",
        timeout=BUILD_TIMEOUT,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "error: building the model image failed: exited with" in done.stderr
    assert "install step 'install.sh' failed: exited with 7" in done.stderr
    assert "last lines of its output" in done.stderr
    assert "weights server unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert podman("image", "exists", "localhost/ersilia-pack-test/failing-install:ci").returncode
