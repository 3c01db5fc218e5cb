"""Installs resolve as of the model's Last Packaging Date, with uv and with pip, against a
local index with upload times: unpinned packages get the release of that date, a pinned later
release still installs (the step is resolved again without the cut-off, and the pack says
so), --as-of moves or lifts the cut-off, and the manifest records it. A card without the date
resolves as of the model's last git commit, else its files' newest modification time."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES, run_command

pytestmark = pytest.mark.slow
CARD_CUTOFF = "2024-12-31T00:00:00Z"


def _pack(
    model: str | Path, eos: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    model_dir = FIXTURES / model if isinstance(model, str) else model
    return run_command(
        "ersilia_pack", "--model_dir", model_dir, "--venv", "--eos", eos, *args, env=env
    )


def _bundle(done: subprocess.CompletedProcess[str]) -> Path:
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().rsplit(" into ", 1)[1])


def _manifest(bundle: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return manifest


def _versions(bundle: Path) -> tuple[str, str]:
    """The versions of alpha and beta in the bundle's environment, as its model sees them."""
    python = _manifest(bundle)["environment"]["python"]
    done = subprocess.run(
        [python, "-c", "import alpha, beta; print(alpha.VERSION, beta.VERSION)"],
        capture_output=True,
        text=True,
        check=True,
    )
    first, second = done.stdout.split()
    return first, second


@pytest.mark.parametrize("installer", ["uv", "pip"])
@pytest.mark.parametrize("model", ["install-as-of", "install-as-of-sh"])
def test_the_card_date_picks_the_unpinned_release_and_a_later_pin_still_installs(
    model: str, installer: str, eos: Path, index_env: dict[str, str]
) -> None:
    done = _pack(model, eos, index_env, "--installer", installer, "--strict")

    bundle = _bundle(done)
    assert _versions(bundle) == ("2.0", "2.0")
    assert (
        f"resolving as of: packages uploaded before {CARD_CUTOFF} "
        "(the model card's 'Last Packaging Date')"
    ) in done.stderr
    step = "install.yml command 2" if model == "install-as-of" else "install.sh"
    assert f"step {step}: nothing fits with packages uploaded before {CARD_CUTOFF}" in done.stderr
    assert f"step {step}: resolved without the cut-off date" in done.stderr
    install = _manifest(bundle)["install"]
    assert install["installer"] == installer
    assert install["as_of"] == CARD_CUTOFF
    assert install["as_of_source"] == "card"
    assert install["resolved_without_as_of"] == [step]
    # --strict: the packed model reproduced its example output (alpha 2.0, beta 2.0)
    assert "example check passed for run" in done.stderr


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_as_of_latest_takes_the_newest_release(
    installer: str, eos: Path, index_env: dict[str, str]
) -> None:
    done = _pack("install-as-of", eos, index_env, "--installer", installer, "--as-of", "latest")

    bundle = _bundle(done)
    assert _versions(bundle) == ("3.0", "2.0")
    assert "resolving as of: newest packages (--as-of latest)" in done.stderr
    assert "without the cut-off" not in done.stderr
    install = _manifest(bundle)["install"]
    assert (install["as_of"], install["resolved_without_as_of"]) == (None, [])
    assert install["as_of_source"] == "flag"
    # the example output was made with alpha 2.0: a difference, a warning without --strict
    assert "the packed model's output differs from its example output" in done.stderr
    assert "1 example difference(s)" in done.stderr or "example difference" in done.stderr


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_as_of_a_date_moves_the_cut_off(
    installer: str, eos: Path, index_env: dict[str, str]
) -> None:
    done = _pack("install-as-of", eos, index_env, "--installer", installer, "--as-of", "2024-03-01")

    bundle = _bundle(done)
    assert _versions(bundle) == ("1.0", "2.0")
    assert "packages uploaded before 2024-03-01T00:00:00Z (--as-of)" in done.stderr
    assert _manifest(bundle)["install"]["as_of"] == "2024-03-01T00:00:00Z"


