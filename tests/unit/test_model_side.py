"""The model-side programs (the warm runner and the load-once worker), read in-process: what a
warm runner preloads and reports, how a worker finds, loads and answers with a model."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ersilia_pack.model_side import warm, worker

SCRIPT = """\
import os, sys as system
from rdkit import Chem, DataStructs
from . import sibling
try:
    import numpy as np
except ImportError:
    np = None
else:
    import pandas
finally:
    import json
if os.environ.get("X"):
    import torch


def main():
    import sklearn
"""


def test_the_warm_runner_preloads_the_top_level_imports_of_a_script(tmp_path: Path) -> None:
    script = tmp_path / "main.py"
    script.write_text(SCRIPT, encoding="utf-8")

    assert warm.top_level_imports(str(script)) == [
        "os",
        "sys",
        "rdkit",
        "rdkit.Chem",
        "rdkit.DataStructs",
        "numpy",
        "pandas",
        "json",
    ]


def test_a_preload_that_fails_is_left_for_the_run(tmp_path: Path) -> None:
    script = tmp_path / "main.py"
    script.write_text("import json\nimport no_such_module_anywhere\n", encoding="utf-8")

    assert warm.preload(str(script)) == ["json"]


@pytest.mark.parametrize(
    "status, code",
    [(0, 0), (3 << 8, 3), (255 << 8, 255), (signal.SIGKILL, -9), (signal.SIGTERM, -15)],
)
def test_a_wait_status_becomes_an_exit_code_negative_for_a_signal(status: int, code: int) -> None:
    assert warm.exit_code(status) == code


@pytest.fixture
def main_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """What running a script as __main__ changes, put back afterwards; a folder to run in."""
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    yield workdir


def _run(script: Path, source: str, workdir: Path) -> int:
    script.write_text(source, encoding="utf-8")
    code = compile(source, str(script), "exec")
    return warm.execute(code, str(script), [str(script), "in.csv", "out.csv"], str(workdir))


def test_a_script_runs_as_main_with_its_argv_in_its_working_directory(
    main_module: Path, tmp_path: Path
) -> None:
    source = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "if __name__ == '__main__':\n"
        "    Path(sys.argv[2]).write_text(os.getcwd() + ' ' + sys.argv[1])\n"
    )
    status = _run(tmp_path / "main.py", source, main_module)

    assert status == 0
    assert (main_module / "out.csv").read_text() == f"{main_module} in.csv"


@pytest.mark.parametrize(
    "source, code, stderr",
    [
        ("import sys\nsys.exit()\n", 0, ""),
        ("raise SystemExit(3)\n", 3, ""),
        ("import sys\nsys.exit('no input file')\n", 1, "no input file\n"),
        ("raise ValueError('bad molecule')\n", 1, "ValueError: bad molecule\n"),
    ],
)
def test_a_script_s_exit_or_error_becomes_its_exit_code(
    main_module: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    source: str,
    code: int,
    stderr: str,
) -> None:
    assert _run(tmp_path / "main.py", source, main_module) == code
    assert capsys.readouterr().err.endswith(stderr)


def test_pipes_are_read_whole(tmp_path: Path) -> None:
    read, write = os.pipe()
    try:
        worker.write_fd(write, b"0123456789")
        assert warm.read_exact(read, 4) == b"0123"
        os.close(write)
        write = -1
        assert warm.read_all(read) == b"456789"
        assert warm.read_exact(read, 4) == b""
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


@pytest.mark.parametrize("program", [warm, worker])
def test_the_usage_names_the_model_and_version_from_the_bundle_s_manifest(
    program: types.ModuleType, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps({"model_id": "eos3b5e", "ersilia_pack_version": "9.8.7"}), encoding="utf-8"
    )

    text = program.usage(manifest)

    assert "of eos3b5e (ersilia_pack 9.8.7)\n" in text
    assert text.endswith(program.USAGE)
    manifest.write_text("[1, 2]", encoding="utf-8")
    assert f"no readable manifest at {manifest}" in program.usage(manifest)
    assert f"no readable manifest at {tmp_path / 'none.json'}" in program.usage(
        tmp_path / "none.json"
    )


class _Array:
    """Stands in for a numpy array: JSON cannot carry it, ``tolist()`` can."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def tolist(self) -> list[float]:
        return self.values


