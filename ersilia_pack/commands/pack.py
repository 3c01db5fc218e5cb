"""``ersilia_pack``: pack a model directory into a bundle; its ``run`` and ``containerize``
commands hang off the same group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ersilia_pack import __version__
from ersilia_pack.commands.common import (
    HELP_OPTIONS,
    backend_options,
    install_options,
    logging_options,
    setup_logging,
)
from ersilia_pack.commands.image import containerize_cli
from ersilia_pack.commands.run import run_cli

DEFAULT_KEEP = 3  # ersilia_pack.pack.DEFAULT_KEEP


def pack_and_report(model_dir: Path, repository_root: Path | None, **options: Any) -> None:
    """Pack ``model_dir`` (see :func:`ersilia_pack.pack.pack`) and say where the bundle went."""
    from ersilia_pack.pack import pack

    result = pack(model_dir, repository_root=repository_root, **options)
    click.echo(f"packed {result.model_id} into {result.bundle_dir}")
    if result.warnings:
        click.echo(
            f"{len(result.warnings)} example difference(s), see the warnings above", err=True
        )


@click.group(
    invoke_without_command=True,
    context_settings=HELP_OPTIONS,
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
@backend_options
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
@install_options
@logging_options
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
    setup_logging(verbose, quiet)
    if ctx.invoked_subcommand is not None:
        return
    if model_dir is None:
        raise click.UsageError("Missing option '--model_dir'.", ctx=ctx)
    root = eos.expanduser() / "repository" if eos else None
    pack_and_report(
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


pack_cli.add_command(run_cli)
pack_cli.add_command(containerize_cli)
