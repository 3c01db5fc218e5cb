"""Installs resolve as of the model's Last Packaging Date, with uv and with pip, against a
local index with upload times: unpinned packages get the release of that date, a pinned later
release still installs (the step is resolved again without the cut-off, and the pack says
so), --as-of moves or lifts the cut-off, and the manifest records it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES, run_command

pytestmark = pytest.mark.slow
CARD_CUTOFF = "2024-12-31T00:00:00Z"


def _pack(
    model: str, eos: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return run_command(
        "ersilia_pack", "--model_dir", FIXTURES / model, "--venv", "--eos", eos, *args, env=env
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
    assert install["as_of_source"] == "the model card's 'Last Packaging Date'"
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
