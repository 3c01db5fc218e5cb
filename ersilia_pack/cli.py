"""Command-line entry points: parse arguments, call the core, print, map errors to exit codes."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from ersilia_pack import __version__
from ersilia_pack.errors import ErsiliaPackError

if TYPE_CHECKING:
    from ersilia_pack.batch import Progress

EXIT_USAGE = 1
EXIT_INTERNAL = 4

# Each command imports its machinery (packing, the server, images, manifests) when it runs, so
# a --help loads none of it; the names its options offer are spelled here, and
# tests/unit/test_cli_names.py holds them to the registries they name.
BACKENDS = ("system", "venv", "conda")  # ersilia_pack.install.BACKENDS
INSTALLERS = ("uv", "pip")  # ersilia_pack.install.installer.INSTALLERS
DEFAULT_KEEP = 3  # ersilia_pack.pack.DEFAULT_KEEP
DEFAULT_BASE = "python:3.11-slim"  # ersilia_pack.containerize.DEFAULT_BASE
ENGINES = ("docker", "podman")  # ersilia_pack.containerize.ENGINES
AUTOSCALERS = ("hpa", "keda")  # ersilia_pack.kube.AUTOSCALERS


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("ersilia_pack",):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(level)
        log.propagate = False


def _run(command: click.Command) -> Callable[[], None]:
    """A console-script entry point: exit 1 on bad arguments, the error's code on failure."""

    def main() -> None:
        try:
            command.main(standalone_mode=False)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as error:
            error.show()
            sys.exit(EXIT_USAGE)
        except ErsiliaPackError as error:
            click.echo(f"error: {error.render()}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as error:  # a bug: say so plainly, no traceback unless asked
            if os.environ.get("ERSILIA_PACK_DEBUG"):
                raise
            click.echo(
                f"internal error: {type(error).__name__}: {error} "
                "(set ERSILIA_PACK_DEBUG=1 for the traceback)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)

    return main


_BACKEND_HELP = {
    "system": "install with the current Python and PATH (containers)",
    "venv": "install into a virtual environment in the repository (default)",
    "conda": "install into a conda environment named after the model",
}


def _backend_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--system``, ``--venv`` and ``--conda`` as one ``backend`` argument (None: not given);
    two of them at once is a usage error, not a silent choice."""

    @functools.wraps(function)
    def with_backend(**kwargs: Any) -> Any:
        chosen = [name for name in BACKENDS if kwargs.pop(f"backend_{name}")]
        if len(chosen) > 1:
            raise click.UsageError(
                f"choose one backend, not {' and '.join('--' + name for name in chosen)}"
            )
        return function(backend=chosen[0] if chosen else None, **kwargs)

    for name in reversed(list(BACKENDS)):
        with_backend = click.option(
            f"--{name}", f"backend_{name}", is_flag=True, help=_BACKEND_HELP[name]
        )(with_backend)
    return with_backend


def _install_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--installer uv|pip`` and ``--as-of DATE|latest``."""
    function = click.option(
        "--as-of",
        "as_of",
        default=None,
        metavar="DATE|latest",
        help="resolve with packages uploaded before DATE (default: the card's "
        "'Last Packaging Date', else the model's last git commit, else its files' newest "
        "modification time); 'latest' takes the newest",
    )(function)
    function = click.option(
        "--installer",
        type=click.Choice(INSTALLERS),
        default=None,
        help="what installs the structured pip steps (default: uv; pip with --system); "
        "install.sh always runs as written",
    )(function)
    return function


def _logging_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option("-v", "--verbose", is_flag=True, help="more detail")(function)
    function = click.option("-q", "--quiet", is_flag=True, help="warnings and errors only")(
        function
    )
    return function


def _pack_and_report(model_dir: Path, repository_root: Path | None, **options: Any) -> None:
    from ersilia_pack.pack import pack

    result = pack(model_dir, repository_root=repository_root, **options)
    click.echo(f"packed {result.model_id} into {result.bundle_dir}")
    if result.warnings:
        click.echo(
            f"{len(result.warnings)} example difference(s), see the warnings above", err=True
        )


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    subcommand_metavar="[COMMAND] [ARGS]...",
)
@click.option(
    "--model_dir",
    "--model-dir",
    "model_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="the model directory to pack",
)
@_backend_options
@click.option(
    "--eos",
    type=click.Path(path_type=Path),
    default=None,
    help="EOS folder (default $EOS or ~/eos); the bundle goes to EOS/repository/ID",
)
@click.option("--force", is_flag=True, help="rebuild the environment even if one fits")
@click.option(
    "--variant",
    default="auto",
    show_default=True,
    metavar="auto|default|NAME",
    help="the install script: auto takes install_gpu.sh where an NVIDIA GPU is, "
    "install_arm.sh on arm64, else install.sh; default takes install.sh; NAME takes "
    "install_NAME.sh",
)
@click.option(
    "--conda_env_name",
    "--conda-env-name",
    "env_name",
    default=None,
    help="conda environment name (default: the model id)",
)
@click.option("--strict", is_flag=True, help="fail when the example output differs")
@click.option("--no-check", "no_check", is_flag=True, help="skip the example check")
@click.option(
    "--keep",
    default=DEFAULT_KEEP,
    show_default=True,
    type=click.IntRange(1),
    help="bundles of this model to keep",
)
@_install_options
@_logging_options
@click.version_option(__version__, prog_name="ersilia_pack")
@click.pass_context
def pack_cli(
    ctx: click.Context,
    model_dir: Path | None,
    backend: str | None,
    eos: Path | None,
    force: bool,
    variant: str | None,
    env_name: str | None,
    strict: bool,
    no_check: bool,
    keep: int,
    installer: str | None,
    as_of: str | None,
    verbose: bool,
    quiet: bool,
) -> None:
    """Validate, install and render a model directory into a servable bundle.

    \b
    Then serve it:  ersilia_serve --repository_dir $EOS/repository/MODEL_ID [--port 0]
    With a command instead of --model_dir, run that command (listed below):
      ersilia_pack run -i INPUT.csv -o OUTPUT.csv --repository_dir DIR | --url URL
      ersilia_pack containerize --model_dir DIR   (a model's image, Kubernetes manifests)
    For the Ersilia client: ersilia_model_pack, ersilia_model_serve, ersilia_model_lint.
    Each command's own --help has the details.
    """
    _setup_logging(verbose, quiet)
    if ctx.invoked_subcommand is not None:
        return
    if model_dir is None:
        raise click.UsageError("Missing option '--model_dir'.", ctx=ctx)
    root = eos.expanduser() / "repository" if eos else None
    _pack_and_report(
        model_dir,
        root,
        backend=backend or "venv",
        env_name=env_name,
        variant=variant,
        force=force,
        strict=strict,
        check=not no_check,
        keep=keep,
        installer=installer,
        as_of=as_of,
    )


def _serve_options(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--host",
            default="127.0.0.1",
            show_default=True,
            help="address to bind; 0.0.0.0 to accept outside connections",
        ),
        click.option(
            "--port",
            default=8000,
            show_default=True,
            type=click.IntRange(0, 65535),
            help="port to bind; 0 takes a free one",
        ),
        click.option(
            "--root_path",
            "--root-path",
            "root_path",
            default="",
            help="path prefix when served behind a proxy",
        ),
        click.option(
            "--workers",
            type=click.IntRange(1),
            default=None,
            help="processes per API (default: the available CPUs, shared among the APIs)",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="seconds one model run may take (default 600)",
        ),
        click.option(
            "--batch-size",
            "batch_size",
            type=click.IntRange(1),
            default=None,
            help="most inputs per model run",
        ),
        click.option(
            "--gpu-workers",
            "gpu_workers",
            type=click.IntRange(1),
            default=None,
            help="processes per GPU for an API whose model runs on a GPU, and legacy runs at a "
            "time per GPU (default 1)",
        ),
        click.option(
            "--cold",
            is_flag=True,
            default=None,
            help="run legacy scripts cold (a fresh process per run), never warm",
        ),
        click.option(
            "--separate-workers",
            "separate_workers",
            is_flag=True,
            default=None,
            help="one model process per slot, each loading the model, instead of slots forked "
            "from one loaded parent (for models that are not safe to fork after loading)",
        ),
        click.option(
            "--api-key",
            "api_key",
            default=None,
            help="require 'Authorization: Bearer KEY' (or set ERSILIA_PACK_API_KEY)",
        ),
        click.option(
            "--max-inputs",
            "max_inputs",
            type=click.IntRange(1),
            default=None,
            help="most inputs per request",
        ),
        click.option(
            "--max-body-bytes",
            "max_body_bytes",
            type=click.IntRange(1),
            default=None,
            help="largest request body",
        ),
        click.option(
            "--max-input-length",
            "max_input_length",
            type=click.IntRange(1),
            default=None,
            help="longest single input",
        ),
        click.option(
            "--cors-origin",
            "cors_origins",
            multiple=True,
            help="allow browser calls from this origin (repeatable); off by default",
        ),
        click.option(
            "--cache-size",
            "cache_size",
            type=click.IntRange(0),
            default=None,
            help="rows kept in the result cache, oldest evicted first; 0 turns it off",
        ),
        click.option(
            "--job-chunk-size",
            "job_chunk_size",
            type=click.IntRange(1),
            default=None,
            help="inputs a job computes (and records) at a time",
        ),
        click.option(
            "--job-ttl-hours",
            "job_ttl_hours",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="hours after which finished and abandoned jobs are removed",
        ),
        click.option(
            "--redis-url",
            "redis_url",
            default=None,
            help="keep jobs and the cache in Redis (or set ERSILIA_PACK_REDIS_URL)",
        ),
        click.option(
            "--state-dir",
            "state_dir",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="folder for jobs, the cache and run folders (default: the bundle's state/), "
            "so a read-only bundle can be served",
        ),
        click.option(
            "--public-metrics",
            "public_metrics",
            is_flag=True,
            default=None,
            help="serve GET /metrics without the API key (or set ERSILIA_PACK_PUBLIC_METRICS=1)",
        ),
        click.option(
            "--no-self-check",
            "self_check",
            flag_value=False,
            default=None,
            help="report ready without first running each API's example the way it is served "
            "(or set ERSILIA_PACK_SELF_CHECK=0)",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return _logging_options(function)


def _serve_with(
    path: Path, host: str, port: int, root_path: str, verbose: bool, quiet: bool, **overrides: Any
) -> None:
    from ersilia_pack.runtime.settings import ServeSettings
    from ersilia_pack.serve import serve

    _setup_logging(verbose, quiet)
    if overrides.get("cors_origins") == ():
        overrides["cors_origins"] = None
    if overrides.get("cors_origins"):
        overrides["cors_origins"] = list(overrides["cors_origins"])
    settings = ServeSettings.from_env(**overrides)
    serve(
        path,
        host=host,
        port=port,
        settings=settings,
        root_path=root_path,
        log_level="debug" if verbose else "warning" if quiet else "info",
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repository_dir",
    "--repository-dir",
    "path",
    required=True,
    type=click.Path(path_type=Path),
    help="a model's repository folder (its newest bundle is served) or a bundle",
)
@_serve_options
@click.version_option(__version__, prog_name="ersilia_serve")
def serve_cli(
    path: Path, host: str, port: int, root_path: str, verbose: bool, quiet: bool, **overrides: Any
) -> None:
    """Serve a packed model with uvicorn (ersilia_pack --model_dir DIR packs one)."""
    _serve_with(path, host, port, root_path, verbose, quiet, **overrides)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repo_path",
    "--repo-path",
    "repo_path",
    required=True,
    type=click.Path(path_type=Path),
    help="the model repository to pack",
)
@click.option(
    "--bundles_repo_path",
    "--bundles-repo-path",
    "bundles",
    required=True,
    type=click.Path(path_type=Path),
    help="bundles go to BUNDLES/<Identifier>/<tag>/",
)
@click.option(
    "--conda_env_name",
    "--conda-env-name",
    "env_name",
    default=None,
    help="pack with conda into this environment",
)
@_backend_options
@click.option("--strict", is_flag=True, help="fail when the example output differs")
@click.option("--no-check", "no_check", is_flag=True, help="skip the example check")
@_install_options
@_logging_options
def model_pack_cli(
    repo_path: Path,
    bundles: Path,
    env_name: str | None,
    backend: str | None,
    strict: bool,
    no_check: bool,
    installer: str | None,
    as_of: str | None,
    verbose: bool,
    quiet: bool,
) -> None:
    """Drop-in for the Ersilia client's ersilia_model_pack."""
    _setup_logging(verbose, quiet)
    chosen = backend or ("conda" if env_name else "venv")
    _pack_and_report(
        repo_path,
        bundles,
        backend=chosen,
        env_name=env_name,
        strict=strict,
        check=not no_check,
        installer=installer,
        as_of=as_of,
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--bundle_path",
    "--bundle-path",
    "path",
    required=True,
    type=click.Path(path_type=Path),
    help="a bundle, or the model folder holding one",
)
@_serve_options
def model_serve_cli(
    path: Path, host: str, port: int, root_path: str, verbose: bool, quiet: bool, **overrides: Any
) -> None:
    """Drop-in for the Ersilia client's ersilia_model_serve."""
    _serve_with(path, host, port, root_path, verbose, quiet, **overrides)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repo_path",
    "--repo-path",
    "repo_path",
    required=True,
    type=click.Path(path_type=Path),
    help="the model repository to check",
)
@click.option(
    "--variant",
    default="auto",
    show_default=True,
    metavar="auto|default|NAME",
    help="check the install script this variant picks (see ersilia_pack --help)",
)
def model_lint_cli(repo_path: Path, variant: str | None) -> None:
    """Validate a model repository and report every problem at once."""
    from ersilia_pack.pack import lint

    spec = lint(repo_path, variant=variant)
    apis = ", ".join(f"{api.name} ({api.kind}, {len(api.columns)} columns)" for api in spec.apis)
    click.echo(
        f"{spec.model_id} ({spec.slug}) is valid: APIs {apis}; "
        f"{len(spec.plan.steps)} install steps from {spec.plan.source or 'nothing'}"
    )