def test_the_same_model_packed_as_of_another_date_gets_an_environment_of_its_own(
    eos: Path, index_env: dict[str, str]
) -> None:
    dated = _bundle(_pack("install-as-of", eos, index_env, "--no-check"))
    newest = _bundle(_pack("install-as-of", eos, index_env, "--no-check", "--as-of", "latest"))

    assert _manifest(dated)["environment"]["prefix"] != _manifest(newest)["environment"]["prefix"]
    assert (_versions(dated), _versions(newest)) == (("2.0", "2.0"), ("3.0", "2.0"))


def test_a_bad_as_of_is_a_usage_error(eos: Path, index_env: dict[str, str]) -> None:
    done = _pack("install-as-of", eos, index_env, "--as-of", "last tuesday")

    assert done.returncode == 1
    assert "--as-of: 'last tuesday' is not a date (e.g. 2025-10-22) nor 'latest'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not eos.exists()


def _undated_copy(root: Path, modified: str) -> Path:
    """The install-as-of-undated fixture (no Last Packaging Date) copied under ``root``, every
    file last modified at ``modified``."""
    model = shutil.copytree(FIXTURES / "install-as-of-undated", root / "model")
    moment = dt.datetime.fromisoformat(modified).timestamp()
    for path in model.rglob("*"):
        os.utime(path, (moment, moment))
    return model


def test_a_card_without_a_date_resolves_as_of_its_files_date(
    tmp_path: Path, index_env: dict[str, str]
) -> None:
    model = _undated_copy(tmp_path, "2024-08-01T12:00:00+00:00")
    # no git checkout above the copy: its files' date is all there is
    env = {**index_env, "GIT_CEILING_DIRECTORIES": str(tmp_path)}

    done = _pack(model, tmp_path / "eos", env, "--strict")

    bundle = _bundle(done)
    assert (
        "resolving as of: packages uploaded before 2024-08-01T12:00:00Z (the model card has no "
        "'Last Packaging Date': the newest modification time of the model's files, "
    ) in done.stderr
    install = _manifest(bundle)["install"]
    assert (install["as_of"], install["as_of_source"]) == ("2024-08-01T12:00:00Z", "files")
    # alpha 2.0 (June 2024), not 3.0 (2025): the example output, reproduced under --strict
    assert "example check passed for run" in done.stderr


def test_a_card_without_a_date_resolves_as_of_its_last_git_commit(
    tmp_path: Path, index_env: dict[str, str]
) -> None:
    # Files from March 2024 would give alpha 1.0; the commit of August 2024 gives 2.0.
    model = _undated_copy(tmp_path, "2024-03-01T12:00:00+00:00")
    commit_date = "2024-08-01T12:00:00+00:00"
    git_env = {
        **os.environ,
        "GIT_CEILING_DIRECTORIES": str(tmp_path),
        "GIT_AUTHOR_DATE": commit_date,
        "GIT_COMMITTER_DATE": commit_date,
    }
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "."],
        ["git", "-c", "user.name=Test", "-c", "user.email=t@example.org", "commit", "-qm", "m"],
    ):
        subprocess.run(command, cwd=model, env=git_env, check=True, capture_output=True)

    done = _pack(model, tmp_path / "eos", {**index_env, "GIT_CEILING_DIRECTORIES": str(tmp_path)})

    bundle = _bundle(done)
    assert (
        "resolving as of: packages uploaded before 2024-08-01T12:00:00Z (the model card has no "
        "'Last Packaging Date': the model's last git commit, "
    ) in done.stderr
    install = _manifest(bundle)["install"]
    assert (install["as_of"], install["as_of_source"]) == ("2024-08-01T12:00:00Z", "git")
    python = _manifest(bundle)["environment"]["python"]
    version = subprocess.run(
        [python, "-c", "import alpha; print(alpha.VERSION)"], capture_output=True, text=True
    )
    assert version.stdout.strip() == "2.0", version.stderr
