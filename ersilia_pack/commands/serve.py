"""``ersilia_serve``: serve a packed model with uvicorn; its options are shared with the
Ersilia client's ``ersilia_model_serve``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ersilia_pack import __version__
from ersilia_pack.commands.common import HELP_OPTIONS, logging_options, setup_logging


def serve_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Where to bind, and the server's settings (each None when not given, so the environment
    or the default decides), plus the logging options."""
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
    return logging_options(function)


def serve_with(
    path: Path, host: str, port: int, root_path: str, verbose: bool, quiet: bool, **overrides: Any
) -> None:
    """Serve the bundle at ``path`` with the settings the options gave (the rest from the
    environment) until the server stops."""
    from ersilia_pack.runtime.settings import ServeSettings
    from ersilia_pack.serve import serve

    setup_logging(verbose, quiet)
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


@click.command(context_settings=HELP_OPTIONS)
@click.option(
    "--repository_dir",
    "--repository-dir",
    "path",
    required=True,
    type=click.Path(path_type=Path),
    help="a model's repository folder (its newest bundle is served) or a bundle",
)
@serve_options
@click.version_option(__version__, prog_name="ersilia_serve")
def serve_cli(
    path: Path, host: str, port: int, root_path: str, verbose: bool, quiet: bool, **overrides: Any
) -> None:
    """Serve a packed model with uvicorn (ersilia_pack --model_dir DIR packs one)."""
    serve_with(path, host, port, root_path, verbose, quiet, **overrides)
