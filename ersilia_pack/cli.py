"""The console scripts. Each loads only its own command family from
:mod:`ersilia_pack.commands` and runs it with the errors mapped to exit codes."""

from __future__ import annotations

from ersilia_pack.commands.common import run_command


def pack_command() -> None:
    """``ersilia_pack``: pack a model directory; ``run`` and ``containerize`` below it."""
    from ersilia_pack.commands.pack import pack_cli

    run_command(pack_cli)


def serve_command() -> None:
    """``ersilia_serve``: serve a packed model."""
    from ersilia_pack.commands.serve import serve_cli

    run_command(serve_cli)


def model_pack_command() -> None:
    """``ersilia_model_pack``: the Ersilia client's pack."""
    from ersilia_pack.commands.ersilia import model_pack_cli

    run_command(model_pack_cli)


def model_serve_command() -> None:
    """``ersilia_model_serve``: the Ersilia client's serve."""
    from ersilia_pack.commands.ersilia import model_serve_cli

    run_command(model_serve_cli)


def model_lint_command() -> None:
    """``ersilia_model_lint``: the Ersilia client's validation."""
    from ersilia_pack.commands.ersilia import model_lint_cli

    run_command(model_lint_cli)
