"""Two ersilia_serve installs side by side on the same model, in alternating rounds.

For "is this change slower than that one": pack examples/eos-demo with each install
(``--system``), then

    python bench/compare_servers.py \
        --a /path/to/old/.venv/bin/ersilia_serve --a-repo /tmp/eos-old/repository/eos-demo \
        --b .venv/bin/ersilia_serve --b-repo /tmp/eos-new/repository/eos-demo

Both servers run at once; the rounds alternate (a, b, a, b, ...) so the machine's noise falls
on both alike. Each round is one-input requests from N keep-alive clients for a few seconds,
with the result cache bypassed. Prints a Markdown table of medians (requests per second and
p50 latency) and the b/a ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import load  # bench/run.py's load generator

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "smiles-50k-molweight.csv"
UVICORN_LINE = re.compile(r"Uvicorn running on (http://\S+)")


def start(serve: str, repository: str, workers: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [serve, "--repository_dir", repository, "--port", "0", "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        match = UVICORN_LINE.search(line)
        if match:
            return process, match.group(1)
    raise SystemExit(f"{serve} did not start")


def round_figures(
    url: str, api: str, inputs: list[str], clients: int, seconds: float
) -> tuple[float, float]:
    """One round: requests per second and the p50 latency (ms), with the small keep-alive
    client of bench/run.py (it costs the shared CPU as little as a client can)."""
    molecules = [(smiles, 0.0) for smiles in inputs]
    result = asyncio.run(load(url, f"/{api}", molecules, clients, seconds, None))
    if result.errors:
        raise SystemExit(f"{url}/{api}: {result.errors} requests failed")
    return result.rps, result.percentile(0.5)


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} never became ready")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="ersilia_serve of the first install")
    parser.add_argument("--a-repo", required=True)
    parser.add_argument("--b", required=True, help="ersilia_serve of the second install")
    parser.add_argument("--b-repo", required=True)
    parser.add_argument("--apis", default="run,esol")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with DATA.open(newline="") as handle:
        inputs = [row[0] for row in list(csv.reader(handle))[1:2001]]
    servers = [start(args.a, args.a_repo, args.workers), start(args.b, args.b_repo, args.workers)]
    try:
        for _, url in servers:
            wait_ready(url)
        print(
            "| API | clients | a req/s | b req/s | b / a | a p50 ms | b p50 ms | b / a |\n"
            "|---|---|---|---|---|---|---|---|"
        )
        for api in args.apis.split(","):
            for clients in map(int, args.clients.split(",")):
                figures: list[list[tuple[float, float]]] = [[], []]
                for _ in range(args.rounds):
                    for side, (_, url) in enumerate(servers):
                        figures[side].append(round_figures(url, api, inputs, clients, args.seconds))
                a, b = (statistics.median(rate for rate, _ in side) for side in figures)
                pa, pb = (statistics.median(p50 for _, p50 in side) for side in figures)
                print(
                    f"| {api} | {clients} | {a:.0f} | {b:.0f} | {b / a:.2f} "
                    f"| {pa:.2f} | {pb:.2f} | {pb / pa:.2f} |",
                    flush=True,
                )
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