class _Model:
    def load(self) -> None:
        self.loaded = True

    def predict(self, inputs: list[str]) -> list[Any]:
        if "BAD" in inputs:
            raise ValueError("cannot parse BAD")
        return [
            None,
            [1.0, "a"],
            {"x": 1},
            (2.0, "b"),
            _Array([3.0, 4.0]),
            7,
        ][: len(inputs)]


def test_a_batch_s_rows_come_back_as_json_can_carry_them() -> None:
    reply = worker.predict_batch(_Model(), {"id": 4, "inputs": ["a", "b", "c", "d", "e", "f"]})

    assert reply == {
        "ok": True,
        "rows": [None, [1.0, "a"], {"x": 1}, [2.0, "b"], [3.0, 4.0], 7],
    }
    json.dumps(reply)


def test_a_batch_whose_predict_fails_answers_the_end_of_its_traceback() -> None:
    reply = worker.predict_batch(_Model(), {"inputs": ["CCO", "BAD"]})

    assert reply["ok"] is False
    assert reply["error"].startswith("Traceback")
    assert reply["error"].endswith("ValueError: cannot parse BAD\n")
    assert "in predict" in reply["error"]


def test_a_batch_without_inputs_fails_as_a_batch_not_as_the_worker() -> None:
    reply = worker.predict_batch(_Model(), {"id": 1})

    assert reply["ok"] is False
    assert "KeyError: 'inputs'" in reply["error"]


MODEL_MODULE = """\
from collections import OrderedDict


class Helper:
    def load(self):
        pass


class Model:
    def load(self):
        self.loaded = True

    def predict(self, inputs):
        return [[len(item)] for item in inputs]


class Other(Model):
    pass
"""


@pytest.fixture
def model_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model module in a folder of its own; sys.path and sys.modules put back afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "tiny_worker_model", types.ModuleType("placeholder"))
    script = tmp_path / "framework" / "tiny_worker_model.py"
    script.parent.mkdir()
    script.write_text(MODEL_MODULE, encoding="utf-8")
    return script


def test_a_worker_loads_the_first_class_with_load_and_predict(model_script: Path) -> None:
    model = worker.load_model(str(model_script), "")

    assert type(model).__name__ == "Model"
    assert model.loaded is True
    assert worker.predict_batch(model, {"inputs": ["CCO", "C"]}) == {"ok": True, "rows": [[3], [1]]}
    assert sys.path[0] == str(model_script.parent)


def test_a_worker_loads_the_class_it_is_told(model_script: Path) -> None:
    assert type(worker.load_model(str(model_script), "Other")).__name__ == "Other"


def test_a_module_without_a_model_class_says_so() -> None:
    module = types.ModuleType("helpers_only")
    module.__file__ = "/models/helpers_only.py"
    exec("class Helper:\n    def load(self): pass\n", module.__dict__)

    with pytest.raises(LookupError, match=r"helpers_only.py defines no class with load\(\)"):
        worker.find_class(module, "")


def test_a_killed_slot_s_tmpdir_is_emptied_but_kept(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    (tmp / "nested" / "deeper").mkdir(parents=True)
    (tmp / "nested" / "deeper" / "f").write_text("x")
    (tmp / "file").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (tmp / "link").symlink_to(outside, target_is_directory=True)

    worker.empty_folder(str(tmp))

    assert tmp.is_dir() and list(tmp.iterdir()) == []
    assert (outside / "keep").exists()
    worker.empty_folder(str(tmp_path / "missing"))  # nothing to do, and no error


def test_threads_running_after_load_are_named() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="model-prefetch")
    thread.start()
    try:
        assert "model-prefetch" in worker.running_threads()
    finally:
        stop.set()
        thread.join()
    assert "model-prefetch" not in worker.running_threads()
