"""The fast engine: warm runs of legacy scripts, load-once workers that survive being killed,
micro-batching, and per-row failure."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import (
    DATA,
    DEMO_DIR,
    app_client,
    processes_mentioning,
    wait_ready,
    wait_until_gone,
    write_tree,
)

from ersilia_pack.model_dir import warm_script
from ersilia_pack.pack import pack
from ersilia_pack.runtime.bundle.manifest import load_bundle

NO_CACHE = {"fetch_cache": "false", "save_cache": "false"}
METADATA = "Identifier: {id}\nSlug: {id}-slug\nTitle: {id}\n"

# A legacy API of the warm shape whose script fails the whole run when one input is "BAD",
# and otherwise answers with the input reversed and its length.
REVERSER = {
    "model/framework/run.sh": "python $1/code/main.py $2 $3",
    "model/framework/code/main.py": (
        "import csv\nimport sys\n\n\n"
        "def main(source, target):\n"
        "    with open(source, newline='') as handle:\n"
        "        values = [row[0] for row in list(csv.reader(handle))[1:]]\n"
        "    if 'BAD' in values:\n"
        "        sys.exit('cannot read BAD')\n"
        "    with open(target, 'w', newline='') as handle:\n"
        "        writer = csv.writer(handle)\n"
        "        writer.writerow(['reversed', 'length'])\n"
        "        writer.writerows([value[::-1], len(value)] for value in values)\n\n\n"
        "if __name__ == '__main__':\n"
        "    main(sys.argv[1], sys.argv[2])\n"
    ),
    "model/framework/columns/run_columns.csv": (
        "name,type,direction,description\nreversed,string,,the input backwards\n"
        "length,integer,,characters in the input\n"
    ),
    "model/framework/examples/run_input.csv": "input\nabc\nhello\n",
    "model/framework/examples/run_output.csv": "reversed,length\ncba,3\nolleh,5\n",
}


def model_dir(root: Path, model_id: str, files: dict[str, str]) -> Path:
    return write_tree(root / model_id, {"metadata.yml": METADATA.format(id=model_id), **files})


def post(client, api: str, inputs: list[str], **params: str):  # type: ignore[no-untyped-def]
    return client.post(f"/{api}", json=inputs, params={**NO_CACHE, **params})


def read_data(count: int) -> list[tuple[str, float]]:
    with DATA.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    return [(row["input"], float(row["mol_weight"])) for row in rows]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("python $1/code/main.py $2 $3", "code/main.py"),
        ("python $1/code/main.py $2 $3\n", "code/main.py"),
        ('#!/bin/bash\n# run the model\npython "$1/code/main.py" "$2" "$3"\n', "code/main.py"),
        ("python3 ${1}/code/main.py ${2} ${3}", "code/main.py"),
        ("python code/main.py $2 $3", "code/main.py"),
        ("exec python $1/code/main.py $2 $3", "code/main.py"),
        ("cd $1\npython code/main.py $2 $3", None),
        ("python $1/code/main.py $2 $3 --fast", None),
        ("python -m mymodel $2 $3", None),
        ("python $1/code/missing.py $2 $3", None),
        ("python $1/../outside.py $2 $3", None),
        ("bash $1/code/other.sh $2 $3", None),
    ],
)
def test_only_the_python_script_shape_runs_warm(
    tmp_path: Path, text: str, expected: str | None
) -> None:
    framework = tmp_path / "model" / "framework"
    write_tree(framework, {"run.sh": text, "code/main.py": "", "code/other.sh": ""})
    (tmp_path / "model" / "outside.py").write_text("")
    assert warm_script(framework, "run.sh") == expected


def test_warm_runs_give_what_cold_runs_give_on_real_molecules(tmp_path: Path) -> None:
    bundle = pack(DEMO_DIR, backend="system", repository_root=tmp_path).bundle_dir
    assert load_bundle(bundle).apis["run"].decided.warm is True
    molecules = read_data(300)
    smiles = [value for value, _ in molecules] + ["not a molecule", ""]
    with app_client(bundle) as warm, app_client(bundle, cold=True) as cold:
        warm_rows = post(warm, "run", smiles).json()
        cold_rows = post(cold, "run", smiles).json()
        assert warm.app.state.service.engines["run"].runner.warm
        assert not cold.app.state.service.engines["run"].runner.warm
    assert warm_rows == cold_rows
    for (_, weight), row in zip(molecules, warm_rows):
        assert row["mol_weight"] == pytest.approx(weight, rel=1e-6)
    assert warm_rows[-2:] == [dict.fromkeys(warm_rows[0])] * 2


def test_a_script_whose_warm_run_differs_runs_cold(tmp_path: Path) -> None:
    # The script reports whether `decimal` was imported before its own import: a warm run
    # (which pre-imports it) differs from a cold one, so the pack keeps the API cold.
    script = (
        "import sys\n\nPRELOADED = 'decimal' in sys.modules\n\nimport decimal  # noqa\n\n"
        "rows = list(open(sys.argv[1]))[1:]\n"
        "with open(sys.argv[2], 'w') as handle:\n"
        "    handle.write('preloaded\\n')\n"
        "    handle.writelines(f'{int(PRELOADED)}\\n' for _ in rows)\n"
    )
    source = model_dir(
        tmp_path,
        "differs",
        {
            "model/framework/run.sh": "python $1/code/main.py $2 $3\n",
            "model/framework/code/main.py": script,
            "model/framework/examples/run_input.csv": "input\na\nb\n",
            "model/framework/examples/run_output.csv": "preloaded\n0\n0\n",
        },
    )
    bundle = pack(source, backend="system", repository_root=tmp_path / "repo").bundle_dir
    api = load_bundle(bundle).apis["run"]
    assert api.warm_script == "code/main.py"
    assert api.decided.warm is False
    with app_client(bundle) as client:
        assert post(client, "run", ["x", "y"]).json() == [{"preloaded": 0}, {"preloaded": 0}]


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_one_bad_input_among_100_gets_one_null_row(tmp_path: Path, cold: bool) -> None:
    bundle = pack(
        model_dir(tmp_path, "reverser", REVERSER), backend="system", repository_root=tmp_path
    ).bundle_dir
    inputs = [f"molecule{i}" for i in range(100)]
    inputs[37] = "BAD"
    with app_client(bundle, cold=cold) as client:
        response = post(client, "run", inputs, with_meta="true")
    assert response.status_code == 200
    assert response.headers["X-Failed-Rows"] == "1"
    body = response.json()
    rows = body["result"]
    assert rows[37] == {"reversed": None, "length": None}
    for i, row in enumerate(rows):
        if i != 37:
            assert row == {"reversed": inputs[i][::-1], "length": len(inputs[i])}
    (failed,) = body["meta"]["failed"]
    assert failed["index"] == 37 and failed["input"] == "BAD"
    assert "exited with code 1" in failed["reason"]
    assert "cannot read BAD" in failed["reason"]  # the model's own last words
    assert str(tmp_path) not in response.text


def test_concurrent_callers_get_their_own_rows_in_merged_runs(tmp_path: Path) -> None:
    files = dict(REVERSER)
    # Each run takes a while, so callers arriving meanwhile are merged into the next run.
    files["model/framework/code/main.py"] = files["model/framework/code/main.py"].replace(
        "def main(source, target):\n",
        "def main(source, target):\n    __import__('time').sleep(0.3)\n",
    )
    bundle = pack(
        model_dir(tmp_path, "slow-reverser", files), backend="system", repository_root=tmp_path
    ).bundle_dir
    callers = 30
    with app_client(bundle, workers=2) as client:
        wait_ready(client)
        engine = client.app.state.service.engines["run"]
        runs_before = engine.runs

        def call(number: int) -> tuple[int, list[dict[str, object]]]:
            inputs = [f"caller{number}x{j}" for j in range(3)] + ["shared", f"caller{number}x0"]
            return number, post(client, "run", inputs).json()

        with ThreadPoolExecutor(callers) as pool:
            answers = list(pool.map(call, range(callers)))
        runs = engine.runs - runs_before
    for number, rows in answers:
        expected = [f"caller{number}x{j}" for j in range(3)] + ["shared", f"caller{number}x0"]
        assert rows == [{"reversed": v[::-1], "length": len(v)} for v in expected]
    assert runs < callers


def _slow_load_once(tmp_path: Path) -> Path:
    files = {
        "model/framework/run.py": (
            "import os\nimport time\n\n\n"
            "class Slow:\n"
            "    def load(self):\n"
            "        self.prefix = '>'\n\n"
            "    def predict(self, inputs):\n"
            "        if 'SLOW' in inputs:\n"
            "            open(os.environ['SLOW_STARTED'], 'w').close()\n"
            "            time.sleep(3)\n"
            "        return [{'echo': self.prefix + value} for value in inputs]\n"
        ),
        "model/framework/examples/run_input.csv": "input\na\n",
        "model/framework/examples/run_output.csv": "echo\n>a\n",
    }
    source = model_dir(tmp_path, "slow-worker", files)
    return pack(source, backend="system", repository_root=tmp_path / "repo").bundle_dir


@pytest.mark.parametrize(
    ("api_kind", "victim_kind"),
    [
        ("load-once", "parent"),
        ("load-once", "child"),
        ("load-once", "separate"),
        ("warm", "parent"),
        ("warm", "child"),
        ("warm", "separate"),
    ],
)
def test_a_process_killed_mid_request_is_replaced(
    tmp_path: Path, api_kind: str, victim_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = tmp_path / "slow-started"
    monkeypatch.setenv("SLOW_STARTED", str(started))
    if api_kind == "load-once":
        bundle = _slow_load_once(tmp_path)
        marker, slow_input, expected = "app/worker.py", "SLOW", {"echo": ">SLOW"}
    else:
        files = dict(REVERSER)
        files["model/framework/code/main.py"] = files["model/framework/code/main.py"].replace(
            "    if 'BAD' in values:",
            "    if 'SLOW' in values:\n"
            "        open(__import__('os').environ['SLOW_STARTED'], 'w').close()\n"
            "        __import__('time').sleep(3)\n"
            "    if 'BAD' in values:",
        )
        bundle = pack(
            model_dir(tmp_path, "warm-victim", files), backend="system", repository_root=tmp_path
        ).bundle_dir
        marker, slow_input, expected = "app/warm.py", "SLOW", {"reversed": "WOLS", "length": 4}
    marker = str(bundle / marker)
    separate = victim_kind == "separate"
    with app_client(bundle, workers=1, timeout=30, separate_workers=separate) as client:
        wait_ready(client)
        (root,) = [pid for pid in processes_mentioning(marker) if _is_pool_root(pid, marker)]
        answer: dict[str, object] = {}
        caller = threading.Thread(
            target=lambda: answer.update(response=post(client, "run", [slow_input]))
        )
        caller.start()
        deadline = time.monotonic() + 30
        while not started.exists():  # the slow input is now being computed by the only process
            assert time.monotonic() < deadline, "the slow input never started"
            time.sleep(0.02)
        victim = root
        if victim_kind == "child":
            # the forked child computing the slow input: in a process group of its own, in the
            # run's folder (a warm child forked ahead is still where its parent is)
            (victim,) = [
                pid
                for pid in processes_mentioning(marker)
                if _stat(pid)[0] == root
                and os.getpgid(pid) == pid
                and os.readlink(f"/proc/{pid}/cwd") != os.readlink(f"/proc/{root}/cwd")
            ]
        os.kill(victim, signal.SIGKILL)
        caller.join(30)
        response = answer["response"]
        assert response.status_code == 200, response.text  # type: ignore[attr-defined]
        assert response.json() == [expected]  # type: ignore[attr-defined]
        assert post(client, "run", ["ok"]).status_code == 200
        survivors = [pid for pid in processes_mentioning(marker) if _is_pool_root(pid, marker)]
        assert victim not in survivors and len(survivors) == 1
        if victim_kind == "child":  # the parent forked a replacement and did not reload
            assert survivors == [root]
        assert client.app.state.service.engines["run"].runner.restarts >= 1
    assert wait_until_gone(marker) == []


def _stat(pid: int) -> tuple[int, str]:
    """A process's parent pid and state ((0, "") once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, ""
    return int(fields[1]), fields[0]


