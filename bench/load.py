"""Load test of a served model: many clients, valid and invalid requests, answers checked.

    python bench/load.py [--clients 32] [--duration 60] [--data PATH] [--url URL]

Without --url it packs examples/eos-demo with --system into a temporary EOS folder and serves
it with ersilia_serve on a free port of 127.0.0.1. N clients then send requests for T seconds:
most are valid (a batch of SMILES from the shared data set, as JSON strings, {key, input}
objects or a CSV upload, sometimes with an invalid SMILES in it), the rest are invalid on
purpose (bad JSON, an unsupported content type, an empty list, non-string items, a bad orient).

It checks that no request gets a 5xx, that every invalid request gets its own 4xx, and that
every mol_weight matches the data set (relative 1e-6; an invalid SMILES gets a null row). It
reads the resident memory (RSS) and open file descriptors of the server and its children from
/proc while the clients are quiet, after a warm-up and after the run, and calls them stable
when memory grew by at most 25% + 64 MiB and file descriptors by at most 8.

The figures go under "## Load test" in bench/RESULTS.md (--results PATH, --no-results to skip)
and, with --json PATH, into a JSON report. The exit code is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA_NAME = "smiles-50k-molweight.csv"
UVICORN_LINE = re.compile(r"Uvicorn running on (http://\S+)")
RELATIVE_TOLERANCE = 1e-6
BAD_SMILES = "this-is-not-a-smiles"
# (name, content type, body, query, expected status)
INVALID = [
    ("bad-json", "application/json", b'["CCO",', {}, 400),
    ("content-type", "application/xml", b"<inputs><input>CCO</input></inputs>", {}, 415),
    ("empty-list", "application/json", b"[]", {}, 422),
    ("not-strings", "application/json", b'[1, {"smiles": "CCO"}]', {}, 422),
    ("bad-orient", "application/json", b'["CCO"]', {"orient": "sideways"}, 422),
]


def default_data() -> Path:
    """The shared data set beside the clone (or where ERSILIA_PACK_TEST_DATA points)."""
    folder = Path(os.environ.get("ERSILIA_PACK_TEST_DATA", ROOT.parent / "shared" / "data"))
    return folder / DATA_NAME


def read_data(path: Path) -> list[tuple[str, float]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [(row["input"], float(row["mol_weight"])) for row in csv.DictReader(handle)]


# --- the server and its processes -------------------------------------------------------


def _console_script(name: str) -> str:
    beside = Path(sys.executable).parent / name  # the interpreter's own, in a venv too
    return str(beside) if beside.exists() else name


@contextlib.contextmanager
def own_server(model_dir: Path, api_key: str | None) -> Iterator[tuple[str, int]]:
    """Pack ``model_dir`` with --system into a temporary EOS and serve it; (url, pid)."""
    scripts = Path(sys.executable).parent
    pack = str(scripts / "ersilia_pack") if (scripts / "ersilia_pack").exists() else "ersilia_pack"
    serve = (
        str(scripts / "ersilia_serve") if (scripts / "ersilia_serve").exists() else "ersilia_serve"
    )
    eos = Path(tempfile.mkdtemp(prefix="ersilia-load-"))
    try:
        done = subprocess.run(
            [pack, "--model_dir", str(model_dir), "--system", "--eos", str(eos), "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            sys.exit(f"ersilia_pack failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        (repository,) = (eos / "repository").iterdir()
        command = [serve, "--repository_dir", str(repository), "--port", "0"]
        env = {**os.environ, **({"ERSILIA_PACK_API_KEY": api_key} if api_key else {})}
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
            env=env,
        )
        try:
            url = _wait_for_url(process)
            yield url, process.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if process.stderr is not None:
                process.stderr.close()
    finally:
        shutil.rmtree(eos, ignore_errors=True)


def _wait_for_url(process: subprocess.Popen[str], within: float = 120) -> str:
    found: list[str] = []
    seen: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:  # keep draining so the server never blocks on its log
            if not found:
                seen.append(line)
                match = UVICORN_LINE.search(line)
                if match:
                    found.append(match.group(1))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + within
    while not found:
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit("ersilia_serve did not start:\n" + "".join(seen))
        time.sleep(0.05)
    return found[0]


def listener_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1/0.0.0.0 ``port``, found through /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(entry.name)
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2 :].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


@dataclass
class Resources:
    """Memory and file descriptors of the server and its children at one moment."""

    server_rss_mib: float
    tree_rss_mib: float
    processes: int
    server_fds: int
    tree_fds: int

    @classmethod
    def read(cls, pid: int) -> Resources:
        tree = process_tree(pid)
        return cls(
            server_rss_mib=round(rss_mib(pid), 1),
            tree_rss_mib=round(sum(rss_mib(p) for p in tree), 1),
            processes=len(tree),
            server_fds=fd_count(pid),
            tree_fds=sum(fd_count(p) for p in tree),
        )


# --- the clients ---------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw."""

    valid: int = 0
    invalid: int = 0
    inputs: int = 0
    server_errors: int = 0
    wrong_answers: int = 0
    wrong_statuses: int = 0
    transport_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def valid_request(
    rng: random.Random, data: list[tuple[str, float]]
) -> tuple[str, bytes, list[float | None]]:
    """A valid POST /run body in one of the accepted shapes, and the expected mol_weights."""
    batch = rng.sample(data, rng.randint(1, 20))
    inputs = [smiles for smiles, _ in batch]
    expected: list[float | None] = [weight for _, weight in batch]
    if rng.random() < 0.1:
        spot = rng.randrange(len(inputs) + 1)
        inputs.insert(spot, BAD_SMILES)
        expected.insert(spot, None)
    shape = rng.random()
    if shape < 0.6:
        return "application/json", json.dumps(inputs).encode(), expected
    if shape < 0.85:
        objects = [{"key": f"k{i}", "input": value} for i, value in enumerate(inputs)]
        return "application/json", json.dumps(objects).encode(), expected
    lines = ["input", *(f'"{value}"' for value in inputs)]
    return "text/csv", ("\n".join(lines) + "\n").encode(), expected


