"""Pack time of real-shaped models with pip and with uv, cold and warm caches, side by side.

    python bench/pack_time.py [--runs 3] [--torch] [--out bench/RESULTS.md]

Makes small model directories whose install files look like published Ersilia models
(rdkit + numpy; pandas + scikit-learn; torch with --torch) and packs each one with
``ersilia_pack --venv`` into a fresh EOS folder, once per installer in turn (pip, uv, uv,
pip, ...), so both see the same machine and network:

- cold: each pack gets empty caches of its own, so every package is downloaded;
- warm: every pack uses one cache per installer, filled by a warm-up pack first; warm packs
  run both as a default pack and with ``--no-check`` (the installs without the example check).

A third column packs the rdkit + numpy model the way the reference ``ersilia_model_pack``
does (the reference is not installable from PyPI, see RESULTS.md): its install lines run with
pip (``bash install.sh``) in a fresh virtual environment made beforehand, with the same warm
pip cache. That is only the reference's install work, so it flatters the reference.

Every pack is a whole ``ersilia_pack`` process: venv creation, installs, rendering and the
example check; the figures are medians of wall-clock seconds, and ratios are taken pair by pair.
torch runs with pip only: on this machine pip takes ``torch==2.13.0`` from a local wheel, while
uv (which does not read pip's configuration) would download about 3 GB of CUDA wheels.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Pack time (`python bench/pack_time.py`)"
PACK = str(Path(sys.executable).parent / "ersilia_pack")

RUN_SH = "python $1/code/main.py $2 $3\n"
MAIN_PY = '''"""Reads SMILES, writes one row per input: {what}."""

import csv
import sys

{imports}

with open(sys.argv[1], newline="") as handle:
    smiles = [row[0] for row in list(csv.reader(handle))[1:]]
with open(sys.argv[2], "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow([{header}])
    for text in smiles:
        writer.writerow([{row}])
'''
METADATA = """Identifier: {model_id}
Slug: {model_id}
Status: Ready
Title: A benchmark model that installs {title}
Description: Made by bench/pack_time.py to time packs; shaped like a published Ersilia model.
Mode: In-house
Input:
- Compound
Output:
- Descriptor
Output Consistency: Fixed
Publication Year: 2025
License: MIT
Last Packaging Date: 2025-10-22
"""
INPUTS = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O"]


@dataclass(frozen=True)
class Shape:
    """One model: its install.yml lines and what its script computes."""

    model_id: str
    title: str
    pip: list[tuple[str, str]]
    imports: str
    header: str
    row: str
    outputs: list[list[str]]
    uv: bool = True


MODELS = [
    Shape(
        model_id="bench-rdkit-numpy",
        title="rdkit and numpy",
        pip=[("rdkit", "2025.9.1"), ("numpy", "")],
        imports="import numpy as np\nfrom rdkit import Chem\nfrom rdkit.Chem import Descriptors",
        header='"heavy_atoms", "mol_weight"',
        row="Chem.MolFromSmiles(text).GetNumHeavyAtoms(), "
        "round(float(np.float64(Descriptors.MolWt(Chem.MolFromSmiles(text)))), 3)",
        outputs=[["3", "46.069"], ["7", "94.113"], ["13", "180.159"]],
    ),
    Shape(
        model_id="bench-sklearn-pandas",
        title="pandas and scikit-learn",
        pip=[("pandas", ""), ("scikit-learn", "1.7.2")],
        imports="import pandas\nimport sklearn.linear_model",
        header='"length"',
        row="len(text)",
        outputs=[["3"], ["9"], ["21"]],
    ),
    Shape(
        model_id="bench-torch",
        title="torch",
        pip=[("torch", "2.13.0")],
        imports="import torch",
        header='"length"',
        row="int(torch.tensor(len(text)).item())",
        outputs=[["3"], ["9"], ["21"]],
        uv=False,
    ),
]


def make_model(shape: Shape, folder: Path) -> Path:
    model = folder / shape.model_id
    framework = model / "model" / "framework"
    for sub in ("code", "examples", "columns"):
        (framework / sub).mkdir(parents=True, exist_ok=True)
    (model / "model" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (model / "metadata.yml").write_text(METADATA.format(model_id=shape.model_id, title=shape.title))
    lines = [f'  - ["pip", "{name}", "{version}"]' for name, version in shape.pip]
    (model / "install.yml").write_text('python: "3.11"\ncommands:\n' + "\n".join(lines) + "\n")
    (framework / "run.sh").write_text(RUN_SH)
    (framework / "code" / "main.py").write_text(
        MAIN_PY.format(what=shape.title, imports=shape.imports, header=shape.header, row=shape.row)
    )
    (framework / "examples" / "run_input.csv").write_text("smiles\n" + "\n".join(INPUTS) + "\n")
    header = shape.header.replace('"', "").replace(" ", "")
    rows = "\n".join(",".join(row) for row in shape.outputs)
    (framework / "examples" / "run_output.csv").write_text(f"{header}\n{rows}\n")
    return model


def reference_install_sh(shape: Shape) -> str:
    """The install.sh the reference writes for a model without conda: one pip line a step."""
    lines = [f"pip install {name}=={v}" if v else f"pip install {name}" for name, v in shape.pip]
    return "\n".join(lines) + "\n"


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")


def timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, bool]:
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        done = subprocess.run(command, env=env, stdout=handle, stderr=handle, check=False)
    return time.perf_counter() - start, done.returncode == 0


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.log = work / "packs.log"
        self.count = 0

    def fresh(self, name: str) -> Path:
        self.count += 1
        path = self.work / f"{name}-{self.count}"
        path.mkdir()
        return path

    def env(self, installer: str, cache: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        if installer == "uv":
            env["UV_CACHE_DIR"] = str(cache)
        else:
            env["PIP_CACHE_DIR"] = str(cache)
        return env

    def pack(
        self, model: Path, installer: str, cache: Path, *, check: bool = True
    ) -> tuple[float, bool]:
        eos = self.fresh("eos")
        command = [PACK, "--model_dir", str(model), "--venv", "--installer", installer]
        command += [] if check else ["--no-check"]
        seconds, ok = timed([*command, "--eos", str(eos)], self.env(installer, cache), self.log)
        shutil.rmtree(eos, ignore_errors=True)
        return seconds, ok

    def reference_like(self, shape: Shape, cache: Path) -> tuple[float, bool]:
        venv = self.fresh("reference-venv")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        script = venv / "install.sh"
        script.write_text(reference_install_sh(shape))
        env = self.env("pip", cache)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        seconds, ok = timed(["bash", str(script)], env, self.log)
        shutil.rmtree(venv, ignore_errors=True)
        return seconds, ok


def record(timing: Timing, result: tuple[float, bool], label: str) -> None:
    seconds, ok = result
    if ok:
        timing.seconds.append(seconds)
    else:
        timing.failures.append(label)


def ratio(first: Timing, second: Timing) -> str:
    pairs = [a / b for a, b in zip(first.seconds, second.seconds)]
    return f"{statistics.median(pairs):.2f}" if pairs else "n/a"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        with_model = f" ({found.group(1).strip()})" if found else ""
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        found = re.search(r"MemTotal:\s*(\d+)", meminfo.read_text())
        memory = f", {int(found.group(1)) / 2**20:.0f} GiB RAM" if found else ""
    return (
        f"{os.cpu_count()} cores{with_model or ' ' + cpu}{memory}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def write_section(path: Path, section: str) -> None:
    """Replace this script's section of RESULTS.md (or add it at the end), keeping the rest."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    parts = re.split(r"(?m)^(?=## )", text)
    replaced = False
    for number, part in enumerate(parts):
        if part.startswith(SECTION):
            parts[number] = section + "\n"
            replaced = True
    if not replaced:
        parts[-1] = parts[-1].rstrip("\n") + "\n\n"
        parts.append(section + "\n")
    path.write_text("".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="warm packs per installer and model")
    parser.add_argument("--cold-runs", type=int, default=1, help="cold packs per installer")
    parser.add_argument("--torch", action="store_true", help="also the torch model (pip only)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and its log")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pack-time-"))
    bench = Bench(work)
    models = [shape for shape in MODELS if args.torch or shape.model_id != "bench-torch"]
    rows: list[str] = []
    notes: list[str] = []
    reference_row = ""
    empty_pip_cache = False
    started = datetime.now(timezone.utc)
    try:
        for shape in models:
            model = make_model(shape, work / "models")
            installers = ["pip", "uv"] if shape.uv else ["pip"]
            cold = {name: Timing() for name in installers}
            warm = {name: Timing() for name in installers}
            unchecked = {name: Timing() for name in installers}
            for run in range(args.cold_runs):
                order = installers if run % 2 == 0 else installers[::-1]
                for name in order:
                    result = bench.pack(model, name, bench.fresh(f"{name}-cold-cache"))
                    record(cold[name], result, f"cold {name}")
            caches = {name: bench.fresh(f"{name}-warm-cache") for name in installers}
            for name in installers:  # the warm-up fills each cache
                bench.pack(model, name, caches[name])
            if not any(path.is_file() for path in caches["pip"].rglob("*")):
                empty_pip_cache = True
            reference = Timing()
            ours = Timing()
            for run in range(args.runs):
                order = installers if run % 2 == 0 else installers[::-1]
                for name in order:
                    record(warm[name], bench.pack(model, name, caches[name]), f"warm {name}")
                for name in order[::-1]:
                    result = bench.pack(model, name, caches[name], check=False)
                    record(unchecked[name], result, f"warm {name} --no-check")
                if shape.model_id == "bench-rdkit-numpy":
                    # side by side: the default pack (uv) and the reference-like install
                    record(ours, bench.pack(model, "uv", caches["uv"]), "default")
                    record(reference, bench.reference_like(shape, caches["pip"]), "reference")
            cells = []
            for name in ("pip", "uv"):
                missing = "skipped" if name not in cold else "not run"
                cells.append(
                    f"{cold[name].median:.1f}" if cold.get(name, Timing()).seconds else missing
                )
            for name in ("pip", "uv"):
                cells.append(f"{warm[name].median:.1f}" if name in warm else "skipped")
            for name in ("pip", "uv"):
                cells.append(f"{unchecked[name].median:.1f}" if name in unchecked else "skipped")
            uv_cold = ratio(cold["uv"], cold["pip"]) if shape.uv else "n/a"
            uv_warm = ratio(warm["uv"], warm["pip"]) if shape.uv else "n/a"
            uv_bare = ratio(unchecked["uv"], unchecked["pip"]) if shape.uv else "n/a"
            pins = ", ".join(f"{n}=={v}" if v else n for n, v in shape.pip)
            rows.append(
                f"| {pins} | " + " | ".join(cells) + f" | {uv_cold} | {uv_warm} | {uv_bare} |"
            )
            for timing in (*cold.values(), *warm.values(), *unchecked.values(), reference, ours):
                if timing.failures:
                    notes.append(f"{shape.model_id}: failed: {', '.join(timing.failures)}")
            if shape.model_id == "bench-rdkit-numpy":
                reference_row = (
                    f"| {ours.median:.1f} | {reference.median:.1f} | {ratio(ours, reference)} |"
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    lines = [
        SECTION,
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {machine()}, while the machine was shared.",
        "Seconds are medians of whole `ersilia_pack --venv` processes (environment, installs,",
        "rendering, example check), each into a fresh EOS folder; the installers ran in turn",
        f"(pip, uv, uv, pip, ...), {args.runs} warm and {args.cold_runs} cold pack(s) each.",
        "Ratios are uv/pip, median of the pairs. Cold: empty caches, every package downloaded;",
        "warm: one cache per installer, filled by a warm-up pack. The models carry a",
        "`Last Packaging Date`, so pip's figures include bringing the new environment's pip to",
        "26 (what resolving as of a date needs). The `--no-check` columns leave out the example",
        "check (the packed model run on its example input, cold and warm), which costs both",
        "installers the same. Goals: uv/pip warm at most 0.4; the default pack at most half",
        "the reference's (second table).",
        "",
        *(
            [
                "On this machine pip wrote nothing to its cache (its warm-up pack left",
                "`PIP_CACHE_DIR` empty), so pip's warm packs download their wheels again;",
                "uv's cache held them.",
                "",
            ]
            if empty_pip_cache
            else []
        ),
        "| model's pip steps | cold pip s | cold uv s | warm pip s | warm uv s "
        "| warm pip s, --no-check | warm uv s, --no-check "
        "| uv/pip cold | uv/pip warm | uv/pip warm, --no-check |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "torch runs with pip only: pip takes `torch==2.13.0` from a wheel on this machine's disk,",
        "while uv (which does not read pip's configuration) would download about 3 GB of CUDA",
        "wheels." + ("" if args.torch else " Not run this time (`--torch` runs it)."),
        "",
        "### Default pack against the reference's install work (rdkit + numpy, warm caches)",
        "",
        "The reference ersilia-pack is not installable from PyPI (`pip download ersilia-pack`",
        "finds no such distribution), so its `ersilia_model_pack` could not be run. Stand-in: the",
        "install lines it writes for this model (`pip install rdkit==2025.9.1`,",
        "`pip install numpy`) run with `bash install.sh` in a fresh virtual environment made",
        "beforehand, with a warm pip cache: the reference's install work alone, without its",
        "rendering, and nothing checked. Ours is the default `ersilia_pack --model_dir X`",
        "(uv, the card's date, the example check), side by side in the same rounds.",
        "",
        "| default ersilia_pack s | reference-like install s | ours / reference-like |",
        "|---|---|---|",
        reference_row or "| n/a | n/a | n/a |",
    ]
    if notes:
        lines += ["", "Failures: " + "; ".join(notes)]
    section = "\n".join(lines)
    write_section(args.out, section)
    print(section)


if __name__ == "__main__":
    main()
