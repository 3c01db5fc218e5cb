"""A scratch folder of its own for every run of a model, removed afterwards.

It holds the run's input and output files, its ``TMPDIR``, and its working directory: a
private ``model/framework/`` whose entries are links to the framework folder's entries (and a
``model/`` whose other entries are links to the model folder's, so ``../checkpoints`` works
as it does from the framework folder). A script still finds the framework's files by relative
path, but a file it creates in its working directory (``tmp_input.smi``) is its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

PRIVATE_DIR = 0o700


def private_dir(path: Path) -> Path:
    """Make ``path`` (and its parents) with no access for anyone but the owner, whatever the
    umask; an existing folder is made private too."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    with contextlib.suppress(PermissionError):
        os.chmod(path, PRIVATE_DIR)
    return path


class Workspace:
    """One run's scratch folder under ``root``."""

    def __init__(self, root: Path, framework_dir: Path, prefix: str) -> None:
        # The server's pid in the name tells a folder of a server that was killed.
        owner = f"{prefix}.{os.getpid()}."
        self.path = Path(tempfile.mkdtemp(prefix=owner, dir=private_dir(root)))
        self.input_csv = self.path / "input.csv"
        self.output_csv = self.path / "output.csv"
        self.log = self.path / "run.log"
        self.tmp = self.path / "tmp"
        self.tmp.mkdir(mode=PRIVATE_DIR)
        self.cwd = _mirror(framework_dir, self.path)

    @property
    def variables(self) -> dict[str, str]:
        """Environment variables of a process running in this workspace."""
        tmp = str(self.tmp)
        return {"TMPDIR": tmp, "TMP": tmp, "TEMP": tmp}

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()


def _link_entries(source: Path, target: Path, *, skip: str = "") -> None:
    for entry in os.scandir(source):
        if entry.name != skip:
            os.symlink(entry.path, target / entry.name)


def _mirror(framework_dir: Path, root: Path) -> Path:
    """``root/model/framework`` linking to the framework's entries; the working directory."""
    model = root / "model"
    cwd = model / "framework"
    cwd.mkdir(parents=True, mode=PRIVATE_DIR)
    _link_entries(framework_dir, cwd)
    if framework_dir.parent.name == "model":
        _link_entries(framework_dir.parent, model, skip="framework")
    return cwd


def sweep(root: Path) -> int:
    """Remove the workspaces that servers no longer running left under ``root`` (a server
    killed with SIGKILL cleans nothing up); the number removed."""
    removed = 0
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        parts = entry.name.split(".")
        if len(parts) < 3 or not parts[-2].isdigit() or _alive(int(parts[-2])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
