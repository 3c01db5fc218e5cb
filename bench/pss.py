"""Memory of a PyTorch model's API with 1 and with 4 slots: proportional set size (PSS).

    python bench/pss.py [--slots 1 4] [--requests 40] [--results PATH | --no-results]

For each API of tests/fixtures/torch-net (``predict``: load-once workers; ``run``: a legacy
script run warm) it packs a copy of the fixture holding only that API with --system (so the
interpreter running this script needs torch: pip install -e '.[heavy]'), serves it with
ersilia_serve --workers N, waits until every slot has loaded, sends concurrent requests, and sums
the PSS (``/proc/PID/smaps_rollup``) of every process of the API: the server's children (the
load-once workers, or the warm runners) and their own children (the warm runners' forked
children). The server process itself is reported apart. PSS counts a page shared by k
processes as 1/k in each, so the sum is what the API really costs the machine.

Each figure is read twice: idle after the requests (once the sum has settled), and the
highest sum sampled while requests are running. The goal is that 4 slots cost at most 1.5
times one slot. The figures go under "## Memory of a PyTorch model (PSS)" in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "torch-net"
UVICORN_LINE = re.compile(r"Uvicorn running on (http://\S+)")
SECTION = "## Memory of a PyTorch model (PSS)"
GOAL = 1.5
# What marks each API's processes on their command line
ROLES = {"predict": "worker.py", "run": "warm.py"}
SMILES = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "N#N"]


def _script(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def single_api_copy(api: str, target: Path) -> Path:
    """A copy of the torch fixture with only ``api``, so no other API shares its pages."""
    shutil.copytree(FIXTURE, target, ignore=shutil.ignore_patterns("__pycache__"))
    framework = target / "model" / "framework"
    other = next(name for name in ROLES if name != api)
    (framework / ("predict.py" if other == "predict" else "run.sh")).unlink()
    for folder, suffixes in (
        ("examples", ("_input.csv", "_output.csv")),
        ("columns", ("_columns.csv",)),
    ):
        for suffix in suffixes:
            (framework / folder / f"{other}{suffix}").unlink()
    return target


def pack(model_dir: Path, eos: Path) -> Path:
    done = subprocess.run(
        [
            _script("ersilia_pack"),
            "--model_dir",
            str(model_dir),
            "--system",
            "--eos",
            str(eos),
            "-q",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"ersilia_pack failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    (repository,) = (eos / "repository").iterdir()
    return repository


@contextlib.contextmanager
def serving(repository: Path, slots: int):
    """Serve with ersilia_serve --workers ``slots``; yield (url, server pid)."""
    process = subprocess.Popen(
        [
            _script("ersilia_serve"),
            "--repository_dir",
            str(repository),
            "--port",
            "0",
            "--workers",
            str(slots),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    found: list[str] = []
    seen: list[str] = []

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:  # keep reading so the server never blocks on its log
            if not found:
                seen.append(line)
                match = UVICORN_LINE.search(line)
                if match:
                    found.append(match.group(1))

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while not found:
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit("ersilia_serve did not start:\n" + "".join(seen))
            time.sleep(0.05)
        yield found[0], process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_ready(url: str, within: float = 180) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/readyz", timeout=10) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    sys.exit(f"{url} was not ready within {within:g} s")


def post(url: str, inputs: list[str]) -> list[dict[str, float]]:
    request = urllib.request.Request(
        url, data=json.dumps(inputs).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        rows: list[dict[str, float]] = json.loads(response.read())
    if len(rows) != len(inputs) or any(row is None or len(row) != 3 for row in rows):
        sys.exit(f"wrong answer from {url}: {rows}")
    return rows


def parents() -> dict[int, int]:
    """Every live process and its parent, from /proc/PID/stat."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # the command name in parentheses may hold spaces: split after its last ')'
            table[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return table


def children(pid: int, table: dict[int, int]) -> list[int]:
    return [child for child, parent in table.items() if parent == pid]


def descendants(pid: int, table: dict[int, int]) -> list[int]:
    out, todo = [], children(pid, table)
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children(child, table))
    return out