def close_enough(got: Any, want: float) -> bool:
    return isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=RELATIVE_TOLERANCE)


def check_valid(tally: Tally, response: httpx.Response, expected: list[float | None]) -> None:
    if response.status_code != 200:
        tally.wrong_statuses += 1
        tally.problem(f"valid request got {response.status_code}: {response.text[:200]}")
        return
    rows = response.json()
    if len(rows) != len(expected):
        tally.wrong_answers += 1
        tally.problem(f"{len(rows)} rows for {len(expected)} inputs")
        return
    for row, want in zip(rows, expected):
        got = row.get("mol_weight")
        if (want is None and got is not None) or (want is not None and not close_enough(got, want)):
            tally.wrong_answers += 1
            tally.problem(f"mol_weight {got!r}, expected {want!r}")


async def client(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    data: list[tuple[str, float]],
    rng: random.Random,
    until: float,
    tally: Tally,
    invalid_share: float,
) -> None:
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            if rng.random() < invalid_share:
                name, content_type, body, query, status = rng.choice(INVALID)
                response = await http.post(
                    "/run",
                    content=body,
                    params=query,
                    headers={**headers, "Content-Type": content_type},
                )
                tally.invalid += 1
                tally.statuses[f"{name} {response.status_code}"] += 1
                if response.status_code != status:
                    tally.wrong_statuses += 1
                    tally.problem(f"{name}: {response.status_code}, expected {status}")
            else:
                content_type, body, expected = valid_request(rng, data)
                response = await http.post(
                    "/run", content=body, headers={**headers, "Content-Type": content_type}
                )
                tally.valid += 1
                tally.inputs += len(expected)
                tally.latencies_ms.append((time.perf_counter() - started) * 1000)
                tally.statuses[f"valid {response.status_code}"] += 1
                check_valid(tally, response, expected)
            if response.status_code >= 500:
                tally.server_errors += 1
                tally.problem(f"{response.status_code}: {response.text[:200]}")
        except httpx.HTTPError as error:
            tally.transport_errors += 1
            tally.problem(f"{type(error).__name__}: {error}")


async def run_clients(
    url: str,
    api_key: str | None,
    data: list[tuple[str, float]],
    *,
    clients: int,
    seconds: float,
    seed: int,
    invalid_share: float = 0.2,
) -> tuple[Tally, float]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(
            *(
                client(http, headers, data, random.Random(seed + i), until, tally, invalid_share)
                for i in range(clients)
            )
        )
        elapsed = time.monotonic() - started
    return tally, elapsed


async def wait_ready(url: str, api_key: str | None, within: float = 120) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
        while (await http.get("/readyz")).status_code != 200:
            if time.monotonic() > deadline:
                sys.exit(f"{url}/readyz did not answer 200 within {within:g} s")
            await asyncio.sleep(0.2)


