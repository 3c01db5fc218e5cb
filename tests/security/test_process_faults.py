"""The model-process layer under what published models do (tests/fixtures/process-faults).

A load-once model floods stderr with a progress bar and no newline; one fails every batch; one
returns rows of the wrong width; one fails to load until a file goes away; scripts write a
200,000-character field, print 200 MB, put 1.5 in an integer column, write a header with other
names, hang on one input, or talk on stderr while they succeed. Each is served for real.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from security_helpers import Server, pack_cli, pack_repository, serve, wait_ready

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "process-faults"
TIMEOUT = 4


@pytest.fixture(scope="module")
def flag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flaky") / "weights-missing"
    path.write_text("until this file goes, flaky cannot load\n")
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The check would stop at oom, which fails on purpose; it has a test of its own below.
    return pack_repository(FIXTURE, tmp_path_factory.mktemp("eos"), "--no-check")


@pytest.fixture(scope="module")
def server(repository: Path, flag: Path) -> Iterator[Server]:
    # Some APIs here fail their own example on purpose; the start-up self-check would hold
    # them back with a 503 (tested below), where these tests look at how runs fail.
    args = ("--workers", "2", "--timeout", str(TIMEOUT), "--no-self-check")
    with serve(repository, *args, env={"FLAKY_FLAG": str(flag)}) as running:
        yield running


def post(server: Server, api: str, inputs: list[str], **params: str) -> httpx.Response:
    return httpx.post(f"{server.url}/{api}", json=inputs, params=params, timeout=120)


def wait_api(server: Server, api: str, within: float = 60) -> httpx.Response:
    """POST the API until it answers something other than 502/503 (workers still loading)."""
    deadline = time.monotonic() + within
    while True:
        response = post(server, api, ["hello"])
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_a_progress_bar_flooding_stderr_without_newline_neither_hangs_nor_kills_the_worker(
    server: Server,
) -> None:
    assert wait_api(server, "noisy").json() == [{"length": 5}]
    for _ in range(3):  # each batch writes ~250 KB more with no newline
        response = post(server, "noisy", ["a", "bb", "ccc"])
        assert response.status_code == 200, response.text
        assert response.json() == [{"length": 1}, {"length": 2}, {"length": 3}]
    # the redraws are not logged one by one
    assert server.log.count("/2000 ") < 10


def test_a_model_that_fails_every_batch_is_a_502_whatever_the_batch_size(server: Server) -> None:
    for inputs in (["a", "b", "c"], ["a", "b", "c", "d"], [f"x{i}" for i in range(40)]):
        response = post(server, "oom", inputs)
        assert response.status_code == 502, (len(inputs), response.text)
        assert "CUDA out of memory" in response.json()["detail"]


def test_the_self_check_holds_back_an_api_that_fails_its_example(repository: Path) -> None:
    with serve(repository, "--workers", "1", "--timeout", str(TIMEOUT)) as running:
        wait_api(running, "noisy")
        deadline = time.monotonic() + 60
        while True:
            ready = httpx.get(f"{running.url}/readyz", timeout=10)
            if ready.json()["checks"]["oom"]["check"] != "pending":
                break
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.1)
        answer = post(running, "oom", ["a", "b", "c"])
    assert ready.status_code == 503
    assert ready.json()["apis"]["oom"] is False and ready.json()["apis"]["noisy"] is True
    detail = ready.json()["checks"]["oom"]["detail"]
    assert detail.startswith("oom does not reproduce its example: ")
    assert "CUDA out of memory" in detail
    assert answer.status_code == 503
    assert answer.json()["detail"] == detail


def test_a_pack_whose_model_fails_its_example_is_an_error_not_a_warning(tmp_path: Path) -> None:
    done = pack_cli(FIXTURE, tmp_path / "eos")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "oom: the example input failed" in done.stderr
    assert "CUDA out of memory" in done.stderr
    repository = tmp_path / "eos" / "repository" / "process-faults"
    assert not repository.exists() or not [p for p in repository.iterdir() if p.name[0].isdigit()]


def test_a_pack_survives_a_model_that_floods_stderr(tmp_path: Path) -> None:
    model = tmp_path / "noisy-only"
    framework = model / "model" / "framework"
    (framework / "columns").mkdir(parents=True)
    (framework / "examples").mkdir()
    (model / "model" / "checkpoints").mkdir()
    (model / "metadata.yml").write_text((FIXTURE / "metadata.yml").read_text())
    (model / "install.sh").write_text("echo nothing to install\n")
    source = FIXTURE / "model" / "framework"
    for name in ("noisy.py", "columns/noisy_columns.csv"):
        (framework / name).write_text((source / name).read_text())
    for name in ("noisy_input.csv", "noisy_output.csv"):
        (framework / "examples" / name).write_text((source / "examples" / name).read_text())
    done = pack_cli(model, tmp_path / "eos", "--strict")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "internal error" not in done.stderr


def test_rows_of_the_wrong_width_are_null_rows_with_a_reason_and_counted(server: Server) -> None:
    wait_api(server, "rows")
    response = post(server, "rows", ["abc", "short", "nokey"], with_meta="true")
    assert response.status_code == 200, response.text
    assert response.headers["x-failed-rows"] == "2"
    body = response.json()
    assert body["result"] == [
        {"length": 3, "upper": "ABC"},
        {"length": None, "upper": None},
        {"length": None, "upper": None},
    ]
    reasons = {failed["input"]: failed["reason"] for failed in body["meta"]["failed"]}
    assert reasons == {
        "short": "predict() gave 1 values for 2 columns",
        "nokey": "predict() gave a row without upper",
    }


def test_a_value_that_does_not_fit_its_column_type_is_counted(server: Server) -> None:
    response = post(server, "badint", ["abc", "frac"], with_meta="true")
    assert response.status_code == 200, response.text
    assert response.headers["x-failed-rows"] == "1"
    body = response.json()
    assert body["result"][0] == {"length": 3, "upper": "ABC"}
    assert body["result"][1] == {"length": None, "upper": "FRAC"}
    (failed,) = body["meta"]["failed"]
    assert failed["input"] == "frac"
    assert failed["reason"] == "column 'length': '1.5' is not an integer"


def test_a_header_with_other_names_is_matched_by_position_with_a_warning(server: Server) -> None:
    response = post(server, "header", ["abc"])
    assert response.status_code == 200, response.text
    assert response.json() == [{"length": 3, "upper": "ABC"}]
    assert server.wait_for_log("does not name the declared columns")


def test_a_field_over_the_csv_module_limit_is_answered(server: Server) -> None:
    response = post(server, "bigfield", ["ab", "c"])
    assert response.status_code == 200, response.text
    values = [row["value"] for row in response.json()]
    assert values == [("ab" * 100000), "c" * 200000]


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM line")


def test_a_script_printing_200_mb_is_not_held_in_the_servers_memory(server: Server) -> None:
    before = _peak_rss_kib(server.pid)
    response = post(server, "chatty", ["abc"])
    assert response.status_code == 200, response.text
    assert response.json() == [{"length": 3}]
    # the output was drained as it came: the server's peak grew by far less than 200 MB
    assert _peak_rss_kib(server.pid) - before < 50 * 1024


def test_one_hanging_input_costs_its_own_row_not_every_merged_request(server: Server) -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        hanging = pool.submit(post, server, "hang", ["abc", "HANG", "de"], with_meta="true")
        time.sleep(0.2)  # let the hanging run start, so the next requests merge behind it
        others = [pool.submit(post, server, "hang", [f"in{i}"]) for i in range(3)]
        began = time.monotonic()
        answers = [future.result() for future in others]
        body = hanging.result().json()
    for number, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert answer.json() == [{"length": len(f"in{number}")}]
    assert body["result"] == [{"length": 3}, {"length": None}, {"length": 2}]
    (failed,) = body["meta"]["failed"]
    assert failed["input"] == "HANG" and "did not finish within" in failed["reason"]
    # one run timeout and at most one more to find the input: not one per split run
    assert time.monotonic() - began < 3 * TIMEOUT + 5


def test_a_request_of_only_a_hanging_input_is_a_504(server: Server) -> None:
    response = post(server, "hang", ["HANG"])
    assert response.status_code == 504, response.text
    assert "did not finish within" in response.json()["detail"]


def test_a_failed_load_is_tried_again_until_it_works(server: Server, flag: Path) -> None:
    response = post(server, "flaky", ["hello"])
    assert response.status_code in (502, 503), response.text
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 503
    assert server.wait_for_log("the weights are not there yet")
    flag.unlink()
    assert wait_api(server, "flaky").json() == [{"length": 5}]
    wait_ready(server.url)


def test_stderr_of_a_run_that_succeeds_is_in_the_log(server: Server) -> None:
    response = post(server, "stderr", ["abc"])
    assert response.status_code == 200, response.text
    assert server.wait_for_log("stderr-of-a-run-that-succeeded")


def test_model_processes_get_none_of_the_servers_settings(repository: Path) -> None:
    secret_url = "redis://:hunter2-password@127.0.0.1:1/0"
    env = {"ERSILIA_PACK_MAX_INPUTS": "777", "ERSILIA_PACK_SOMETHING_URL": secret_url}
    with serve(repository, "--workers", "1", env=env) as running:
        wait_api(running, "noisy")
        workers = [
            pid
            for pid in os.listdir("/proc")
            if pid.isdigit() and _mentions(int(pid), "app/worker.py", running.marker)
        ]
        assert workers
        for pid in workers:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"ERSILIA_PACK_" not in environ
            assert b"hunter2" not in environ


def _mentions(pid: int, text: str, marker: str) -> bool:
    try:
        return (
            text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            and marker.encode() in Path(f"/proc/{pid}/environ").read_bytes()
        )
    except OSError:
        return False
