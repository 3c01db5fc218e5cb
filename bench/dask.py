"""`ersilia_pack run --dask`: one Dask worker against two, and the cost per row over a direct
`ersilia_pack run --repository_dir` run of the same bundle.

    python bench/dask.py [--rows 4000] [--seconds 0.004] [--repeat 2] [--out bench/RESULTS.md]

Packs tests/fixtures/sleepy-model (each input waits --seconds, so the run is bound by waiting,
not by the two shared cores of a small machine) into a temporary EOS folder, starts a
`dask scheduler` and two `dask worker` processes on 127.0.0.1 (2 threads, 2 model workers
each), and times the same input file:

1. direct: `ersilia_pack run --repository_dir BUNDLE --workers 2` (starts its engine each run);
2. Dask, one worker: `--dask ADDRESS` with worker A alone;
3. Dask, two workers: A and B.

Each is run --repeat times and the best is kept; the engines of the Dask workers stay loaded
between runs (the worker plugin), so the Dask figures leave out the model's load, which a
direct run pays every time. Every output is checked (every row once, in order).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "sleepy-model"
BIN = Path(sys.executable).parent


def _wait(done: object, what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"no {what} within {within} s")
        time.sleep(0.1)


def _start(
    folder: Path, name: str, args: list[str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    log = (folder / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "dask"), *args],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
        start_new_session=True,
    )
    log.close()
    return process


def _timed_run(bundle: Path, source: Path, out: Path, rows: int, *extra: str) -> float:
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run(
        [
            str(BIN / "ersilia_pack"),
            "run",
            "--repository_dir",
            str(bundle),
            "-i",
            str(source),
            "-o",
            str(out),
            "--workers",
            "2",
            "-q",
            *extra,
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    elapsed = time.perf_counter() - started
    with out.open(newline="") as handle:
        got = [row[0] for row in list(csv.reader(handle))[1:]]
    assert got == [f"bench-{i:06d}" for i in range(rows)], "rows missing, repeated or out of order"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=0.004)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=250)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    processes: list[subprocess.Popen[bytes]] = []
    env = {"SLEEPY_SECONDS": str(args.seconds)}
    os.environ.update(env)  # the direct run's model processes wait the same
    try:
        subprocess.run(
            [
                str(BIN / "ersilia_pack"),
                "--model_dir",
                str(FIXTURE),
                "--system",
                "--eos",
                str(folder / "eos"),
                "-q",
            ],
            check=True,
            capture_output=True,
        )
        bundle = folder / "eos" / "repository" / "sleepy-model"
        source = folder / "inputs.txt"
        source.write_text("".join(f"bench-{i:06d}\n" for i in range(args.rows)))
        scheduler_file = folder / "scheduler.json"
        where = ["--scheduler-file", str(scheduler_file)]
        processes.append(
            _start(
                folder,
                "scheduler",
                ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", *where],
                env,
            )
        )
        _wait(scheduler_file.exists, "scheduler")
        address = json.loads(scheduler_file.read_text())["address"]

        def worker(name: str) -> None:
            processes.append(
                _start(
                    folder,
                    name,
                    [
                        "worker",
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "2",
                        "--no-nanny",
                        "--no-dashboard",
                        "--name",
                        name,
                        "--local-directory",
                        str(folder / name),
                        *where,
                    ],
                    env,
                )
            )
            log = folder / f"{name}.log"
            _wait(lambda: "Registered to:" in log.read_text(errors="replace"), f"worker {name}")

        out = folder / "out.csv"
        dask = ("--dask", address, "--chunk-size", str(args.chunk_size))
        best: dict[str, float] = {}
        best["direct"] = min(_timed_run(bundle, source, out, args.rows) for _ in range(args.repeat))
        worker("A")
        best["dask, 1 worker"] = min(
            _timed_run(bundle, source, out, args.rows, *dask) for _ in range(args.repeat)
        )
        worker("B")
        _timed_run(bundle, source, out, args.rows, *dask)  # B loads its engine
        best["dask, 2 workers"] = min(
            _timed_run(bundle, source, out, args.rows, *dask) for _ in range(args.repeat)
        )
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)

    rows = args.rows
    direct = best["direct"]
    lines = [
        "",
        "## `ersilia_pack run --dask` (`python bench/dask.py`)",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores (shared), Python {platform.python_version()}; "
        f"{rows:,} inputs of tests/fixtures/sleepy-model ({args.seconds * 1000:g} ms of waiting "
        f"each), chunks of {args.chunk_size}, scheduler and workers on 127.0.0.1 (2 threads and "
        f"2 model workers per Dask worker), best of {args.repeat}; every output checked.",
        "",
        "| run | seconds | rows/s | ms per row over direct |",
        "|---|---|---|---|",
    ]
    for name, seconds in best.items():
        over = "" if name == "direct" else f"{(seconds - direct) * 1000 / rows:+.3f}"
        lines.append(f"| {name} | {seconds:.2f} | {rows / seconds:,.0f} | {over} |")
    lines.append("")
    lines.append(
        f"Two workers against one: {best['dask, 1 worker'] / best['dask, 2 workers']:.2f}x."
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
