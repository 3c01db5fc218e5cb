"""Packing a hostile model directory: names from metadata cannot leave the repository folder,
links that leave the model directory are reported rather than followed, and the pack writes
nothing outside $EOS/repository/$MODEL_ID (nothing at all when it refuses)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from security_helpers import FIXTURES, console_script

SAFE_MODEL = {
    "metadata.yml": "Identifier: safe-links\nSlug: safe-links\nTitle: Links that stay inside\n",
    "install.sh": "echo nothing to install\n",
    "model/framework/run.sh": (
        "awk -F, 'NR == 1 {print \"length\"} NR > 1 {print length($1)}' $2 > $3\n"
    ),
    "model/framework/examples/run_input.csv": "input\nabc\nde\n",
    "model/framework/examples/run_output.csv": "length\n3\n2\n",
    "model/checkpoints/weights.txt": "weights\n",
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (links not followed) with what it holds or points to."""
    found = {}
    for current, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(current) / name
            relative = str(path.relative_to(root))
            if path.is_symlink():
                found[relative] = "link:" + os.readlink(path)
            elif path.is_file():
                found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[relative] = "dir"
    return found


def pack(tmp_path: Path, model: Path) -> subprocess.CompletedProcess[str]:
    """ersilia_pack --system from a working folder of its own, with HOME inside tmp_path."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    return subprocess.run(
        [console_script("ersilia_pack"), "--model_dir", str(model), "--system", "--eos", "eos"],
        cwd=work,
        env={**os.environ, "HOME": str(tmp_path / "home"), "EOS": str(work / "default-eos")},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_a_hostile_model_directory_is_refused_with_every_problem_and_nothing_written(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model"
    shutil.copytree(FIXTURES / "security-hostile", model, symlinks=True)
    # A link to a folder outside is made here, not kept in the repository, where test
    # collection would walk through it.
    (model / "model/checkpoints/up").symlink_to("../../..")
    before = snapshot(tmp_path)
    done = pack(tmp_path, model)
    assert done.returncode == 1, done.stdout + done.stderr
    problems = done.stderr
    assert "6 problems" in problems
    assert "'Identifier' is \"../escape\", not a safe name" in problems
    assert "'Slug' is \"../../slug\", not a safe name" in problems
    assert "model/checkpoints/passwd: is a symlink to /etc/passwd, outside the model" in problems
    assert "checkpoints/outside: is a symlink to ../../../../../README.md, outside" in problems
    assert "model/checkpoints/up: is a symlink to ../../.., outside the model" in problems
    assert "API name '$(touch PWNED)' is not a safe name" in problems
    assert "Traceback" not in problems
    # Not a file, folder or link more anywhere under tmp_path: no EOS, no ../escape, no
    # marker from the install script or the oddly named API script.
    assert snapshot(tmp_path) == {**before, "work": "dir", "home": "dir"}


def test_links_where_validation_reads_stop_it_before_reading_through_them(
    tmp_path: Path,
) -> None:
    model = write_tree(tmp_path / "model", SAFE_MODEL)
    # Reading these would never end (/dev/zero) or read a file from elsewhere.
    (model / "model/framework/examples/run_input.csv").unlink()
    (model / "model/framework/examples/run_input.csv").symlink_to("/dev/zero")
    (model / "model/framework/columns").mkdir()
    (model / "model/framework/columns/run_columns.csv").symlink_to("/etc/hostname")
    done = pack(tmp_path, model)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 problems" in done.stderr
    assert "examples/run_input.csv: is a symlink to /dev/zero, outside the model" in done.stderr
    assert "columns/run_columns.csv: is a symlink to /etc/hostname" in done.stderr
    assert not (tmp_path / "work" / "eos").exists()


def test_link_loops_and_links_to_their_own_folder_are_reported(tmp_path: Path) -> None:
    model = write_tree(tmp_path / "model", SAFE_MODEL)
    (model / "model/checkpoints/loop").symlink_to("loop")
    (model / "model/checkpoints/again").symlink_to("..")
    done = pack(tmp_path, model)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "model/checkpoints/loop: is a symlink loop (loop)" in done.stderr
    assert "model/checkpoints/again: is a symlink to .., a folder that holds the link" in (
        done.stderr
    )
    assert not (tmp_path / "work" / "eos").exists()


def test_a_pack_writes_only_inside_its_own_repository(tmp_path: Path) -> None:
    model = write_tree(tmp_path / "model", SAFE_MODEL)
    (model / "model/checkpoints/alias.txt").symlink_to("weights.txt")  # inside: allowed
    before = snapshot(tmp_path)
    done = pack(tmp_path, model)
    assert done.returncode == 0, done.stdout + done.stderr
    after = snapshot(tmp_path)
    repository = "work/eos/repository/safe-links"
    new = {path for path in after if path not in before}
    outside = {path for path in new if not path.startswith(repository + "/")}
    assert outside == {"work", "home", "work/eos", "work/eos/repository", repository}
    assert {path: after[path] for path in before} == before  # the model directory untouched
    (bundle,) = (tmp_path / repository).glob("2*")
    copied = bundle / "model/checkpoints/alias.txt"
    assert copied.read_text() == "weights\n"
