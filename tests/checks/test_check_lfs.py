"""Git LFS pointers under model/: listed as warnings at pack time, and named as the likely cause
when the example check fails."""

from __future__ import annotations

from pathlib import Path

from helpers import FIXTURES, copy_fixture, run_command, write_tree

from ersilia_pack.model_dir import LfsPointer, find_lfs_pointers, read_model_dir

POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"
    "size 1234567\n"
)


def test_a_checkpoint_that_is_a_pointer_is_named_when_the_example_check_fails(
    tmp_path: Path,
) -> None:
    done = run_command(
        "ersilia_pack",
        "--model_dir",
        FIXTURES / "lfs-pointer-checkpoint",
        "--system",
        "--eos",
        tmp_path,
    )

    assert done.returncode == 4, done.stderr
    warning = (
        "model/checkpoints/weights.gz is a Git LFS pointer, not the file itself "
        "(the real file: 48,213,977 bytes); fetch it with `git lfs pull`"
    )
    head, _, error = done.stderr.partition("error: ")
    assert warning in head  # listed before anything runs
    assert error.startswith("the packed model does not reproduce its examples:")
    assert "BadGzipFile" in error
    assert f"likely cause: {warning}" in error
    assert not list((tmp_path / "repository").rglob("status.json"))


def test_a_harmless_pointer_is_a_warning_and_the_pack_succeeds(tmp_path: Path) -> None:
    model = copy_fixture("stdlib-simple", tmp_path / "model")
    write_tree(model, {"model/checkpoints/unused/large.onnx": POINTER})

    done = run_command("ersilia_pack", "--model_dir", model, "--system", "--eos", tmp_path / "eos")

    assert done.returncode == 0, done.stderr
    assert (
        "warning: model/checkpoints/unused/large.onnx is a Git LFS pointer, not the file itself "
        "(the real file: 1,234,567 bytes); fetch it with `git lfs pull` in the model's "
        "repository, then pack again"
    ) in done.stderr
    assert "packed stdlib-simple into" in done.stdout


def test_pointers_are_found_anywhere_under_model_and_only_there(tmp_path: Path) -> None:
    model = copy_fixture("stdlib-simple", tmp_path / "model")
    write_tree(
        model,
        {
            "model/framework/code/vocab.txt": POINTER,
            "model/checkpoints/a/b/weights.pt": POINTER.replace("1234567", "42"),
            "model/checkpoints/no-size.bin": POINTER.replace("size 1234567\n", ""),
            # Starts like a pointer but is big: a real file, never read whole.
            "model/checkpoints/notes.md": POINTER + "x" * 1000,
            "model/checkpoints/text.txt": "version 1 of something else\n",
            "pointer-outside-model.bin": POINTER,
        },
    )

    found = find_lfs_pointers(model)

    assert found == [
        LfsPointer(path="model/checkpoints/a/b/weights.pt", size=42),
        LfsPointer(path="model/checkpoints/no-size.bin", size=None),
        LfsPointer(path="model/framework/code/vocab.txt", size=1234567),
    ]
    spec = read_model_dir(model)
    assert spec.lfs_pointers == found
    assert spec.warnings == [pointer.warning() for pointer in found]
