"""The names the command-line options offer match the registries they stand for (the CLI
spells them itself so that a --help imports none of the machinery)."""

from __future__ import annotations

from ersilia_pack import cli, containerize, kube, pack
from ersilia_pack.install import BACKENDS
from ersilia_pack.install.installer import INSTALLERS


def test_the_options_offer_the_registries_names() -> None:
    assert tuple(BACKENDS) == cli.BACKENDS
    assert set(cli._BACKEND_HELP) == set(BACKENDS)
    assert cli.INSTALLERS == INSTALLERS
    assert cli.DEFAULT_KEEP == pack.DEFAULT_KEEP
    assert cli.DEFAULT_BASE == containerize.DEFAULT_BASE
    assert cli.ENGINES == containerize.ENGINES
    assert cli.AUTOSCALERS == kube.AUTOSCALERS
