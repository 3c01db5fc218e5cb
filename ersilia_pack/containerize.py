"""Model images: ersilia-pack's base image from Dockerfile.base, then a model's image on it.

The base holds ersilia-pack alone and is built once per base Python image and ersilia-pack
source (its tag carries a digest of both), only when the engine lacks it. It installs the
source checkout this package runs from, or, for an ordinary install, a wheel made from the
installed files, so it needs neither a clone nor a download of ersilia-pack. A model's image packs
the model with ``--system`` at build time and serves it on 0.0.0.0:80 as a non-root user.
Builds reach the package index with the host's index settings and CA bundle, passed in as build
secrets so neither ends up in a layer.
"""

from __future__ import annotations

import base64
import collections
import configparser
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from ersilia_pack import __version__, templating
from ersilia_pack.errors import ErsiliaPackError, InstallError
from ersilia_pack.install.variant import GPU
from ersilia_pack.model_dir import ModelSpec, read_model_dir

logger = logging.getLogger("ersilia_pack")

DEFAULT_BASE = "python:3.11-slim"
ENGINES = ("docker", "podman")
BASE_REPOSITORY = "localhost/ersilia-pack-base"
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# pip's own order: the later file wins (the site-wide files, then the user's).
PIP_CONFIG_FILES = (
    Path("/etc/xdg/pip/pip.conf"),
    Path("/etc/pip.conf"),
    Path("~/.config/pip/pip.conf"),
    Path("~/.pip/pip.conf"),
)
# The user a model image serves as; numeric so Kubernetes' runAsNonRoot can check it.
SERVE_UID = 10001
_CHECKOUT_FILES = ("pyproject.toml", "README.md", "ersilia_pack", "templates")
DOCKERFILE_BASE = "Dockerfile.base"
DISTRIBUTION = "ersilia-pack"
# Where Dockerfile.base finds the context's files while it installs them.
_CONTEXT_MOUNT = "/tmp/ersilia-pack"
# Wheel entries with a fixed time, so the same installed files make the same wheel (and digest).
_WHEEL_TIME = (1980, 1, 1, 0, 0, 0)
_NOT_COPIED = frozenset({"RECORD", "WHEEL", "INSTALLER", "REQUESTED", "direct_url.json"})
_IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.pyc", ".git", ".ipynb_checkpoints", ".venv", ".mypy_cache", ".ruff_cache"
)
_TAIL_LINES = 40


class ContainerError(ErsiliaPackError):
    """No usable container engine, or an image cannot be built from what is here."""

    exit_code = 4


class BuildError(InstallError):
    """An image build failed (an install step inside it, often); keeps the command and the
    tail of the build's output, and exits like a failed install."""

    def render(self) -> str:
        status = "timed out" if self.returncode is None else f"exited with {self.returncode}"
        lines = [f"building the {self.step} failed: {status}", f"  command: {self.command}"]
        if self.tail.strip():
            lines.append("  last lines of its output:")
            lines.extend(f"    {line}" for line in self.tail.rstrip().splitlines())
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Templates


def render_file(name: str, context: BaseModel) -> str:
    """Render ``templates/<name>`` with the context's fields; a missing name fails the render."""
    return templating.render(name, dict(context), error=ContainerError)


# ---------------------------------------------------------------------------------------------
# The host's package-index settings


@dataclass(frozen=True)
class IndexSettings:
    """Where pip finds packages on this host, reduced to what a build can use.

    ``left_out`` names values that only make sense on the host (``file:`` indexes, paths).
    """

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    ca_bundle: Path | None = None
    left_out: tuple[str, ...] = field(default=())


class PipConfContext(BaseModel):
    index_url: str | None
    extra_index_urls: list[str]
    trusted_hosts: list[str]
    cert: str | None


def _is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _read_pip_files(files: Sequence[Path]) -> dict[str, str]:
    """Index keys from pip config files: [global] then [install], later files winning."""
    values: dict[str, str] = {}
    for path in files:
        path = path.expanduser()
        if not path.is_file():
            continue
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as error:
            logger.warning("ignoring %s: %s", path, error)
            continue
        for section in ("global", "install"):
            if not parser.has_section(section):
                continue
            for key, value in parser.items(section):
                key = key.replace("_", "-")
                if key in ("index-url", "extra-index-url", "trusted-host", "cert"):
                    values[key] = value.strip()
    return values


