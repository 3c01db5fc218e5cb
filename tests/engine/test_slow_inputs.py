"""Inputs that run out of time among many good ones: only they get null rows, in bounded time,
for requests and for jobs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import app_client, wait_ready, write_tree

from ersilia_pack.pack import pack
from ersilia_pack.runtime.engine.batcher import ApiEngine
from ersilia_pack.runtime.engine.runners import BatchResult, RunTimeout

TIMEOUT = 2

# A script whose run never ends in time when an input starts with "SLOW". "ONCE" is slow until
# it has run alone once (a passing slowdown): that run is slow too, later runs are quick.
SCRIPT = """\
import csv
import os
import sys
import time

with open(sys.argv[1], newline="") as handle:
    inputs = [row[0] for row in list(csv.reader(handle))[1:]]
if any(value.startswith("SLOW") for value in inputs):
    time.sleep(60)
marker = os.environ.get("SLOW_ONCE_MARKER")
if "ONCE" in inputs and marker and not os.path.exists(marker):
    if inputs == ["ONCE"]:
        open(marker, "w").close()
    time.sleep(60)
with open(sys.argv[2], "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["length", "upper"])
    writer.writerows([len(value), value.upper()] for value in inputs)
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow-inputs")
    source = write_tree(
        root / "slow-inputs",
        {
            "metadata.yml": "Identifier: slow-inputs\nSlug: slow-inputs\nTitle: slow inputs\n",
            "model/framework/run.sh": "python $1/code/main.py $2 $3\n",
            "model/framework/code/main.py": SCRIPT,
            "model/framework/columns/run_columns.csv": (
                "name,type,direction,description\nlength,integer,,characters\n"
                "upper,string,,the input in upper case\n"
            ),
            "model/framework/examples/run_input.csv": "input\nabc\nhello\n",
            "model/framework/examples/run_output.csv": "length,upper\n3,ABC\n5,HELLO\n",
        },
    )
    return pack(source, backend="system", repository_root=root / "repo").bundle_dir


def expected(value: str) -> dict[str, Any]:
    return {"length": len(value), "upper": value.upper()}


def inputs_with(slow: dict[int, str], count: int = 200) -> list[str]:
    inputs = [f"molecule{i}" for i in range(count)]
    for index, value in slow.items():
        inputs[index] = value
    return inputs


@pytest.mark.parametrize(
    "slow",
    [{37: "SLOW"}, {5: "SLOW-a", 100: "SLOW-b", 190: "SLOW-c"}],
    ids=["one-slow", "three-slow"],
)
def test_only_the_inputs_that_run_out_of_time_get_null_rows(
    bundle: Path, slow: dict[int, str]
) -> None:
    inputs = inputs_with(slow)
    with app_client(bundle, workers=2, timeout=TIMEOUT) as client:
        wait_ready(client)
        began = time.monotonic()
        response = client.post(
            "/run",
            json=inputs,
            params={"with_meta": "true", "fetch_cache": "false", "save_cache": "false"},
        )
        took = time.monotonic() - began
    assert response.status_code == 200, response.text
    assert response.headers["X-Failed-Rows"] == str(len(slow))
    body = response.json()
    for i, (value, row) in enumerate(zip(inputs, body["result"])):
        assert row == (dict.fromkeys(row) if i in slow else expected(value)), i
    failed = {item["index"]: item for item in body["meta"]["failed"]}
    assert sorted(failed) == sorted(slow)
    for index, value in slow.items():
        assert failed[index]["input"] == value
        assert failed[index]["reason"].endswith(f" did not finish within {TIMEOUT} s")
    # the first run, the example's run, one run per halving and one full timeout per slow
    # input: far from this, which only catches a search that never ends
    assert took < TIMEOUT * (3 + 3 * len(slow)) + 20, took


def test_a_job_with_slow_inputs_keeps_every_good_row_and_retries_the_slow_ones_once(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOW_ONCE_MARKER", str(tmp_path / "once-was-slow"))
    inputs = inputs_with({10: "SLOW", 150: "ONCE"})
    with app_client(bundle, workers=2, timeout=TIMEOUT) as client:
        wait_ready(client)
        job_id = client.post("/job/submit", json=inputs).json()["job_id"]
        deadline = time.monotonic() + 120
        while (status := client.get(f"/job/status/{job_id}").json())["state"] != "done":
            assert status["state"] in ("queued", "running"), status
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        rows = client.get(f"/job/result/{job_id}").json()
        reasons = client.app.state.jobs.store.read_chunk(job_id, 0).errors  # type: ignore[attr-defined]
    assert (tmp_path / "once-was-slow").exists()  # ONCE did run out of time the first time
    assert status["null_rows"] == 1, status
    for i, (value, row) in enumerate(zip(inputs, rows)):
        assert row == (dict.fromkeys(row) if i == 10 else expected(value)), i
    assert list(reasons) == [10]
    assert reasons[10].endswith(f" did not finish within {TIMEOUT} s")


class TimedRunner:
    """A stand-in runner whose runs take 0.02 s plus each input's cost in seconds (0.001 unless
    named in ``costs``), and run out of time as a real one does. It counts the most runs at
    once after a run of the example input (the search for the failing inputs)."""

    ready = True
    load_error = None
    restarts = 0

    def __init__(self, costs: dict[str, float], concurrency: int) -> None:
        self.costs = costs
        self.concurrency = concurrency
        self.probed = False
        self.running = 0
        self.most_at_once = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def run(self, inputs: list[str], *, timeout: float) -> BatchResult:
        self.running += 1
        if self.probed:
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            cost = 0.02 + sum(self.costs.get(value, 0.001) for value in inputs)
            if cost > timeout:
                await asyncio.sleep(timeout)
                raise RunTimeout(f"run did not finish within {timeout:g} s")
            await asyncio.sleep(cost)
            return BatchResult(rows=[[value] for value in inputs])
        finally:
            self.probed = self.probed or inputs == ["example"]
            self.running -= 1


def search(
    costs: dict[str, float], spots: list[int], count: int, concurrency: int
) -> tuple[list[Any], float, int]:
    """Run ``count`` inputs in one request, those named in ``costs`` at ``spots``, with a
    timeout of 1 s: their rows or null-row reasons (every other input must get its row), the
    seconds it took and the most runs at once in the search for the failing inputs."""
    inputs = [f"in{i}" for i in range(count)]
    for spot, value in zip(spots, costs):
        inputs[spot] = value
    runner = TimedRunner(costs, concurrency)

    async def main() -> tuple[list[Any], float]:
        engine = ApiEngine(runner, batch_size=1000, timeout=1.0, probe_input="example")
        await engine.start()
        try:
            began = time.monotonic()
            outcomes = await engine.predict(inputs)
            return [o.row or o.error for o in outcomes], time.monotonic() - began
        finally:
            await engine.stop()

    answers, took = asyncio.run(main())
    for i, (value, answer) in enumerate(zip(inputs, answers)):
        assert i in spots or answer == [value], (i, answer)
    return [answers[spot] for spot in spots], took, runner.most_at_once


def test_an_input_slower_than_a_group_limit_but_within_the_timeout_gets_its_row() -> None:
    answers, took, _ = search({"MEDIUM": 0.7, "SLOW": 100.0}, [30, 70], 100, concurrency=1)
    assert answers == [["MEDIUM"], "run did not finish within 1 s"]
    assert took < 10, took


@pytest.mark.parametrize("concurrency", [1, 4])
def test_the_search_for_slow_inputs_is_bounded_and_uses_free_slots(concurrency: int) -> None:
    # 200 inputs on 4 slots are 4 runs of 50: the three slow inputs are all in the first
    costs = dict.fromkeys(["SLOW-a", "SLOW-b", "SLOW-c"], 100.0)
    answers, took, most = search(costs, [3, 20, 41], 200, concurrency)
    assert answers == ["run did not finish within 1 s"] * 3
    # the first run and the example's, then per slow input its own timeout (1 s) and about a
    # quarter of it per halving (8 levels): about 10 s one after the other
    assert took < 20, took
    # split runs side by side where slots were free; one after the other on a single slot
    assert (most > 1) == (concurrency > 1), most
