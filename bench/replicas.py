"""Job throughput of 1, 2, 4 and 8 replicas sharing one Redis, measured side by side in one run.

    python bench/replicas.py [--replicas 1,2,4,8] [--chunks 160] [--sleep 0.005] [--chunk 100]
                             [--out bench/RESULTS.md]

Packs tests/fixtures/sleepy-model with --system into a temporary EOS folder and starts a
throwaway redis-server. For each replica count N it starts N real ``ersilia_serve`` processes
of the model on free ports, all on that Redis (each with its own copy of the bundle, as if on
its own machine), submits one job to the first, polls its status until it is done, and
reports rows per second, from the submit to the status that says done. Every row of the
result is checked against its input.

The model waits ``--sleep`` seconds per input and uses no CPU, so the machine's cores do not
cap the replicas; each replica has two workers, which gives jobs one lane per replica. A
chunk of ``--chunk`` inputs then takes ``chunk x sleep`` seconds, long beside the few
milliseconds a chunk costs to claim, read and record. The cache is bypassed, so every run
computes every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "sleepy-model"
READY = re.compile(r"Uvicorn running on (http://[\d.]+:\d+)")
HEADING = "## Replicas sharing one job (`python bench/replicas.py`)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def call(method: str, url: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


class Replica:
    """One ``ersilia_serve`` process of the bundle, in its own session."""

    def __init__(self, repository: Path, env: dict[str, str], workers: int) -> None:
        self.process = subprocess.Popen(
            [
                "ersilia_serve",
                "--repository_dir",
                str(repository),
                "--port",
                "0",
                "--workers",
                str(workers),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
            start_new_session=True,
        )
        assert self.process.stderr is not None
        self.url = ""
        for line in self.process.stderr:
            match = READY.search(line)
            if match:
                self.url = match.group(1)
                break
        if not self.url:
            raise RuntimeError(f"a replica at {repository} did not start")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for _ in self.process.stderr:
            pass

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def pack(eos: Path) -> Path:
    subprocess.run(
        ["ersilia_pack", "--model_dir", str(FIXTURE), "--system", "--eos", str(eos), "-q"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    bundles = sorted((eos / "repository" / "sleepy-model").iterdir())
    return bundles[-1]


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server is not on PATH: apt-get install redis-server")
    port = free_port()
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit("redis-server did not answer")
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


def run_job(
    bundle: Path, work: Path, redis_url: str, replicas: int, inputs: list[str], args: Any
) -> dict[str, Any]:
    env = {
        "ERSILIA_PACK_REDIS_URL": redis_url,
        "ERSILIA_PACK_JOB_CHUNK_SIZE": str(args.chunk),
        "SLEEPY_SECONDS": str(args.sleep),
    }
    started: list[Replica] = []
    try:
        for i in range(replicas):
            folder = work / f"n{replicas}-r{i}"
            shutil.copytree(bundle, folder / bundle.name, ignore=shutil.ignore_patterns("state"))
            started.append(Replica(folder, env, args.workers))
        for replica in started:  # every replica answers before the clock starts
            call("POST", replica.url + "/run", ["item-1"])
        first = started[0].url
        begin = time.perf_counter()
        job = call("POST", first + "/job/submit?fetch_cache=false&save_cache=false", inputs)
        while True:
            status = call("GET", f"{first}/job/status/{job['job_id']}")
            if status["state"] not in ("queued", "running"):
                break
            time.sleep(0.1)  # seldom: the replica answering also runs chunks
        seconds = time.perf_counter() - begin
        rows = call("GET", f"{first}/job/result/{job['job_id']}")
    finally:
        for replica in started:
            replica.stop()
    wrong = sum(
        row != {"length": len(text), "reversed": text[::-1]} for row, text in zip(rows, inputs)
    ) + abs(len(rows) - len(inputs))
    return {
        "replicas": replicas,
        "seconds": seconds,
        "rows_per_second": len(inputs) / seconds,
        "state": status["state"],
        "chunks": status["chunks"],
        "chunks_processed": status["chunks_processed"],
        "wrong": wrong,
    }


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return (
        f"{os.cpu_count()} cores ({cpu}), {int(mem) / 1024 / 1024:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def section(results: list[dict[str, Any]], args: Any, total: int) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    base = results[0]["rows_per_second"] / results[0]["replicas"]
    lines = [
        HEADING,
        "",
        f"Measured {when} on {machine()}, while the machine was shared.",
        f"One job of {total:,} inputs (the sleepy fixture: {args.sleep * 1000:g} ms of waiting "
        f"per input, no CPU), chunks of {args.chunk} inputs ({args.chunk * args.sleep:g} s of "
        f"model time each), {args.workers} workers per replica (one job lane each), all "
        "replicas on one redis-server, the cache bypassed. Time runs from the submit to the "
        "status that says done.",
        "",
        "| replicas | seconds | rows/s | speed-up over 1 | goal (0.8 x N) | met "
        "| s per chunk in a lane | chunks processed / chunks | wrong rows |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        n = result["replicas"]
        speedup = result["rows_per_second"] / base
        met = "yes" if speedup >= 0.8 * n and result["wrong"] == 0 else "no"
        lines.append(
            f"| {n} | {result['seconds']:.1f} | {result['rows_per_second']:.0f} "
            f"| {speedup:.2f}x | {0.8 * n:.1f}x | {met} "
            f"| {result['seconds'] * n / result['chunks']:.3f} "
            f"| {result['chunks_processed']} / {result['chunks']} | {result['wrong']} |"
        )
    note = (
        f"One lane computes at most {1 / args.sleep:.0f} rows/s (1 / {args.sleep:g} s): a chunk "
        f"holds {args.chunk * args.sleep:g} s of pauses in the model; the rest of its time in a "
        "lane is the engine, the pipe to the worker, and claiming, reading and recording the "
        "chunk."
    )
    if any(r["rows_per_second"] / base > r["replicas"] for r in results):
        note += (
            " A speed-up a little over N means a chunk took a little less time with more "
            "replicas (the first replica, which takes the submit and answers the status polls, "
            "also runs chunks; the runs are one after another on a shared machine)."
        )
    lines += ["", note, ""]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace this script's section of RESULTS.md, keeping every other section."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    parts = re.split(r"(?m)^(?=## )", old)
    kept = [part for part in parts if not part.startswith(HEADING)]
    if not kept or not kept[0].startswith("# "):
        kept.insert(0, "# Benchmark results\n\n")
    body = "".join(kept).rstrip("\n")
    path.write_text(body + "\n\n" + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2,4,8", help="replica counts, comma-separated")
    parser.add_argument("--chunks", type=int, default=160, help="chunks in the job")
    parser.add_argument("--chunk", type=int, default=100, help="inputs per chunk")
    parser.add_argument("--sleep", type=float, default=0.005, help="seconds per input")
    parser.add_argument("--workers", type=int, default=2, help="workers per replica")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    counts = [int(item) for item in args.replicas.split(",")]
    total = args.chunks * args.chunk
    inputs = [f"item-{i:06d}" for i in range(total)]
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as temp:
        work = Path(temp)
        print("packing the sleepy fixture ...", flush=True)
        bundle = pack(work / "eos")
        redis, url = start_redis(work)
        results = []
        try:
            for count in counts:
                result = run_job(bundle, work, url, count, inputs, args)
                print(
                    f"{count} replicas: {result['seconds']:.1f} s, "
                    f"{result['rows_per_second']:.0f} rows/s, {result['wrong']} wrong rows",
                    flush=True,
                )
                results.append(result)
        finally:
            os.killpg(redis.pid, signal.SIGKILL)
            redis.wait(timeout=10)
    write_section(args.out, section(results, args, total))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
