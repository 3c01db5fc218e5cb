"""Models that crash, hang, miscount, or fail on some inputs; and many callers at once."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import app_client, processes_mentioning, wait_ready, wait_until_gone


def assert_safe_error(response: Any, bundle: Path) -> str:
    """A JSON {"detail": text} that shows no traceback and no path of the server's files."""
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["detail"]
    detail = body["detail"]
    assert isinstance(detail, str) and detail
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    assert str(bundle) not in response.text
    assert "/tmp/" not in response.text and "/model/framework" not in response.text
    return detail


def test_a_crashing_script_is_a_clean_model_failure(packed: Callable[..., Path]) -> None:
    bundle = packed("crashing-script", check=False)

    with app_client(bundle) as client:
        response = client.post("/run", json=["CCO", "CCN"])

    assert response.status_code == 502
    detail = assert_safe_error(response, bundle)
    assert "exited with code 1" in detail
    # the last line of the model's error says what went wrong, without the path
    assert "FileNotFoundError: no weights at weights.bin" in detail


def test_a_script_writing_the_wrong_number_of_rows_is_502(packed: Callable[..., Path]) -> None:
    bundle = packed("wrong-row-count", check=False)

    with app_client(bundle) as client:
        response = client.post("/run", json=["a", "bb", "ccc"])

    assert response.status_code == 502
    # how the inputs were batched decides the counts; one row is always missing
    detail = assert_safe_error(response, bundle)
    match = re.fullmatch(r"the model wrote (\d+) rows for (\d+) inputs", detail)
    assert match, detail
    assert int(match.group(1)) == int(match.group(2)) - 1


def test_a_hanging_script_is_504_and_killed_with_its_children(
    packed: Callable[..., Path],
) -> None:
    bundle = packed("hanging-script", check=False)
    # every process of a run names the bundle's framework folder: bash run.sh, hang.py and
    # the child hang.py starts
    marker = str(bundle / "model" / "framework")

    # a timeout long enough for all three processes to start on a busy machine
    with app_client(bundle, timeout=4) as client, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/run", json=["CCO"])
        seen: list[int] = []
        deadline = time.monotonic() + 30
        while len(seen) < 3 and not pending.done() and time.monotonic() < deadline:
            seen = processes_mentioning(marker)
            time.sleep(0.02)
        response = pending.result()
        leftovers = wait_until_gone(marker)

    assert len(seen) == 3, f"bash, hang.py and its child should have run, saw {seen}"
    assert response.status_code == 504
    assert assert_safe_error(response, bundle) == "run did not finish within 4 s"
    assert leftovers == [], f"processes outlived the timed-out run: {leftovers}"


@pytest.mark.parametrize("cold", [True, False], ids=["cold", "default"])
def test_one_bad_input_gets_a_null_row_and_the_rest_their_values(
    packed: Callable[..., Path], cold: bool
) -> None:
    bundle = packed("bad-input-fails")

    with app_client(bundle, cold=cold) as client:
        response = client.post("/run", json=["CCO", "BAD", "c1ccccc1", "BAD", "N"])
        meta = client.post("/run?with_meta=true", json=["BAD", "CCO"])

    assert response.status_code == 200, response.text
    assert response.json() == [
        {"echo": "CCO", "length": 3},
        {"echo": None, "length": None},
        {"echo": "c1ccccc1", "length": 8},
        {"echo": None, "length": None},
        {"echo": "N", "length": 1},
    ]
    # the two BAD inputs are one input to the model (de-duplicated), two rows to the caller
    assert response.headers["x-failed-rows"] == "2"
    assert meta.status_code == 200
    body = meta.json()
    assert body["result"] == [{"echo": None, "length": None}, {"echo": "CCO", "length": 3}]
    [failed] = body["meta"]["failed"]
    assert failed["index"] == 0 and failed["input"] == "BAD"
    assert "exited with code 1" in failed["reason"]
    assert str(bundle) not in meta.text


def test_only_bad_inputs_still_answer_with_null_rows(packed: Callable[..., Path]) -> None:
    bundle = packed("bad-input-fails")

    with app_client(bundle) as client:
        response = client.post("/run", json=["BAD"])

    assert response.status_code == 200
    assert response.json() == [{"echo": None, "length": None}]
    assert response.headers["x-failed-rows"] == "1"


def test_twenty_concurrent_requests_each_get_their_own_rows(
    packed: Callable[..., Path],
) -> None:
    bundle = packed("bad-input-fails")
    requests = [
        # shared inputs are de-duplicated across requests; some requests carry a bad input
        [f"req{number}-a", "shared", f"req{number}-" + "b" * number]
        + (["BAD"] if number % 4 == 0 else [])
        for number in range(20)
    ]

    def expected(inputs: list[str]) -> list[dict[str, Any]]:
        return [
            {"echo": None, "length": None} if text == "BAD" else {"echo": text, "length": len(text)}
            for text in inputs
        ]

    with app_client(bundle) as client, ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda inputs: client.post("/run", json=inputs), requests))

    for inputs, response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json() == expected(inputs)


def test_a_load_once_api_answers_with_none_rows_and_loads_once(
    packed: Callable[..., Path],
) -> None:
    bundle = packed("load-once-py")

    with app_client(bundle, workers=1) as client:
        first = client.post("/run", json=["abc", "not valid!", "xyz", "abc"])
        second = client.post("/run?orient=values", json=["Hello", ""])
        info = client.get("/info").json()

    assert first.status_code == 200, first.text
    assert first.json() == [
        {"reversed": "cba!", "length": 3, "loads": 1},
        {"reversed": None, "length": None, "loads": None},
        {"reversed": "zyx!", "length": 3, "loads": 1},
        {"reversed": "cba!", "length": 3, "loads": 1},
    ]
    # one worker, two requests: load() ran once
    assert second.json() == [["olleH!", 5, 1], [None, None, None]]
    # run.py serves (run.sh would fail every request); textutil.py is a helper, not an API
    assert info["api_list"] == ["run"]


def test_load_once_workers_are_stopped_at_shutdown(packed: Callable[..., Path]) -> None:
    bundle = packed("load-once-py")
    marker = str(bundle / "app" / "worker.py")

    # one worker: /readyz turns 200 once it has loaded, so none is still loading at shutdown
    with app_client(bundle, workers=1) as client:
        assert wait_ready(client)["apis"] == {"run": True}
        assert client.post("/run", json=["abc"]).status_code == 200
        running = processes_mentioning(marker)
        parents = [pid for pid in running if _parent_of(pid) not in running]

    # one slot: the parent that loaded the model and the child it forked for the slot
    assert len(running) == 2
    assert len(parents) == 1
    assert wait_until_gone(marker) == []


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])