def _is_pool_root(pid: int, marker: str) -> bool:
    """A process the server started, not one of the forked children (whose parent holds it)."""
    parent, state = _stat(pid)
    return bool(state) and state != "Z" and parent not in processes_mentioning(marker)


def test_duplicates_within_a_request_are_computed_once(tmp_path: Path) -> None:
    counter = tmp_path / "seen.txt"
    files = dict(REVERSER)
    files["model/framework/code/main.py"] = (
        files["model/framework/code/main.py"]
        .replace(
            "    if 'BAD' in values:",
            f"    open({str(counter)!r}, 'a').write(json.dumps(values) + '\\n')\n"
            "    if 'BAD' in values:",
        )
        .replace("import csv\n", "import csv\nimport json\n")
    )
    bundle = pack(
        model_dir(tmp_path, "counting", files),
        backend="system",
        repository_root=tmp_path,
        check=False,
    ).bundle_dir
    # without the start-up self-check, whose example run would be counted too
    with app_client(bundle, workers=1, cold=True, self_check=False) as client:
        rows = post(client, "run", ["a", "b", "a", "a", "c", "b"]).json()
    assert [row["reversed"] for row in rows] == ["a", "b", "a", "a", "c", "b"]
    runs = [json.loads(line) for line in counter.read_text().splitlines()]
    assert runs == [["a", "b", "c"]]