def host_index_settings(
    environ: Mapping[str, str] | None = None,
    config_files: Sequence[Path] | None = None,
    system_ca: Path = SYSTEM_CA_BUNDLE,
) -> IndexSettings:
    """The host's index URLs and CA bundle, as pip would see them (environment over files).

    The CA bundle is the one ``PIP_CERT``, pip's ``cert`` or ``SSL_CERT_FILE`` names, else the
    system bundle when it exists. Constraints, find-links and other settings are not passed on:
    they point at the host's files.
    """
    environ = os.environ if environ is None else environ
    if config_files is None:
        config_files = list(PIP_CONFIG_FILES)
        if environ.get("PIP_CONFIG_FILE"):
            config_files.append(Path(environ["PIP_CONFIG_FILE"]))
    files = _read_pip_files(config_files)
    left_out: list[str] = []

    def urls(raw: str) -> list[str]:
        kept = []
        for url in raw.split():
            if _is_remote(url):
                kept.append(url)
            else:
                left_out.append(url)
        return kept

    index = urls(environ.get("PIP_INDEX_URL") or files.get("index-url", ""))
    extra = urls(environ.get("PIP_EXTRA_INDEX_URL") or files.get("extra-index-url", ""))
    trusted = (environ.get("PIP_TRUSTED_HOST") or files.get("trusted-host", "")).split()
    ca: Path | None = None
    for candidate in (
        environ.get("PIP_CERT"),
        files.get("cert"),
        environ.get("SSL_CERT_FILE"),
        str(system_ca),
    ):
        if candidate and Path(candidate).expanduser().is_file():
            ca = Path(candidate).expanduser()
            break
    return IndexSettings(
        index_url=index[0] if index else None,
        extra_index_urls=tuple(extra),
        trusted_hosts=tuple(trusted),
        ca_bundle=ca,
        left_out=tuple(left_out),
    )


# Where the build secrets appear inside a RUN step (never in a layer).
PIP_CONF_TARGET = "/run/secrets/ersilia-pack-pip.conf"
CA_TARGET = "/run/secrets/ersilia-pack-ca.crt"


@contextmanager
def _build_secrets(settings: IndexSettings) -> Iterator[list[str]]:
    """``--secret`` arguments for a build: a pip.conf of the index settings, the CA bundle."""
    for value in settings.left_out:
        logger.info("not passed to the build (a location on this machine only): %s", value)
    conf = render_file(
        "container/pip.conf.j2",
        PipConfContext(
            index_url=settings.index_url,
            extra_index_urls=list(settings.extra_index_urls),
            trusted_hosts=list(settings.trusted_hosts),
            cert=CA_TARGET if settings.ca_bundle else None,
        ),
    )
    with tempfile.TemporaryDirectory(prefix="ersilia-pack-secrets-") as folder:
        pip_conf = Path(folder) / "pip.conf"
        pip_conf.write_text(conf, encoding="utf-8")
        pip_conf.chmod(0o600)
        arguments = ["--secret", f"id=pip-conf,src={pip_conf}"]
        if settings.ca_bundle:
            arguments += ["--secret", f"id=ca-bundle,src={settings.ca_bundle}"]
        yield arguments


# ---------------------------------------------------------------------------------------------
# The engine


