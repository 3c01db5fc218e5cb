"""Serving settings and the state folder: a bundle that is never written to with --state-dir,
state private to its owner whatever the umask, CORS origins from the environment, and bad
ERSILIA_PACK_* numbers as usage errors."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from helpers import console_script, run_command, server_process

from ersilia_pack.errors import SettingsError
from ersilia_pack.runtime.settings import ServeSettings

INPUTS = ["CCO", "c1ccccc1", "hello world", "abc"]


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``folder`` with its mode, size and modification time."""
    found = {}
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(folder))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def serve_argv(bundle: Path, *args: str) -> list[str]:
    return [console_script("ersilia_serve"), "--repository_dir", str(bundle), "--port", "0", *args]


def run_a_request_and_a_job(url: str) -> None:
    """POST /run, then a job to its end and its result: what a user does with a server."""
    answer = httpx.post(f"{url}/run", json=INPUTS, timeout=60)
    assert answer.status_code == 200, answer.text
    assert [row["length"] for row in answer.json()] == [3, 8, 11, 3]
    submitted = httpx.post(f"{url}/job/submit?api=run", json=INPUTS[::-1], timeout=60)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    deadline = time.monotonic() + 60
    state = ""
    while state != "done":
        assert time.monotonic() < deadline, f"job still {state}"
        state = httpx.get(f"{url}/job/status/{job_id}", timeout=60).json()["state"]
        assert state in ("queued", "running", "done"), state
        time.sleep(0.05)
    result = httpx.get(f"{url}/job/result/{job_id}", timeout=60)
    assert [row["length"] for row in result.json()] == [3, 11, 8, 3]


def test_with_state_dir_serving_never_writes_into_the_bundle(
    packed: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = packed("stdlib-simple")
    before = snapshot(bundle)
    state = tmp_path / "state"

    with server_process(serve_argv(bundle, "--state-dir", str(state))) as url:
        run_a_request_and_a_job(url)

    assert snapshot(bundle) == before
    assert (state / "state.db").is_file()


def test_a_load_once_model_served_with_state_dir_never_writes_into_the_bundle(
    packed: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = packed("load-once-py")
    before = snapshot(bundle)

    with server_process(serve_argv(bundle, "--state-dir", str(tmp_path / "state"))) as url:
        answer = httpx.post(f"{url}/run", json=["abc", "hello"], timeout=60)

    assert answer.status_code == 200, answer.text
    assert snapshot(bundle) == before


def test_the_state_folder_can_come_from_the_environment(
    packed: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = packed("stdlib-simple")
    before = snapshot(bundle)
    state = tmp_path / "elsewhere"

    with server_process(serve_argv(bundle), env={"ERSILIA_PACK_STATE_DIR": str(state)}) as url:
        run_a_request_and_a_job(url)

    assert snapshot(bundle) == before
    assert (state / "state.db").is_file()


def test_state_is_private_to_its_owner_even_with_umask_0(
    packed: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = packed("stdlib-simple")
    state = tmp_path / "state"
    # The Ersilia client sets umask(0) before it starts the server.
    argv = [
        "sh",
        "-c",
        'umask 000 && exec "$0" "$@"',
        *serve_argv(bundle, "--state-dir", str(state)),
    ]

    with server_process(argv) as url:
        run_a_request_and_a_job(url)
        modes = {
            str(path.relative_to(tmp_path)): (stat.S_IMODE(path.lstat().st_mode), path.is_dir())
            for path in [state, *state.rglob("*")]
            if not path.is_symlink()  # a link has no permissions of its own
        }

    assert "state/state.db" in modes
    assert any(is_dir for name, (_, is_dir) in modes.items() if name != "state"), modes
    for name, (mode, is_dir) in modes.items():
        expected = 0o700 if is_dir else 0o600
        assert mode == expected, f"{name} is {oct(mode)}, not {oct(expected)}"


def test_the_bundles_own_state_folder_is_private_too(
    packed: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = packed("stdlib-simple")
    argv = ["sh", "-c", 'umask 000 && exec "$0" "$@"', *serve_argv(bundle)]

    with server_process(argv) as url:
        assert httpx.post(f"{url}/run", json=INPUTS, timeout=60).status_code == 200
        mode = stat.S_IMODE((bundle / "state").stat().st_mode)

    assert mode == 0o700


def test_cors_origins_come_from_ersilia_pack_cors_origin(packed: Callable[..., Path]) -> None:
    bundle = packed("stdlib-simple")
    env = {"ERSILIA_PACK_CORS_ORIGIN": "https://lab.example.org, https://ci.example.org"}

    with server_process(serve_argv(bundle), env=env) as url:
        allowed = [
            httpx.get(f"{url}/info", headers={"Origin": origin}, timeout=60)
            for origin in ("https://lab.example.org", "https://ci.example.org")
        ]
        other = httpx.get(f"{url}/info", headers={"Origin": "https://evil.example"}, timeout=60)

    for response, origin in zip(allowed, ("https://lab.example.org", "https://ci.example.org")):
        assert response.headers.get("access-control-allow-origin") == origin
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    "variable, value",
    [
        ("ERSILIA_PACK_WORKERS", "abc"),
        ("ERSILIA_PACK_TIMEOUT", "soon"),
        ("ERSILIA_PACK_MAX_INPUTS", "0"),
        ("ERSILIA_PACK_COLD", "maybe"),
    ],
)
def test_a_bad_number_in_the_environment_is_a_usage_error_naming_the_variable(
    packed: Callable[..., Path], variable: str, value: str
) -> None:
    bundle = packed("stdlib-simple")

    done = run_command(
        "ersilia_serve",
        "--repository_dir",
        bundle,
        "--port",
        "0",
        env={variable: value},
        timeout=60,
    )

    assert done.returncode == 1, done.stderr
    assert f"{variable}={value}" in done.stderr
    assert "internal error" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_flag_wins_over_a_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERSILIA_PACK_WORKERS", "abc")
    assert ServeSettings.from_env(workers=3).workers == 3
    with pytest.raises(SettingsError) as caught:
        ServeSettings.from_env()
    assert caught.value.exit_code == 1
    assert "ERSILIA_PACK_WORKERS=abc" in caught.value.render()
