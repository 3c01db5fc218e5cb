"""Image sizes and build times of `ersilia_pack containerize` for examples/eos-demo.

    python bench/images.py [--base IMAGE] [--engine podman] [--results bench/RESULTS.md]

It builds the base image from scratch (``--no-cache``), then the demo's image on it (nothing of
it cached, since the base is new), then the same image again (every layer cached), and reports
each image's size: the base image's layers above the Python image, and the model image's own
layers above the base. The figures go under "## Container images" in bench/RESULTS.md.
Where images cannot be pulled, pass ``--base localhost/python-standin:3.11-slim`` (made by
scripts/make-python-standin.sh).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ersilia_pack.containerize import (  # noqa: E402
    DEFAULT_BASE,
    containerize,
    ensure_base,
    find_engine,
    host_index_settings,
)

SECTION = "## Container images"
TAG = "localhost/ersilia-pack-bench/eos-demo:latest"


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def image_id(engine: str) -> str:
    done = subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Id}}", TAG],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}"


def write_section(path: Path, section: str) -> None:
    """Replace this script's section of ``path`` (or add it), keeping every other one."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    parts = re.split(r"(?m)^(?=## )", text)
    for index, part in enumerate(parts):
        if part.startswith(SECTION + "\n"):
            parts[index] = section + "\n"
            break
    else:
        parts[-1] = parts[-1].rstrip("\n") + "\n\n"
        parts.append(section)
    path.write_text("".join(parts).rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="the Python image to build on")
    parser.add_argument("--engine", default=None, choices=("docker", "podman"))
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    engine = find_engine(args.engine)
    settings = host_index_settings()
    started = time.monotonic()
    base_tag = ensure_base(engine, base=args.base, settings=settings, no_cache=True)
    base_seconds = time.monotonic() - started
    started = time.monotonic()
    cold = containerize(ROOT / "examples" / "eos-demo", tag=TAG, base=args.base, engine=engine.name)
    cold_seconds = time.monotonic() - started
    cold_id = image_id(engine.path)
    started = time.monotonic()
    cached = containerize(
        ROOT / "examples" / "eos-demo", tag=TAG, base=args.base, engine=engine.name
    )
    cached_seconds = time.monotonic() - started
    same = image_id(engine.path) == cold_id
    assert cold.base_tag == cached.base_tag == base_tag
    python_size = cold.python_size or 0
    base_size = cold.base_size or 0
    model_size = cached.size or 0
    above_python = base_size - python_size
    above_base = model_size - base_size

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        f"`python bench/images.py --base {args.base}` on {now}: {machine()}, "
        f"{engine.name}; examples/eos-demo (RDKit from PyPI).",
        "",
        "| image | size | its own layers |",
        "|---|---|---|",
        f"| `{args.base}` | {megabytes(python_size)} | |",
        f"| base `{base_tag}` | {megabytes(base_size)} | {megabytes(above_python)} above "
        f"the Python image (ersilia-pack and its dependencies) |",
        f"| model `{TAG}` | {megabytes(model_size)} | {megabytes(above_base)} above the base "
        "(RDKit, NumPy, Pillow and the bundle) |",
        "",
        "| build | seconds |",
        "|---|---|",
        f"| base image, from scratch | {base_seconds:.1f} |",
        f"| model image on that base, nothing cached | {cold_seconds:.1f} |",
        f"| model image again, unchanged | {cached_seconds:.1f} "
        f"({cached_seconds / cold_seconds:.2f} x the uncached build; "
        f"{'the same image id' if same else 'a new image id'}) |",
        "",
        "Downloads come from PyPI through the host's package-index settings, so build times "
        "depend on the network as much as on the machine.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_results:
        write_section(args.results, section)
    subprocess.run([engine.path, "rmi", TAG], capture_output=True, check=False)


if __name__ == "__main__":
    main()
