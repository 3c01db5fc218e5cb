"""A run's own folder: links to the framework, its own files, private whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ersilia_pack.runtime.engine.service import slots_per_api
from ersilia_pack.runtime.engine.workspace import Workspace, WorkspacePool, sweep
from ersilia_pack.runtime.settings import ServeSettings


def _model(root: Path) -> Path:
    framework = root / "model" / "framework"
    (framework / "code").mkdir(parents=True)
    (framework / "code" / "main.py").write_text("print('hi')\n")
    (framework / "run.sh").write_text("python $1/code/main.py $2 $3\n")
    (root / "model" / "checkpoints").mkdir()
    (root / "model" / "checkpoints" / "w.txt").write_text("weights\n")
    return framework


def test_a_run_finds_the_framework_by_relative_path_but_writes_its_own_files(
    tmp_path: Path,
) -> None:
    framework = _model(tmp_path / "bundle")
    runs = tmp_path / "bundle" / "state" / "runs"
    with Workspace(runs, framework, "run") as first, Workspace(runs, framework, "run") as second:
        for workspace in (first, second):
            assert (workspace.cwd / "code" / "main.py").read_text() == "print('hi')\n"
            assert (workspace.cwd / ".." / "checkpoints" / "w.txt").read_text() == "weights\n"
        (first.cwd / "tmp_input.smi").write_text("first\n")
        (second.cwd / "tmp_input.smi").write_text("second\n")
        assert (first.cwd / "tmp_input.smi").read_text() == "first\n"
        assert not (framework / "tmp_input.smi").exists()
        assert first.variables["TMPDIR"] != second.variables["TMPDIR"]
        assert Path(first.variables["TMPDIR"]).is_dir()
    assert list(runs.iterdir()) == []


def test_run_folders_are_private_whatever_the_umask(tmp_path: Path) -> None:
    framework = _model(tmp_path / "bundle")
    runs = tmp_path / "bundle" / "state" / "runs"
    old = os.umask(0)
    try:
        with Workspace(runs, framework, "run") as workspace:
            for folder in (runs, workspace.path, workspace.tmp, workspace.cwd):
                assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    finally:
        os.umask(old)


def test_folders_of_servers_that_are_gone_are_swept(tmp_path: Path) -> None:
    framework = _model(tmp_path / "bundle")
    runs = tmp_path / "bundle" / "state" / "runs"
    mine = Workspace(runs, framework, "run")
    dead = runs / "run.999999999.abcdefgh"
    dead.mkdir()
    assert sweep(runs) == 1
    assert not dead.exists() and mine.path.exists()
    mine.remove()


def test_slots_are_shared_among_apis_unless_given() -> None:
    assert slots_per_api(ServeSettings(workers=3), 5) == 3
    one_api = slots_per_api(ServeSettings(), 1)
    two_apis = slots_per_api(ServeSettings(), 2)
    assert one_api >= 1 and two_apis >= 1
    cpus = len(os.sched_getaffinity(0))
    assert one_api == cpus
    assert two_apis == min(cpus, max(2, cpus // 2))


def test_a_reused_folder_holds_nothing_of_the_run_before(tmp_path: Path) -> None:
    framework = _model(tmp_path / "bundle")
    runs = tmp_path / "bundle" / "state" / "runs"
    pool = WorkspacePool(runs, framework, "run")
    first = pool.take()
    first.input_csv.write_text("input\nCCO\n")
    (first.cwd / "tmp_input.smi").write_text("CCO\n")
    (first.cwd / "scratch").mkdir()
    (first.tmp / "leftover.txt").write_text("x\n")
    (first.cwd.parent / "cache.bin").write_text("x\n")
    pool.give(first)
    again = pool.take()
    assert again is first
    assert sorted(os.listdir(again.path)) == ["model", "tmp"]
    assert sorted(os.listdir(again.cwd)) == ["code", "run.sh"]
    assert sorted(os.listdir(again.cwd.parent)) == ["checkpoints", "framework"]
    assert os.listdir(again.tmp) == []
    # a run that replaced one of the links: its folder is not reused
    (again.cwd / "code").unlink()
    (again.cwd / "code").mkdir()
    pool.give(again)
    assert not again.path.exists()
    assert pool.take() is not again
    pool.close()


def test_a_runs_tmpdir_is_short_and_private_wherever_the_bundle_lives(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / ("f" * 60)
    framework = _model(deep / "bundle")
    runs = deep / "bundle" / "state" / "runs"
    old = os.umask(0)
    try:
        with Workspace(runs, framework, "run") as workspace:
            tmp = Path(workspace.variables["TMPDIR"])
            # room for multiprocessing's pymp-XXXXXXXX/listener-XXXXXXXX below 107 bytes
            assert len(os.fsencode(tmp)) + 33 < 107
            assert stat.S_IMODE(tmp.stat().st_mode) == 0o700
            assert (workspace.path / "tmp").resolve() == tmp.resolve()
    finally:
        os.umask(old)
    assert not tmp.exists()


def test_the_tmpdir_of_a_server_that_is_gone_is_swept_with_its_folder(tmp_path: Path) -> None:
    framework = _model(tmp_path / "bundle")
    runs = tmp_path / "bundle" / "state" / "runs"
    workspace = Workspace(runs, framework, "run")
    (workspace.tmp / "left.txt").write_text("x\n")
    dead = runs / "run.999999999.abcdefgh"
    workspace.path.rename(dead)
    assert sweep(runs) == 1
    assert not dead.exists() and not workspace.tmp.exists()