def test_a_null_row_the_model_chose_is_counted_with_a_reason(tmp_path: Path) -> None:
    bundle = pack(DEMO_DIR, backend="system", repository_root=tmp_path).bundle_dir
    with app_client(bundle, workers=1) as client:
        response = post(client, "run", ["CCO", "not a molecule"], with_meta="true")
        plain = post(client, "esol", ["CCO", "not a molecule"])
    body = response.json()
    assert response.headers["X-Failed-Rows"] == "1"
    assert body["result"][1] == dict.fromkeys(body["result"][0])
    assert body["meta"]["failed"] == [
        {"index": 1, "input": "not a molecule", "reason": "the model gave no values for this input"}
    ]
    assert plain.headers["X-Failed-Rows"] == "1"
    assert plain.json()[1] == {"logs": None, "solubility_class": None}


@pytest.mark.parametrize("separate", [False, True], ids=["forked", "separate"])
def test_workers_still_loading_when_the_server_stops_do_not_outlive_it(
    tmp_path: Path, separate: bool
) -> None:
    files = {
        "model/framework/run.py": (
            "import time\n\n\n"
            "class Sleepy:\n"
            "    def load(self):\n"
            "        time.sleep(30)\n\n"
            "    def predict(self, inputs):\n"
            "        return [[value] for value in inputs]\n"
        ),
        "model/framework/columns/run_columns.csv": "name,type\necho,string\n",
    }
    source = model_dir(tmp_path, "sleepy", files)
    bundle = pack(source, backend="system", repository_root=tmp_path / "repo", check=False)
    marker = str(bundle.bundle_dir / "app" / "worker.py")
    # two slots: one parent loads (its children are forked once it has), or two workers
    loading = 2 if separate else 1
    with app_client(bundle.bundle_dir, workers=2, separate_workers=separate):
        deadline = time.monotonic() + 20
        while len(processes_mentioning(marker)) < loading and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a second loader, were there one, would be there by now
        assert len(processes_mentioning(marker)) == loading
    assert processes_mentioning(marker) == []


