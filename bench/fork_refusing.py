"""A legacy script whose library refuses forked processes (CUDA's rule): warm against cold.

    python bench/fork_refusing.py [--requests 30] [--results PATH | --no-results]

Packs tests/fixtures/fork-refusing with --system (its library takes a second to import and
raises in any process but the one that imported it), serves the bundle twice at once, warm
(as packed: a process per slot that runs its jobs itself) and ``--cold`` (a fresh process per
run), and sends one-input requests to each in turn, so both see the same machine. The goal:
warm answers one input in at most 0.25x the cold run. Figures go under "## Legacy scripts
that refuse a fork" in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import served  # noqa: E402

SECTION = "## Legacy scripts that refuse a fork"
FIXTURE = ROOT / "tests" / "fixtures" / "fork-refusing"


def ready(url: str) -> None:
    while httpx.get(f"{url}/readyz", timeout=60).status_code != 200:
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    eos = Path(tempfile.mkdtemp(prefix="ersilia-fork-refusing-"))
    subprocess.run(
        ["ersilia_pack", "--model_dir", str(FIXTURE), "--system", "--eos", str(eos)],
        check=True,
        capture_output=True,
    )
    repository = eos / "repository" / "fork-refusing"
    seconds: dict[str, list[float]] = {"warm": [], "cold": []}
    with ExitStack() as stack:
        urls = {
            "warm": stack.enter_context(served(repository, "--cache-size", "0", "--workers", "1")),
            "cold": stack.enter_context(
                served(repository, "--cache-size", "0", "--workers", "1", "--cold")
            ),
        }
        for url in urls.values():
            ready(url)
        with httpx.Client(timeout=60) as client:
            for k in range(args.requests):
                for mode, url in urls.items():
                    began = time.perf_counter()
                    answer = client.post(f"{url}/run", json=[f"C{'C' * k}O"])
                    seconds[mode].append(time.perf_counter() - began)
                    assert answer.json() == [{"length": k + 2}], answer.text
    warm, cold = (statistics.median(seconds[m]) * 1000 for m in ("warm", "cold"))
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"{SECTION}\n\n"
        f"`python bench/fork_refusing.py` on {day}, {len(seconds['warm'])} one-input requests to "
        "each server, alternating, one slot each, on the development machine (2 cores, "
        "shared).\n\n"
        "| mode | p50 ms | p50 / cold |\n|---|---|---|\n"
        f"| warm, in-process | {warm:.1f} | {warm / cold:.3f} |\n"
        f"| cold | {cold:.1f} | 1.000 |\n"
    )
    print(text)
    if not args.no_results:
        results = args.results.read_text() if args.results.exists() else ""
        if SECTION in results:
            start = results.index(SECTION)
            end = results.find("\n## ", start + 1)
            results = results[:start] + text + (results[end + 1 :] if end >= 0 else "")
        else:
            results = results.rstrip("\n") + "\n\n" + text
        args.results.write_text(results)


if __name__ == "__main__":
    main()
