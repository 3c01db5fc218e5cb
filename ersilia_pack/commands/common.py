"""What every command shares: the console-script wrapper that maps errors to exit codes,
logging to stderr, and the options more than one command offers."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ersilia_pack.errors import ErsiliaPackError

EXIT_USAGE = 1
EXIT_INTERNAL = 4
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

# Each command imports its machinery (packing, the server, images, manifests) when it runs, so
# a --help loads none of it; the names its options offer are spelled here, and
# tests/unit/test_cli_names.py holds them to the registries they name.
BACKENDS = ("system", "venv", "conda")  # ersilia_pack.install.BACKENDS
INSTALLERS = ("uv", "pip")  # ersilia_pack.install.installer.INSTALLERS

BACKEND_HELP = {
    "system": "install with the current Python and PATH (containers)",
    "venv": "install into a virtual environment in the repository (default)",
    "conda": "install into a conda environment named after the model",
}


def run_command(command: click.Command) -> None:
    """Run ``command`` on the process's arguments as a console script: exit 1 on bad
    arguments, the error's code on failure."""
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


def setup_logging(verbose: bool, quiet: bool) -> None:
    """The package's log lines on stderr, bare: debug with ``verbose``, warnings only with
    ``quiet``, else info."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("ersilia_pack")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def backend_options(function: Callable[..., Any]) -> Callable[..., Any]:
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
            f"--{name}", f"backend_{name}", is_flag=True, help=BACKEND_HELP[name]
        )(with_backend)
    return with_backend


def install_options(function: Callable[..., Any]) -> Callable[..., Any]:
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


def logging_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``-v/--verbose`` and ``-q/--quiet``."""
    function = click.option("-v", "--verbose", is_flag=True, help="more detail")(function)
    function = click.option("-q", "--quiet", is_flag=True, help="warnings and errors only")(
        function
    )
    return function
