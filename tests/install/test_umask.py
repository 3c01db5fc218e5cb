"""Under umask 0 (the Ersilia client sets it before it packs), nothing a pack writes can be
written by group or others: bundle files and folders, the environment and its installed
packages, the manifest; copies of a model directory whose files are 0666 included."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import FIXTURES

from ersilia_pack.pack import pack
from ersilia_pack.runtime.bundle.manifest import load_bundle

pytestmark = pytest.mark.slow


@pytest.fixture
def umask_zero() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _world_writable_model(target: Path) -> Path:
    """The install-as-of fixture as a clone made under umask 0 looks: 0666 files, 0777 dirs."""
    shutil.copytree(FIXTURES / "install-as-of", target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o777 if path.is_dir() or path.suffix == ".sh" else 0o666)
    return target


def _shared_writable(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o022:
            found.append(f"{oct(stat.S_IMODE(mode))} {path}")
    return found


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_pack_under_umask_zero_writes_nothing_group_or_world_writable(
    installer: str,
    tmp_path: Path,
    index_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    umask_zero: None,
) -> None:
    for name, value in index_env.items():
        monkeypatch.setenv(name, value)
    model = _world_writable_model(tmp_path / "model")
    assert _shared_writable(model)  # the source really is world-writable
    eos = tmp_path / "eos"

    result = pack(model, backend="venv", repository_root=eos / "repository", installer=installer)

    prefix = Path(str(load_bundle(result.bundle_dir).manifest.environment.prefix))
    assert prefix.is_relative_to(eos)
    assert list(prefix.glob("lib/python*/site-packages/alpha/__init__.py"))
    assert _shared_writable(eos) == []
    # the caller's umask is back as it was
    assert os.umask(0) == 0
