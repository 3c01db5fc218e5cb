"""The pack-time concurrency check: overlapping runs versus a single run.

`shared-framework-file` writes one fixed file inside the framework folder ($1): its
overlapping runs read each other's inputs, so the pack serves it one run at a time.
`shared-cwd-temp` writes a fixed file name in its working directory: with a working
directory of its own for every run, its overlapping runs agree and it is served in parallel.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import FIXTURES, run_command, served

REQUESTS = 30


def pack_cli(name: str, eos: Path) -> tuple[str, dict[str, object]]:
    """Pack a fixture with the real command; its stderr and what the pack decided for its run
    API, as the manifest records it."""
    done = run_command("ersilia_pack", "--model_dir", FIXTURES / name, "--system", "--eos", eos)
    assert done.returncode == 0, done.stderr
    (bundle,) = (eos / "repository" / name).glob("2*")
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    (api,) = manifest["apis"]
    return done.stderr, api["decided"]


def own_inputs(number: int) -> list[str]:
    """Inputs no other request sends, one to three of them."""
    return [f"C{'C' * number}O{'N' * k}" for k in range(1 + number % 3)]


def post_concurrently(url: str) -> list[tuple[list[str], httpx.Response]]:
    """30 requests at once, each with inputs of its own."""

    def post(number: int) -> tuple[list[str], httpx.Response]:
        inputs = own_inputs(number)
        response = httpx.post(
            f"{url}/run",
            json=inputs,
            params={"fetch_cache": "false", "save_cache": "false"},
            timeout=120,
        )
        return inputs, response

    with ThreadPoolExecutor(REQUESTS) as pool:
        return list(pool.map(post, range(REQUESTS)))


def assert_each_got_its_own_rows(answers: list[tuple[list[str], httpx.Response]]) -> None:
    for inputs, response in answers:
        assert response.status_code == 200, response.text
        assert response.headers["x-failed-rows"] == "0", response.text
        assert response.json() == [{"echo": value, "length": len(value)} for value in inputs]


@pytest.fixture(scope="module")
def framework_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, object]]:
    eos = tmp_path_factory.mktemp("eos")
    stderr, decided = pack_cli("shared-framework-file", eos)
    return eos / "repository" / "shared-framework-file", stderr, decided


def test_a_script_writing_a_fixed_file_in_the_framework_folder_is_found_at_pack(
    framework_file: tuple[Path, str, dict[str, object]],
) -> None:
    _, stderr, decided = framework_file
    assert "run is served one run at a time: overlapping runs disagree: input " in stderr
    assert "a single run gave" in stderr
    assert decided["serial"] is True


def test_a_serial_api_is_still_right_under_30_concurrent_requests(
    framework_file: tuple[Path, str, dict[str, object]],
) -> None:
    repository, _, _ = framework_file
    # Three workers asked for: the serial API still runs one run at a time.
    with served(repository, "--workers", "3") as url:
        answers = post_concurrently(url)
    assert_each_got_its_own_rows(answers)


def test_runs_in_a_shared_working_directory_stay_apart_under_30_concurrent_requests(
    tmp_path: Path,
) -> None:
    # Passes once every run gets a working directory of its own: until then, the pack-time
    # check finds the clash and serves the API one run at a time.
    stderr, decided = pack_cli("shared-cwd-temp", tmp_path)
    assert "one run at a time" not in stderr
    assert decided["serial"] is False

    with served(
        tmp_path / "repository" / "shared-cwd-temp", "--workers", "3", "--batch-size", "2"
    ) as url:
        answers = post_concurrently(url)
    assert_each_got_its_own_rows(answers)


def test_runs_that_differ_in_the_last_bit_of_a_double_still_overlap(tmp_path: Path) -> None:
    # Overlapping runs are compared as the example check compares (a relative 1e-4), so a
    # model whose floats move in the last place between runs is not served one at a time.
    stderr, decided = pack_cli("last-bit-noise", tmp_path / "eos")
    assert decided["serial"] is False, stderr
    assert "one run at a time" not in stderr
