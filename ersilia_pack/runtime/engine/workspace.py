"""A scratch folder of its own for every run of a model, removed afterwards.

It holds the run's input and output files, its ``TMPDIR``, and its working directory: a
private ``model/framework/`` whose entries are links to the framework folder's entries (and a
``model/`` whose other entries are links to the model folder's, so ``../checkpoints`` works
as it does from the framework folder). A script still finds the framework's files by relative
path, but a file it creates in its working directory (``tmp_input.smi``) is its own.

The run's ``TMPDIR`` is not inside the workspace but a short private folder under the system's
temporary folder (``tmp`` in the workspace links to it): programs put Unix sockets there
(Python's multiprocessing does), and a socket's path may be at most 107 bytes, which a
bundle's own path alone can exceed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

PRIVATE_DIR = 0o700
_TOP_DIRS = frozenset({"model"})
_TOP_LINKS = frozenset({"tmp"})
_FRAMEWORK = frozenset({"framework"})
TMP_PREFIX = "ersilia-run-"
# The longest temporary folder a run's TMPDIR goes under: room is left for what programs put
# in it (multiprocessing: pymp-XXXXXXXX/listener-XXXXXXXX, 33 bytes) below the 107 of a socket.
SHORT_ROOT_MAX = 48


def short_tmp_root() -> Path:
    """Where runs' TMPDIRs go: the system's temporary folder when its path is short, else
    ``/tmp``."""
    root = tempfile.gettempdir()
    if len(os.fsencode(root)) <= SHORT_ROOT_MAX or not os.access("/tmp", os.W_OK | os.X_OK):
        return Path(root)
    return Path("/tmp")


def short_tmp() -> Path:
    """A new private folder (0700, whatever the umask) with a short path, for one TMPDIR."""
    path = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=short_tmp_root()))
    os.chmod(path, PRIVATE_DIR)
    return path


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
        self.tmp = short_tmp()
        os.symlink(self.tmp, self.path / "tmp")
        self.cwd = _mirror(framework_dir, self.path)
        self._framework_links = frozenset(os.listdir(self.cwd))
        self._model_links = frozenset(os.listdir(self.cwd.parent)) - _FRAMEWORK

    def reset(self) -> bool:
        """Empty the folder for another run: remove what the last run made, keep the links.

        False when the run changed the folder's own structure (a link removed or replaced):
        such a workspace is not reused.
        """
        try:
            for path in (self.input_csv, self.output_csv, self.log):
                path.unlink(missing_ok=True)
            if not _keep_only(self.path, _TOP_LINKS, _TOP_DIRS):
                return False
            if not self.tmp.is_dir() or self.tmp.is_symlink():
                return False
            _keep_only(self.tmp, frozenset())
            return _keep_only(self.cwd.parent, self._model_links, _FRAMEWORK) and _keep_only(
                self.cwd, self._framework_links
            )
        except OSError:
            return False

    @property
    def variables(self) -> dict[str, str]:
        """Environment variables of a process running in this workspace."""
        tmp = str(self.tmp)
        return {"TMPDIR": tmp, "TMP": tmp, "TEMP": tmp}

    def remove(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()


class WorkspacePool:
    """Workspaces of one runner, emptied after each run and reused: making one (a folder and
    its links) and removing it cost more than a fast model's whole run."""

    def __init__(self, root: Path, framework_dir: Path, prefix: str) -> None:
        self.root = root
        self.framework_dir = framework_dir
        self.prefix = prefix
        self._free: list[Workspace] = []

    def take(self) -> Workspace:
        if self._free:
            return self._free.pop()
        return Workspace(self.root, self.framework_dir, self.prefix)

    def give(self, workspace: Workspace) -> None:
        if workspace.reset():
            self._free.append(workspace)
        else:
            workspace.remove()

    def close(self) -> None:
        while self._free:
            self._free.pop().remove()


def _keep_only(folder: Path, links: frozenset[str], dirs: frozenset[str] = frozenset()) -> bool:
    """Remove the entries of ``folder`` other than the links ``links`` and the folders
    ``dirs``; False when one of them is gone or is no longer what it was."""
    seen = 0
    with os.scandir(folder) as entries:
        found = list(entries)
    for entry in found:
        if entry.name in links or entry.name in dirs:
            is_link = entry.is_symlink()
            if is_link != (entry.name in links):
                return False
            seen += 1
        elif entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    return seen == len(links) + len(dirs)


def _link_entries(source: Path, target: Path, *, skip: str = "") -> None:
    with os.scandir(source) as entries:
        for entry in entries:
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
    killed with SIGKILL cleans nothing up); the number removed.

    A process still running in one (its working directory or its TMPDIR in it: a run that
    outlived its server) is killed first, so no run goes on in a folder that is gone.
    """
    removed = 0
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        parts = entry.name.split(".")
        if len(parts) < 3 or not parts[-2].isdigit() or _alive(int(parts[-2])):
            continue
        _kill_processes_in(entry)
        _remove_linked_tmp(entry / "tmp")
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def _kill_processes_in(folder: Path, *, within: float = 5.0) -> list[int]:
    """SIGKILL this user's processes that work in ``folder`` (their working directory is in
    it, or their TMPDIR is its ``tmp``), and wait, boundedly, until they are gone; their ids."""
    places = [os.path.realpath(folder)]
    with contextlib.suppress(OSError):
        places.append(os.path.realpath(os.readlink(folder / "tmp")))
    found = [pid for pid in _processes() if _works_in(pid, places)]
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + within
    while any(_alive(pid) and not _zombie(pid) for pid in found) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def _processes() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:  # no /proc: nothing to find
        return []
    return [int(name) for name in names if name.isdigit() and int(name) != os.getpid()]


def _inside(path: str, places: list[str]) -> bool:
    return any(path == place or path.startswith(place + os.sep) for place in places)


def _works_in(pid: int, places: list[str]) -> bool:
    try:
        if _inside(os.readlink(f"/proc/{pid}/cwd"), places):
            return True
        with open(f"/proc/{pid}/environ", "rb") as handle:
            variables = handle.read().split(b"\0")
    except OSError:  # gone, or another user's
        return False
    tmp = next((v[7:] for v in variables if v.startswith(b"TMPDIR=")), None)
    return tmp is not None and _inside(os.fsdecode(tmp), places)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def _remove_linked_tmp(link: Path) -> None:
    """Remove the TMPDIR a workspace's ``tmp`` link points to, when it is one of ours."""
    try:
        target = Path(os.readlink(link))
    except OSError:
        return
    if target.name.startswith(TMP_PREFIX) and target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