class _ProgressView:
    """Progress of ``ersilia_pack run``: a bar redrawn in place on a terminal, else a plain log
    line every few seconds."""

    WIDTH = 28

    def __init__(self, *, terminal: bool, quiet: bool, every: float = 5.0) -> None:
        self.terminal = terminal and not quiet
        self.quiet = quiet
        self.every = every
        self.shown = 0.0
        self.drawn = False

    @staticmethod
    def _duration(seconds: float | None) -> str:
        if seconds is None:
            return "?"
        minutes, secs = divmod(int(seconds + 0.5), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}:{minutes:02d}:{secs:02d}"

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        final = progress.done >= progress.total
        share = progress.done / progress.total if progress.total else 1.0
        text = (
            f"{progress.done:,}/{progress.total:,} rows ({share:.0%}), "
            f"{progress.rate:,.0f} rows/s, {self._duration(progress.left)} left"
        )
        if self.terminal:
            if final or now - self.shown >= 0.1:
                filled = int(share * self.WIDTH)
                bar = "#" * filled + "-" * (self.WIDTH - filled)
                sys.stderr.write(f"\r{progress.stage} [{bar}] {text}\033[K")
                sys.stderr.flush()
                self.shown, self.drawn = now, True
        elif not self.quiet and (final or now - self.shown >= self.every):
            logging.getLogger("ersilia_pack").info("%s: %s", progress.stage, text)
            self.shown = now

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM ask the run to stop after the rows in flight; a second one stops it
    at once (what was recorded stays: a rerun continues from there)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # No logging here: a handler may run while the logging lock is held.
        os.write(2, b"\nstopping after the rows in flight (again to stop at once)\n")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pack_cli.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", default=None, help="a served model: the inputs go through a job on it")
