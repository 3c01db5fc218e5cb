"""The names the command-line options offer match the registries they stand for (the commands
spell them themselves so that a --help imports none of the machinery)."""

from __future__ import annotations

from ersilia_pack import containerize, kube, pack
from ersilia_pack.commands import common, image
from ersilia_pack.commands import pack as pack_command
from ersilia_pack.install import BACKENDS
from ersilia_pack.install.installer import INSTALLERS


def test_the_options_offer_the_registries_names() -> None:
    assert tuple(BACKENDS) == common.BACKENDS
    assert set(common.BACKEND_HELP) == set(BACKENDS)
    assert common.INSTALLERS == INSTALLERS
    assert pack_command.DEFAULT_KEEP == pack.DEFAULT_KEEP
    assert image.DEFAULT_BASE == containerize.DEFAULT_BASE
    assert image.ENGINES == containerize.ENGINES
    assert image.AUTOSCALERS == kube.AUTOSCALERS