@dataclass(frozen=True)
class Engine:
    """docker or podman, found on PATH and answering."""

    name: str
    path: str

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.path, *args], capture_output=True, text=True, check=check, timeout=120
        )

    def image_size(self, image: str) -> int | None:
        """The image's size in bytes, or None when the engine does not have it."""
        done = self.run("image", "inspect", "--format", "{{.Size}}", image)
        if done.returncode != 0:
            return None
        try:
            return int(done.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            return None

    def build_command(self, *, tag: str, dockerfile: Path) -> list[str]:
        command = [self.path, "build", "-t", tag, "-f", str(dockerfile)]
        if self.name == "podman":
            # OCI images drop HEALTHCHECK; the docker format keeps it.
            command += ["--format", "docker", "--layers"]
        return command


def find_engine(name: str | None = None) -> Engine:
    """The engine to build with: ``name``, else the first of docker and podman that answers."""
    names = [name] if name else list(ENGINES)
    failures: list[str] = []
    for candidate in names:
        path = shutil.which(candidate)
        if path is None:
            failures.append(f"{candidate} is not on PATH")
            continue
        try:
            done = subprocess.run(
                [path, "info"], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            failures.append(f"{candidate} info failed: {error}")
            continue
        if done.returncode == 0:
            return Engine(candidate, path)
        last = (done.stderr or done.stdout).strip().splitlines()
        failures.append(f"{candidate} does not answer: {last[-1] if last else done.returncode}")
    raise ContainerError(
        "no container engine to build with: "
        + "; ".join(failures)
        + " (install Docker or podman, e.g. apt-get install podman, or pick one with --engine)"
    )


def _stream(command: list[str], *, step: str, env: Mapping[str, str] | None = None) -> None:
    """Run a build, its output logged line by line; BuildError with its tail on failure."""
    logger.debug("running %s", " ".join(command))
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=dict(env) if env is not None else None,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            logger.info("[%s] %s", step, line)
        returncode = process.wait()
    if returncode != 0:
        raise BuildError(step, " ".join(command), returncode, "\n".join(tail))


def _build(
    engine: Engine,
    *,
    tag: str,
    dockerfile: Path,
    context: Path,
    settings: IndexSettings,
    step: str,
    build_args: Mapping[str, str] | None = None,
    no_cache: bool = False,
) -> None:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"} if engine.name == "docker" else None
    arguments = [f"--build-arg={key}={value}" for key, value in (build_args or {}).items()]
    if no_cache:
        arguments.append("--no-cache")
    with _build_secrets(settings) as secrets:
        command = engine.build_command(tag=tag, dockerfile=dockerfile)
        _stream([*command, *arguments, *secrets, str(context)], step=step, env=env)


# ---------------------------------------------------------------------------------------------
# The base image


def _pull(engine: Engine, image: str) -> None:
    """Pull ``image``; ContainerError saying so, with the engine's last line, when it cannot
    (no network, a name no registry has), rather than a failed build's whole command."""
    logger.info("%s does not have %s yet: pulling it", engine.name, image)
    try:
        _stream([engine.path, "pull", image], step="base image pull")
    except BuildError as error:
        last = next((line for line in reversed(error.tail.splitlines()) if line.strip()), "")
        said = f" ({engine.name} said: {last.strip()[:300]})" if last else ""
        raise ContainerError(
            f"the base image {image} could not be pulled{said}: without a network, pass --base "
            f"with an image this machine has ({engine.name} images lists them), e.g. "
            "--base python:3.11-slim once it was pulled"
        ) from error


def source_root() -> Path | None:
    """The ersilia-pack source checkout this package runs from, or None (an ordinary install)."""
    root = Path(__file__).resolve().parent.parent
    return root if all((root / name).exists() for name in _CHECKOUT_FILES) else None


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def installed_wheel(folder: Path) -> Path:
    """A wheel of ersilia-pack made from its installed files (its RECORD), written to
    ``folder``: what the base image installs when there is no source checkout. The same
    installed files always make the same wheel."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise ContainerError(
            f"ersilia-pack runs from {Path(__file__).parent} but is not installed there, so "
            "there is nothing to put in the base image: pip install ersilia-pack, or run it "
            "from a clone"
        ) from error
    stem = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}"
    dist_info = f"{stem}.dist-info"
    contents: dict[str, bytes] = {}
    for entry in dist.files or []:
        relative = entry.as_posix()
        if relative.startswith("..") or "__pycache__" in relative:
            continue  # console scripts (pip writes them again) and byte code
        located = Path(str(entry.locate()))
        if not located.is_file():
            continue
        if ".dist-info/" in relative:
            inner = relative.split("/", 1)[1]
            if inner in _NOT_COPIED:
                continue
            relative = f"{dist_info}/{inner}"
        contents[relative] = located.read_bytes()
    if not any(name.startswith("ersilia_pack/") for name in contents):
        raise ContainerError(
            f"the installed {DISTRIBUTION} {dist.version} lists none of the package's files "
            "(an editable install whose checkout moved?): reinstall it, or run it from a clone"
        )
    contents[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: ersilia-pack\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = "".join(
        f"{name},{_record_hash(data)},{len(data)}\n" for name, data in sorted(contents.items())
    )
    contents[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    target = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(contents.items()):
            info = zipfile.ZipInfo(name, date_time=_WHEEL_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return target


def tree_digest(root: Path) -> str:
    """A digest of every file's path and contents under ``root`` (symlinks by their target).

    Podman's layer cache does not look into bind-mounted files, so each Dockerfile puts this
    in a label ahead of the step that reads them: other files, another layer.
    """
    digest = hashlib.sha256()
    for current, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _IGNORE(current, [d]))
        ignored = _IGNORE(current, names)
        for name in sorted(set(names) - ignored):
            path = Path(current) / name
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            if path.is_symlink():
                digest.update(b"->" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def _base_context(target: Path) -> tuple[str, str]:
    """Put what Dockerfile.base installs into ``target``: the source checkout this package runs
    from, else a wheel of the installed package. A digest of it, and what pip installs there."""
    dockerfile = templating.read(f"container/{DOCKERFILE_BASE}")
    (target / DOCKERFILE_BASE).write_text(dockerfile, "utf-8")
    root = source_root()
    if root is not None:
        for name in _CHECKOUT_FILES:
            source = root / name
            if source.is_dir():
                shutil.copytree(source, target / name, ignore=_IGNORE)
            else:
                shutil.copy2(source, target / name)
        package = _CONTEXT_MOUNT
        logger.info("the base image installs ersilia-pack from the checkout %s", root)
    else:
        wheel = installed_wheel(target)
        package = f"{_CONTEXT_MOUNT}/{wheel.name}"
        logger.info(
            "the base image installs ersilia-pack %s as installed in %s (%s)",
            __version__,
            Path(__file__).resolve().parent.parent,
            wheel.name,
        )
    return tree_digest(target), package


def base_tag(base: str, digest: str) -> str:
    """The base image's tag: ersilia-pack's version and a digest of its sources and ``base``."""
    combined = hashlib.sha256(f"{base}\0{digest}".encode()).hexdigest()[:12]
    return f"{BASE_REPOSITORY}:{__version__}-{combined}"


def ensure_base(
    engine: Engine, *, base: str, settings: IndexSettings, no_cache: bool = False
) -> str:
    """The base image's tag, building it from Dockerfile.base on ``base`` when it is missing
    (or, with ``no_cache``, always and from scratch)."""
    with tempfile.TemporaryDirectory(prefix="ersilia-pack-base-") as folder:
        context = Path(folder)
        sources, package = _base_context(context)
        tag = base_tag(base, sources)
        if not no_cache and engine.image_size(tag) is not None:
            logger.info("base image %s is there", tag)
            return tag
        if engine.image_size(base) is None:
            _pull(engine, base)
        logger.info("building the base image %s on %s", tag, base)
        _build(
            engine,
            tag=tag,
            dockerfile=context / "Dockerfile.base",
            context=context,
            settings=settings,
            step="base image",
            build_args={"BASE": base, "SOURCES_DIGEST": sources, "PACKAGE": package},
            no_cache=no_cache,
        )
    return tag


# ---------------------------------------------------------------------------------------------
# A model's image


class DockerfileContext(BaseModel):
    """What the model Dockerfile template sees."""

    version: str
    base_image: str
    model_id: str
    slug: str
    model_hash: str
    context_digest: str
    uid: int
    pip_conf: str
    ca_bundle: str | None
    variant: str | None


def default_tag(spec: ModelSpec) -> str:
    """``<model id>:latest``, lower-cased as image names must be."""
    return f"{spec.model_id.lower()}:latest"


def model_dockerfile(
    spec: ModelSpec,
    *,
    base_image: str,
    with_ca: bool,
    context_digest: str = "",
    variant: str | None = None,
) -> str:
    """The model image's Dockerfile, on ``base_image``; ``context_digest`` is the
    :func:`tree_digest` of the model folder the build mounts; ``variant`` is the ``--variant``
    the pack inside runs with (None: auto, which a build without a GPU takes as install.sh, or
    install_arm.sh on arm64)."""
    return render_file(
        "container/Dockerfile.j2",
        DockerfileContext(
            version=__version__,
            base_image=base_image,
            model_id=spec.model_id,
            slug=spec.slug,
            model_hash=spec.model_hash,
            context_digest=context_digest,
            uid=SERVE_UID,
            pip_conf=PIP_CONF_TARGET,
            ca_bundle=CA_TARGET if with_ca else None,
            variant=variant,
        ),
    )


def image_variant(spec: ModelSpec, *, gpu: bool) -> str | None:
    """The ``--variant`` of the pack inside the image: ``gpu`` for a GPU image of a model that
    has ``install_gpu.sh``, else None (auto)."""
    if not gpu:
        return None
    if (spec.root / f"install_{GPU}.sh").is_file():
        logger.info("packing the image with install_%s.sh (--gpu)", GPU)
        return GPU
    logger.warning(
        "--gpu: the model has no install_%s.sh; the image installs what --variant auto picks "
        "in the build (install.sh, or install_arm.sh on arm64)",
        GPU,
    )
    return None


@dataclass(frozen=True)
class ImageResult:
    """A built model image and the figures a person wants to know about it."""

    tag: str
    base_tag: str
    engine: str
    model_id: str
    size: int | None
    base_size: int | None
    python_size: int | None
    dockerfile: str
    gpu: bool = False

    def run_command(self, port: int = 8080) -> str:
        """How to serve the image: Docker lets a container's non-root user bind port 80,
        podman needs the sysctl; a GPU image gets the host's NVIDIA GPUs."""
        flags = []
        if self.gpu:
            flags.append("--gpus all" if self.engine == "docker" else "--device nvidia.com/gpu=all")
        if self.engine == "podman":
            flags.append("--sysctl net.ipv4.ip_unprivileged_port_start=80")
        return " ".join([self.engine, "run", *flags, f"-p {port}:80", self.tag])


def containerize(
    model_dir: Path,
    *,
    tag: str | None = None,
    base: str = DEFAULT_BASE,
    engine: str | None = None,
    settings: IndexSettings | None = None,
    no_cache: bool = False,
    gpu: bool = False,
) -> ImageResult:
    """Build ``model_dir``'s image (and the base image under it when it is missing).

    ``no_cache`` builds both again from scratch, e.g. to pick up new releases of unpinned
    dependencies. ``gpu`` packs the model with its GPU variant (``install_gpu.sh``): a build
    has no GPU to find, so the pack inside would not pick it by itself."""
    spec = read_model_dir(model_dir)
    variant = image_variant(spec, gpu=gpu)
    image = tag or default_tag(spec)
    found = find_engine(engine)
    settings = settings if settings is not None else host_index_settings()
    base_image = ensure_base(found, base=base, settings=settings, no_cache=no_cache)
    with tempfile.TemporaryDirectory(prefix="ersilia-pack-image-") as folder:
        context = Path(folder)
        shutil.copytree(spec.root, context / "model", ignore=_IGNORE, symlinks=True)
        dockerfile = model_dockerfile(
            spec,
            base_image=base_image,
            with_ca=bool(settings.ca_bundle),
            context_digest=tree_digest(context / "model"),
            variant=variant,
        )
        (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
        logger.debug("the model image's Dockerfile:\n%s", dockerfile)
        logger.info("building %s for %s with %s", image, spec.model_id, found.name)
        _build(
            found,
            tag=image,
            dockerfile=context / "Dockerfile",
            context=context,
            settings=settings,
            step="model image",
            no_cache=no_cache,
        )
    return ImageResult(
        tag=image,
        base_tag=base_image,
        engine=found.name,
        model_id=spec.model_id,
        size=found.image_size(image),
        base_size=found.image_size(base_image),
        python_size=found.image_size(base),
        dockerfile=dockerfile,
        gpu=gpu,
    )