@click.option(
    "--repository_dir",
    "--repository-dir",
    "repository_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="a model's repository folder (or a bundle): run it here, with no server",
)
@click.option(
    "-i",
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="a CSV with a header (the input column chosen as the server chooses it: input, "
    "smiles, text, ...), or one input per line",
)
@click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="a .csv (input, then the columns) or .json (a list of records) file",
)
@click.option("--api", default="run", show_default=True, help="the API to run")
@click.option(
    "--api-key",
    "api_key",
    envvar="ERSILIA_PACK_API_KEY",
    default=None,
    help="the server's API key, with --url (or set ERSILIA_PACK_API_KEY)",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="with --repository_dir: workers per API (default: as ersilia_serve picks)",
)
@click.option(
    "--chunk-size",
    "chunk_size",
    type=click.IntRange(1),
    default=None,
    help="rows computed (or downloaded) and recorded at a time",
)
@click.option(
    "--dask",
    default=None,
    metavar="ADDRESS",
    help="with --repository_dir: compute on this Dask scheduler (tcp://HOST:8786); the bundle "
    "must sit where every worker reads it",
)
@_logging_options
def run_cli(
    url: str | None,
    repository_dir: Path | None,
    input_path: Path,
    output_path: Path,
    api: str,
    api_key: str | None,
    workers: int | None,
    chunk_size: int | None,
    dask: str | None,
    verbose: bool,
    quiet: bool,
) -> None:
    """Run a file of inputs through a model into a CSV or JSON file.

    Stopped (Ctrl-C) and run again with the same arguments, it goes on where it stopped.
    """
    from ersilia_pack.batch import Interrupted, run_batch  # the client (httpx) only when used

    if (url is None) == (repository_dir is None):
        raise click.UsageError("give one of --url and --repository_dir")
    if dask is not None and repository_dir is None:
        raise click.UsageError("--dask computes a bundle: give --repository_dir, not --url")
    if verbose or quiet:
        _setup_logging(verbose, quiet)
    view = _ProgressView(terminal=sys.stderr.isatty(), quiet=quiet)
    try:
        with _stop_on_signals() as stop:
            summary = run_batch(
                input_path=input_path,
                output_path=output_path,
                api=api,
                url=url,
                repository_dir=repository_dir,
                api_key=api_key,
                workers=workers,
                chunk_size=chunk_size,
                progress=view,
                should_stop=stop.is_set,
                dask=dask,
            )
    except KeyboardInterrupt:
        view.close()
        raise Interrupted(
            "interrupted: run the same command again to continue from the last recorded rows"
        ) from None
    finally:
        view.close()
    earlier = f", {summary.resumed:,} of them from an earlier run" if summary.resumed else ""
    click.echo(
        f"wrote {summary.total:,} rows to {summary.output} "
        f"({summary.failed:,} without values{earlier})"
    )


