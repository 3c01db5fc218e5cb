"""The two generations of Ersilia model repositories under test, and the tools around them: a
conda stand-in and a container-like Python for ``--system``."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
NEWER = FIXTURES / "ersilia-yml"  # install.yml + metadata.yml
OLDER = FIXTURES / "ersilia-dockerfile"  # Dockerfile + metadata.json
MODEL_IDS = {NEWER: "eos9ym1", OLDER: "eos9df1"}
CONDA_STANDIN = ROOT / "tests" / "standins" / "conda"


def console_script(name: str) -> Path:
    """A console script of this package, installed beside the running interpreter."""
    beside = Path(sys.executable).parent / name
    found = beside if beside.is_file() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed: pip install -e .")
    return Path(found)


def with_conda_step(model_dir: Path, target: Path) -> Path:
    """A copy of ``model_dir`` whose install file ends with a conda step, in that file's style."""
    shutil.copytree(model_dir, target)
    if (target / "install.yml").is_file():
        with (target / "install.yml").open("a") as handle:
            handle.write('  - ["conda", "fixture-extras", "1.0", "conda-forge"]\n')
    else:
        dockerfile = target / "Dockerfile"
        text = dockerfile.read_text()
        step = "RUN conda install -c conda-forge fixture-extras=1.0 -y\n"
        dockerfile.write_text(text.replace("\nWORKDIR", f"{step}\nWORKDIR", 1))
    return target


@dataclass
class CondaStandin:
    """``tests/standins/conda`` with its state in ``root``; ``env`` points ersilia-pack at it."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {"CONDA_EXE": str(CONDA_STANDIN), "CONDA_STANDIN_ROOT": str(self.root)}

    def calls(self) -> list[list[str]]:
        """Every call made so far, as argv lists."""
        log = self.root / "calls.jsonl"
        if not log.is_file():
            return []
        return [json.loads(line)["argv"] for line in log.read_text().splitlines()]

    def prefix(self, name: str) -> Path:
        return self.root / "envs" / name

    def create(self, name: str, python: str) -> None:
        """Make an environment the way the Ersilia client does before it packs."""
        subprocess.run(
            [str(CONDA_STANDIN), "create", "-y", "-n", name, f"python={python}"],
            env={**os.environ, **self.env},
            check=True,
            capture_output=True,
        )


@dataclass
class ContainerPython:
    """A stand-in for a container's own Python with ersilia-pack installed, for ``--system``.

    A venv that sees this interpreter's packages (ersilia-pack and its dependencies) through a
    ``.pth`` file but installs into itself, so ``--system`` installs never touch the Python
    running the tests; ``bin/`` holds the console scripts the client calls.
    """

    prefix: Path

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.prefix / "bin" / name

    @classmethod
    def make(cls, prefix: Path) -> ContainerPython:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
        purelib = subprocess.run(
            [
                str(prefix / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        outer = [*site.getsitepackages(), sysconfig.get_path("purelib")]
        lines = [f"import site; site.addsitedir({folder!r})" for folder in dict.fromkeys(outer)]
        (Path(purelib) / "outer_site.pth").write_text("\n".join(lines) + "\n")
        entry_points = {
            "ersilia_pack": "pack_command",
            "ersilia_serve": "serve_command",
            "ersilia_model_pack": "model_pack_command",
            "ersilia_model_serve": "model_serve_command",
        }
        for name, function in entry_points.items():
            script = prefix / "bin" / name
            script.write_text(
                f"#!{prefix / 'bin' / 'python'}\n"
                "import sys\n"
                f"from ersilia_pack.cli import {function}\n"
                f"sys.exit({function}())\n"
            )
            script.chmod(0o755)
        return cls(prefix)
