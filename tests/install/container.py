"""A stand-in for a container's own Python, for ``--system`` installs that must not touch the
interpreter running the tests: a venv that sees this interpreter's packages through a ``.pth``
file but installs into itself, with an ``ersilia_pack`` console script of its own."""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
from pathlib import Path


def make_container_python(prefix: Path) -> Path:
    """The ``ersilia_pack`` script of a new container-like Python at ``prefix``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    python = prefix / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    lines = [f"import site; site.addsitedir({folder!r})" for folder in dict.fromkeys(outer)]
    (Path(purelib) / "outer_site.pth").write_text("\n".join(lines) + "\n")
    script = prefix / "bin" / "ersilia_pack"
    lines = ["import sys", "from ersilia_pack.cli import pack_command", "sys.exit(pack_command())"]
    script.write_text(f"#!{python}\n" + "\n".join(lines) + "\n")
    script.chmod(0o755)
    return script