def test_a_script_whose_warm_run_hangs_is_packed_cold_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Warm runs pre-import `decimal`; this script hangs when it finds it already imported.
    script = (
        "import sys\nimport time\n\n"
        "if 'decimal' in sys.modules:\n    time.sleep(600)\n\n"
        "import decimal  # noqa\n\n"
        "rows = list(open(sys.argv[1]))[1:]\n"
        "with open(sys.argv[2], 'w') as handle:\n"
        "    handle.write('ok\\n')\n"
        "    handle.writelines('1\\n' for _ in rows)\n"
    )
    source = model_dir(
        tmp_path,
        "hangs-warm",
        {
            "model/framework/run.sh": "python $1/code/main.py $2 $3\n",
            "model/framework/code/main.py": script,
            "model/framework/examples/run_input.csv": "input\na\n",
            "model/framework/examples/run_output.csv": "ok\n1\n",
        },
    )
    monkeypatch.setattr("ersilia_pack.check.WARM_CHECK_MIN_SECONDS", 2.0)
    bundle = pack(source, backend="system", repository_root=tmp_path / "repo").bundle_dir
    assert load_bundle(bundle).apis["run"].decided.warm is False
    assert processes_mentioning(str(bundle)) == []


def test_a_model_whose_load_starts_a_thread_is_served_with_a_process_per_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # predict() hands its inputs to a thread load() started: a forked child has no such
    # thread, so its run hangs; a worker that loaded on its own answers.
    files = {
        "model/framework/run.py": (
            "import queue\nimport threading\n\n\n"
            "class Threaded:\n"
            "    def load(self):\n"
            "        self.jobs = queue.Queue()\n"
            "        threading.Thread(target=self._serve, daemon=True).start()\n\n"
            "    def _serve(self):\n"
            "        while True:\n"
            "            inputs, answer = self.jobs.get()\n"
            "            answer.put([{'echo': value.upper()} for value in inputs])\n\n"
            "    def predict(self, inputs):\n"
            "        answer = queue.Queue()\n"
            "        self.jobs.put((inputs, answer))\n"
            "        return answer.get()\n"
        ),
        "model/framework/examples/run_input.csv": "input\na\nb\n",
        "model/framework/examples/run_output.csv": "echo\nA\nB\n",
    }
    monkeypatch.setattr("ersilia_pack.check.WARM_CHECK_MIN_SECONDS", 2.0)
    source = model_dir(tmp_path, "threaded-load", files)
    bundle = pack(source, backend="system", repository_root=tmp_path / "repo").bundle_dir
    assert load_bundle(bundle).apis["run"].decided.fork is False
    marker = str(bundle / "app" / "worker.py")
    assert processes_mentioning(marker) == []  # the hung forked check left nothing behind
    with app_client(bundle, workers=2, timeout=30) as client:
        wait_ready(client)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda k: post(client, "run", [f"x{k}", "y"]), range(8)))
        # a process per slot, each loaded on its own, none forked from another
        workers = processes_mentioning(marker)
        assert len(workers) == 2
        assert all(_is_pool_root(pid, marker) for pid in workers)
    for k, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert answer.json() == [{"echo": f"X{k}"}, {"echo": "Y"}]