def _megabytes(size: int | None) -> str:
    return "unknown size" if size is None else f"{size / 1e6:.0f} MB"


@pack_cli.command("containerize", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model_dir",
    "--model-dir",
    "model_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="the model directory to build an image of",
)
@click.option("-t", "--tag", default=None, help="the image's name (default: MODEL_ID:latest)")
@click.option(
    "--base",
    default=DEFAULT_BASE,
    show_default=True,
    help="the Python image ersilia-pack's base image builds on",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default=None,
    help="build with this (default: docker or podman, the first that answers)",
)
@click.option(
    "--kube",
    "kube_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="also write Kubernetes manifests for the image into this folder",
)
@click.option(
    "--replicas",
    default=2,
    show_default=True,
    type=click.IntRange(0),
    help="replicas the manifests start with (and scale down to; 0 only with KEDA)",
)
@click.option(
    "--max-replicas",
    "max_replicas",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="most replicas the autoscaler runs",
)
@click.option(
    "--cpu",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="CPUs each replica asks for; it runs one worker per CPU",
)
@click.option(
    "--autoscaler",
    type=click.Choice(AUTOSCALERS),
    default="hpa",
    show_default=True,
    help="hpa: on CPU; keda: a KEDA ScaledObject on the job stream (can scale to 0)",
)
@click.option(
    "--namespace",
    default="default",
    show_default=True,
    help="with --autoscaler keda: the namespace the manifests go in",
)
@click.option(
    "--keda-namespace",
    "keda_namespace",
    default="keda",
    show_default=True,
    help="with --autoscaler keda: where KEDA's operator runs (it may reach Redis)",
)
@click.option(
    "--redis-url",
    "redis_url",
    default=None,
    help="a managed Redis (redis:// or rediss://, no password) instead of one in the manifests",
)
@click.option(
    "--redis-storage",
    "redis_storage",
    default="1Gi",
    show_default=True,
    help="the size of the Redis volume",
)
@click.option("--no-build", "no_build", is_flag=True, help="only write the manifests (with --kube)")
@click.option(
    "--gpu",
    is_flag=True,
    help="pack the model with its GPU variant (install_gpu.sh), for hosts with NVIDIA GPUs",
)
@click.option(
    "--no-cache",
    "no_cache",
    is_flag=True,
    help="build the base and model images again from scratch",
)
@_logging_options
def containerize_cli(
    model_dir: Path,
    tag: str | None,
    base: str,
    engine: str | None,
    kube_dir: Path | None,
    replicas: int,
    max_replicas: int,
    cpu: int,
    autoscaler: Literal["hpa", "keda"],
    namespace: str,
    keda_namespace: str,
    redis_url: str | None,
    redis_storage: str,
    no_build: bool,
    no_cache: bool,
    gpu: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Build a model's image (and ersilia-pack's base image when missing); write manifests."""
    from ersilia_pack.containerize import containerize, default_tag
    from ersilia_pack.kube import KubeOptions, apply_hint, kube_context, write_manifests
    from ersilia_pack.pack import lint

    _setup_logging(verbose, quiet)
    if no_build and kube_dir is None:
        raise click.UsageError("--no-build writes manifests only: give --kube DIR too")
    spec = lint(model_dir)
    image = tag or default_tag(spec)
    options = KubeOptions(
        image=image,
        replicas=replicas,
        max_replicas=max_replicas,
        cpu=cpu,
        autoscaler=autoscaler,
        namespace=namespace,
        keda_namespace=keda_namespace,
        redis_url=redis_url,
        redis_storage=redis_storage,
    )
    if kube_dir is not None:
        kube_context(spec, options)  # bad manifest options fail before a build
    if not no_build:
        result = containerize(
            model_dir, tag=image, base=base, engine=engine, no_cache=no_cache, gpu=gpu
        )
        above = (
            None
            if result.base_size is None or result.python_size is None
            else result.base_size - result.python_size
        )
        click.echo(
            f"built {result.tag} with {result.engine}: {_megabytes(result.size)} "
            f"(on {result.base_tag}, whose layers above {base} take {_megabytes(above)})"
        )
        click.echo(f"serve it: {result.run_command()}")
    if kube_dir is not None:
        written = write_manifests(spec, kube_dir, options)
        click.echo(f"wrote {', '.join(path.name for path in written)} into {kube_dir}")
        click.echo(apply_hint(spec.model_id, kube_dir, options))


pack_command = _run(pack_cli)
serve_command = _run(serve_cli)
model_pack_command = _run(model_pack_cli)
model_serve_command = _run(model_serve_cli)
model_lint_command = _run(model_lint_cli)
