"""The Ersilia client's drop-ins: ``ersilia_model_pack``, ``ersilia_model_serve`` and
``ersilia_model_lint``, with the names and options the client calls them with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ersilia_pack.commands.common import (
    HELP_OPTIONS,
    backend_options,
    install_options,
    logging_options,
    setup_logging,
)
from ersilia_pack.commands.pack import pack_and_report
from ersilia_pack.commands.serve import serve_options, serve_with


@click.command(context_settings=HELP_OPTIONS)
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
@backend_options
@click.option("--strict", is_flag=True, help="fail when the example output differs")
@click.option("--no-check", "no_check", is_flag=True, help="skip the example check")
@install_options
@logging_options
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
    setup_logging(verbose, quiet)
    chosen = backend or ("conda" if env_name else "venv")
    pack_and_report(
        repo_path,
        bundles,
        backend=chosen,
        env_name=env_name,
        strict=strict,
        check=not no_check,
        installer=installer,
        as_of=as_of,
    )


@click.command(context_settings=HELP_OPTIONS)
@click.option(
    "--bundle_path",
    "--bundle-path",
    "path",
    required=True,
    type=click.Path(path_type=Path),
    help="a bundle, or the model folder holding one",
)
@serve_options
def model_serve_cli(
    path: Path, host: str, port: int, root_path: str, verbose: bool, quiet: bool, **overrides: Any
) -> None:
    """Drop-in for the Ersilia client's ersilia_model_serve."""
    serve_with(path, host, port, root_path, verbose, quiet, **overrides)


@click.command(context_settings=HELP_OPTIONS)
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