def test_a_forked_load_once_api_shares_one_load_across_its_slots(tmp_path: Path) -> None:
    counter = tmp_path / "loads.txt"
    files = {
        "model/framework/run.py": (
            "import os\n\n\n"
            "class Counted:\n"
            "    def load(self):\n"
            f"        open({str(counter)!r}, 'a').write('load\\n')\n\n"
            "    def predict(self, inputs):\n"
            "        return [{'echo': value, 'pid': os.getpid()} for value in inputs]\n"
        ),
        "model/framework/columns/run_columns.csv": "name,type\necho,string\npid,integer\n",
    }
    source = model_dir(tmp_path, "counted-load", files)
    bundle = pack(source, backend="system", repository_root=tmp_path / "repo", check=False)
    with app_client(bundle.bundle_dir, workers=3, batch_size=1) as client:
        wait_ready(client)
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda k: post(client, "run", [f"v{k}"]), range(30)))
        marker = str(bundle.bundle_dir / "app" / "worker.py")
        (parent,) = [pid for pid in processes_mentioning(marker) if _is_pool_root(pid, marker)]
        slots = {pid for pid in processes_mentioning(marker) if _stat(pid)[0] == parent}
    assert [answer.status_code for answer in answers] == [200] * 30
    assert [answer.json()[0]["echo"] for answer in answers] == [f"v{k}" for k in range(30)]
    assert {answer.json()[0]["pid"] for answer in answers} <= slots and len(slots) == 3
    assert counter.read_text() == "load\n"  # three slots, one load


def test_a_forked_slot_that_runs_out_of_time_is_replaced_without_a_reload(tmp_path: Path) -> None:
    counter = tmp_path / "loads.txt"
    files = {
        "model/framework/run.py": (
            "import subprocess\n\n\n"
            "class Hangs:\n"
            "    def load(self):\n"
            f"        open({str(counter)!r}, 'a').write('load\\n')\n\n"
            "    def predict(self, inputs):\n"
            "        if 'HANG' in inputs:\n"
            "            subprocess.run(['sleep', '1000.5'])\n"
            "        return [{'echo': value} for value in inputs]\n"
        ),
        "model/framework/columns/run_columns.csv": "name,type\necho,string\n",
    }
    source = model_dir(tmp_path, "hangs-forked", files)
    bundle = pack(source, backend="system", repository_root=tmp_path / "repo", check=False)
    marker = str(bundle.bundle_dir / "app" / "worker.py")
    with app_client(bundle.bundle_dir, workers=2, timeout=2) as client:
        wait_ready(client)
        (parent,) = [pid for pid in processes_mentioning(marker) if _is_pool_root(pid, marker)]
        hung = post(client, "run", ["HANG"])
        assert hung.status_code == 504, hung.text
        assert "did not finish within" in hung.json()["detail"]
        assert post(client, "run", ["a", "b"]).json() == [{"echo": "a"}, {"echo": "b"}]
        # the slot and the sleep it started are gone; the parent stayed and did not load again
        assert wait_until_gone("sleep 1000.5") == []
        assert [pid for pid in processes_mentioning(marker) if _is_pool_root(pid, marker)] == [
            parent
        ]
        deadline = time.monotonic() + 10
        while len([p for p in processes_mentioning(marker) if _stat(p)[0] == parent]) != 2:
            assert time.monotonic() < deadline, "the parent did not fork a replacement"
            time.sleep(0.05)
    assert counter.read_text() == "load\n"
    assert wait_until_gone(marker) == []