# --- the report ----------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / 1024 / 1024
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(ram, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    start, end = report["resources_start"], report["resources_end"]
    return {
        "no 5xx": report["server_errors"] == 0,
        "no transport errors": report["transport_errors"] == 0,
        "every valid answer correct": report["wrong_answers"] == 0,
        "every status as expected": report["wrong_statuses"] == 0,
        "valid and invalid requests both sent": report["valid"] > 0 and report["invalid"] > 0,
        "memory stable": end["tree_rss_mib"] <= start["tree_rss_mib"] * 1.25 + 64,
        "no leaked file descriptors": end["tree_fds"] <= start["tree_fds"] + 8,
    }


def markdown(report: dict[str, Any]) -> str:
    box = report["machine"]
    start, end = report["resources_start"], report["resources_end"]
    checks = report["verdicts"]
    lines = [
        "## Load test",
        "",
        f"`python bench/load.py --clients {report['clients']} --duration "
        f"{report['duration_s']:g}` on {report['date']}: {box['nproc']} cores ({box['cpu']}), "
        f"{box['ram_gib']} GiB RAM, Linux {box['kernel']}, Python {box['python']}. "
        f"{report['target']}; {report['clients']} keep-alive clients on loopback for "
        f"{report['elapsed_s']:.0f} s, {report['invalid_share']:.0%} of requests invalid on "
        "purpose, valid ones 1-20 SMILES of the shared data set (some with an invalid SMILES).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {report['valid'] + report['invalid']:,} "
        f"({report['valid']:,} valid, {report['invalid']:,} invalid) |",
        f"| valid requests per second | {report['valid_per_s']:.1f} |",
        f"| SMILES per second | {report['inputs_per_s']:.1f} |",
        f"| latency of valid requests p50 / p95 / p99 | {report['latency_ms']['p50']:.0f} / "
        f"{report['latency_ms']['p95']:.0f} / {report['latency_ms']['p99']:.0f} ms |",
        f"| 5xx answers | {report['server_errors']} |",
        f"| wrong mol_weight or row count | {report['wrong_answers']} |",
        f"| unexpected statuses | {report['wrong_statuses']} |",
        f"| transport errors | {report['transport_errors']} |",
        f"| RSS of the server, start / end | {start['server_rss_mib']} / "
        f"{end['server_rss_mib']} MiB |",
        f"| RSS of the server and its children, start / end | {start['tree_rss_mib']} / "
        f"{end['tree_rss_mib']} MiB ({start['processes']} / {end['processes']} processes) |",
        f"| open file descriptors of the server, start / end | {start['server_fds']} / "
        f"{end['server_fds']} |",
        f"| open file descriptors with its children, start / end | {start['tree_fds']} / "
        f"{end['tree_fds']} |",
        "",
        "Checks: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in checks.items()),
        "",
        "Start is measured after a warm-up, end after the clients stop, both while no request "
        "is in flight. The machine was shared with other work, so the rates are a floor.",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the "## Load test" section of ``path`` (or add it), keeping every other one."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    parts = re.split(r"(?m)^(?=## )", text)
    for index, part in enumerate(parts):
        if part.startswith("## Load test\n"):
            parts[index] = section + "\n"
            break
    else:
        parts[-1] = parts[-1].rstrip("\n") + "\n\n"
        parts.append(section)
    path.write_text("".join(parts).rstrip("\n") + "\n")


async def measure(
    url: str, pid: int, api_key: str | None, data: list[tuple[str, float]], args: argparse.Namespace
) -> dict[str, Any]:
    await wait_ready(url, api_key)
    if args.warmup > 0:
        await run_clients(
            url, api_key, data, clients=args.clients, seconds=args.warmup, seed=args.seed - 1
        )
    await asyncio.sleep(1)
    start = Resources.read(pid)
    tally, elapsed = await run_clients(
        url, api_key, data, clients=args.clients, seconds=args.duration, seed=args.seed
    )
    await asyncio.sleep(1)
    end = Resources.read(pid)
    latencies = tally.latencies_ms
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "target": f"A server at {args.url}"
        if args.url
        else "examples/eos-demo packed with --system and served by ersilia_serve (default flags)",
        "clients": args.clients,
        "duration_s": args.duration,
        "elapsed_s": elapsed,
        "invalid_share": 0.2,
        "valid": tally.valid,
        "invalid": tally.invalid,
        "inputs": tally.inputs,
        "valid_per_s": tally.valid / elapsed,
        "inputs_per_s": tally.inputs / elapsed,
        "latency_ms": {
            "p50": percentile(latencies, 0.50),
            "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99),
        },
        "server_errors": tally.server_errors,
        "wrong_answers": tally.wrong_answers,
        "wrong_statuses": tally.wrong_statuses,
        "transport_errors": tally.transport_errors,
        "statuses": dict(sorted(tally.statuses.items())),
        "problems": tally.problems,
        "resources_start": asdict(start),
        "resources_end": asdict(end),
    }
    report["verdicts"] = verdicts(report)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--data", type=Path, default=default_data(), help="input,mol_weight CSV")
    parser.add_argument("--url", help="a running server to test instead of serving the demo")
    parser.add_argument("--pid", type=int, help="its process id (default: found from the port)")
    parser.add_argument("--api-key", default=os.environ.get("ERSILIA_PACK_API_KEY"))
    parser.add_argument("--model-dir", type=Path, default=ROOT / "examples" / "eos-demo")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--seed", type=int, default=20261125)
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"no data set at {args.data}: pass --data PATH (columns input,mol_weight)")
    data = read_data(args.data)
    if args.url:
        port = httpx.URL(args.url).port or 80
        pid = args.pid or listener_pid(port)
        if pid is None:
            sys.exit(f"no process listens on port {port} here: pass --pid")
        report = asyncio.run(measure(args.url.rstrip("/"), pid, args.api_key, data, args))
    else:
        with own_server(args.model_dir, args.api_key) as (url, pid):
            report = asyncio.run(measure(url, pid, args.api_key, data, args))
    section = markdown(report)
    print(section)
    for problem in report["problems"]:
        print("problem:", problem, file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_results:
        write_section(args.results, section)
    return 0 if all(report["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