def pss_kib(pid: int) -> int:
    """The PSS of one process in KiB (0 when it has just ended)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


@dataclass
class Sample:
    api_kib: int
    server_kib: int
    processes: int
    roots: int = 0


def sample(server: int, api: str) -> Sample:
    """PSS of the API's processes (the server's children marked for it, and theirs)."""
    table = parents()
    roots = [pid for pid in children(server, table) if ROLES[api] in cmdline(pid)]
    pids = roots + [pid for root in roots for pid in descendants(root, table)]
    return Sample(sum(map(pss_kib, pids)), pss_kib(server), len(pids), len(roots))


def settled(server: int, api: str, slots: int, within: float = 180) -> Sample:
    """A sample once every slot's process is up and the sum has stopped moving (within 1%).

    /readyz answers as soon as one slot is loaded; the others may still be loading.
    """
    deadline = time.monotonic() + within
    last = sample(server, api)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sample(server, api)
        steady = abs(now.api_kib - last.api_kib) <= 0.01 * max(last.api_kib, 1)
        if now.roots >= slots and steady:
            return now
        last = now
    return last


def measure(repository: Path, api: str, slots: int, requests: int) -> dict[str, float]:
    with serving(repository, slots) as (url, server):
        wait_ready(url)
        settled(server, api, slots)
        batches = [
            [SMILES[(n + k) % len(SMILES)] + "C" * n for k in range(4)] for n in range(requests)
        ]
        peak = Sample(0, 0, 0)
        done = threading.Event()

        def load() -> None:
            with ThreadPoolExecutor(max(2, 2 * slots)) as pool:
                list(pool.map(lambda inputs: post(f"{url}/{api}", inputs), batches))
            done.set()

        worker = threading.Thread(target=load)
        worker.start()
        while not done.is_set():
            now = sample(server, api)
            if now.api_kib > peak.api_kib:
                peak = now
            time.sleep(0.02)
        worker.join()
        idle = settled(server, api, slots)
    return {
        "slots": slots,
        "idle_mib": idle.api_kib / 1024,
        "idle_processes": idle.processes,
        "peak_mib": peak.api_kib / 1024,
        "peak_processes": peak.processes,
        "server_mib": idle.server_kib / 1024,
    }


def forked_probe(slots: int) -> None:
    """In a process of its own: load the network once, fork ``slots`` children that use it.

    Not ersilia-pack: the shape a pool forked from one loaded parent would have, for
    comparison. Each child holds torch to one thread and scores inputs; then all wait.
    """
    import torch

    sys.path.insert(0, str(FIXTURE / "model" / "framework" / "code"))
    import tinynet

    net = tinynet.load()
    tinynet.predict(net, SMILES)
    ready_read, ready_write = os.pipe()
    for _ in range(slots):
        if os.fork() == 0:
            torch.set_num_threads(1)
            for _ in range(50):
                tinynet.predict(net, SMILES)
            os.write(ready_write, b".")
            signal.pause()
            os._exit(0)
    got = b""
    while len(got) < slots:
        got += os.read(ready_read, slots)
    print("ready", flush=True)
    signal.pause()


def measure_forked_probe(slots: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, __file__, "--forked-probe", str(slots)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            sys.exit("the forked probe did not start")
        table = parents()
        pids = [process.pid, *descendants(process.pid, table)]
        total = sum(map(pss_kib, pids))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return {"slots": slots, "mib": total / 1024, "processes": len(pids)}


def machine() -> str:
    import torch

    memory = ""
    with contextlib.suppress(OSError, AttributeError):
        found = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        memory = f", {int(found.group(1)) / 1024 / 1024:.1f} GiB RAM"  # type: ignore[union-attr]
    return (
        f"{os.cpu_count()} cores{memory}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def markdown(
    figures: dict[str, list[dict[str, float]]],
    probe: list[dict[str, float]],
    slots: list[int],
    when: str,
) -> str:
    low, high = slots[0], slots[-1]
    lines = [
        SECTION,
        "",
        f"`python bench/pss.py` on {when}: {machine()}. tests/fixtures/torch-net (torch "
        "imported, a 64x1024x3 network loaded from its checkpoint), one API per server, served "
        "by ersilia_serve --workers N. PSS is summed over the API's processes "
        "(`/proc/PID/smaps_rollup`), idle after the requests and at the highest sample while "
        "they ran; the server process is apart.",
        "",
        "| API | slots | idle PSS MiB (processes) | peak PSS MiB (processes) | server PSS MiB |",
        "|---|---|---|---|---|",
    ]
    for api, rows in figures.items():
        kind = "load-once workers" if api == "predict" else "legacy, warm"
        for row in rows:
            idle = f"{row['idle_mib']:.0f} ({row['idle_processes']:g})"
            peak = f"{row['peak_mib']:.0f} ({row['peak_processes']:g})"
            server = f"{row['server_mib']:.0f}"
            lines.append(f"| `{api}` ({kind}) | {row['slots']:g} | {idle} | {peak} | {server} |")
    lines += [
        "",
        f"| API | idle, {high} slots / {low} | peak, {high} slots / {low} | at most {GOAL}x |",
        "|---|---|---|---|",
    ]
    for api, rows in figures.items():
        first, last = rows[0], rows[-1]
        idle_ratio = last["idle_mib"] / first["idle_mib"]
        peak_ratio = last["peak_mib"] / first["peak_mib"]
        met = "yes" if max(idle_ratio, peak_ratio) <= GOAL else "no"
        lines.append(f"| `{api}` | {idle_ratio:.2f}x | {peak_ratio:.2f}x | {met} |")
    missed = [
        api
        for api, rows in figures.items()
        if max(
            rows[-1]["idle_mib"] / rows[0]["idle_mib"], rows[-1]["peak_mib"] / rows[0]["peak_mib"]
        )
        > GOAL
    ]
    if missed:
        lines += [
            "",
            f"Goal missed by {', '.join(f'`{api}`' for api in missed)}: the cost grows with the "
            "slots when each slot is an interpreter of its own (a load-once worker, or a warm "
            "runner, per slot) that imports torch and loads the model again; only a warm "
            "runner's forked children share its pages.",
        ]
    lines += [
        "",
        "For comparison, not ersilia-pack: one process that loaded the same network and forked "
        "N children that score with it (torch held to one thread in each), the parent included:",
        "",
        "| forked children | PSS MiB (processes) | ratio to 1 |",
        "|---|---|---|",
    ]
    for row in probe:
        ratio = row["mib"] / probe[0]["mib"]
        lines.append(
            f"| {row['slots']:g} | {row['mib']:.0f} ({row['processes']:g}) | {ratio:.2f}x |"
        )
    lines.append("")
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of ``path`` (or add it), keeping every other one."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    parts = re.split(r"(?m)^(?=## )", text)
    kept = [part for part in parts if not part.startswith(SECTION + "\n")]
    body = "".join(kept).rstrip("\n") + "\n\n" + section
    path.write_text(body.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=40, help="requests of 4 inputs per figure")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--forked-probe", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.forked_probe:
        forked_probe(options.forked_probe)
        return 0
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("torch is needed: pip install -e '.[heavy]'")
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    figures: dict[str, list[dict[str, float]]] = {}
    work = Path(tempfile.mkdtemp(prefix="ersilia-pss-"))
    try:
        for api in ROLES:
            repository = pack(single_api_copy(api, work / api), work / f"eos-{api}")
            figures[api] = []
            for slots in sorted(options.slots):
                row = measure(repository, api, slots, options.requests)
                figures[api].append(row)
                print(f"{api} slots={slots}: " + json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    probe = [measure_forked_probe(slots) for slots in sorted(options.slots)]
    for row in probe:
        print("forked probe: " + json.dumps(row), flush=True)
    section = markdown(figures, probe, sorted(options.slots), when)
    print(section)
    if not options.no_results:
        write_section(options.results, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
