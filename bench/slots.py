"""Latency of forked slots against separate ones, side by side in one run.

    python bench/slots.py [--data PATH] [--seconds 3] [--rounds 2] [--results PATH | --no-results]

Packs examples/eos-demo with --system, serves the same bundle twice at once: forked slots
(the default: one parent per API loads once and forks its slots) and separate slots
(``--separate-workers``: a process per slot that loads on its own), and sends one-input
requests from 1, 4 and 16 keep-alive clients to the legacy warm ``run`` API and the load-once
``esol`` API, alternating between the two servers for ``--rounds`` rounds so both see the
same machine. Figures go under "## Forked versus separate slots" in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pss
import run

SECTION = "## Forked versus separate slots"
SHAPES = {"forked": [], "separate": ["--separate-workers"]}
CLIENTS = (1, 4, 16)


async def measure(args: argparse.Namespace) -> str:
    data = run.load_data(args.data)
    eos = Path(tempfile.mkdtemp(prefix="ersilia-slots-"))
    servers: dict[str, run.Server] = {}
    latencies: dict[tuple[str, str, int], list[float]] = {}
    counts: dict[tuple[str, str, int], list[float]] = {}
    errors = 0
    try:
        repository = run.pack_demo(eos)
        example = [smiles for smiles, _ in data[:3]]
        expected = [weight for _, weight in data[:3]]
        for shape, flags in SHAPES.items():
            servers[shape] = run.Server(shape, repository, flags)
            servers[shape].start()
            await run.first_answer(servers[shape], example, expected)
        for _ in range(args.rounds):
            for api, check in (("run", "mol_weight"), ("esol", None)):
                for clients in CLIENTS:
                    for shape, server in servers.items():
                        result = await run.load(
                            server.url, f"/{api}", data, clients, args.seconds, check
                        )
                        errors += result.errors
                        key = (api, shape, clients)
                        latencies.setdefault(key, []).append(result.percentile(0.5))
                        counts.setdefault(key, []).append(result.rps)
                        print(
                            f"{api:4} {shape:8} {clients:2} clients: {result.rps:7.1f} req/s "
                            f"p50 {result.percentile(0.5):6.1f} ms errors {result.errors}",
                            flush=True,
                        )
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(eos, ignore_errors=True)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        f"`python bench/slots.py` on {stamp}: {run.machine()}, while the machine was shared. "
        "examples/eos-demo served twice at once with the default --workers: forked slots (the "
        "default) and separate slots (`--separate-workers`); one-input requests from N "
        f"keep-alive clients, {args.seconds:g} s per cell, {args.rounds} rounds alternating "
        "between the servers (means of the rounds). Ratios above 1 favour the forked slots.",
        "",
        "| API | clients | forked p50 ms | separate p50 ms | forked req/s | separate req/s "
        "| p50 separate/forked | req/s forked/separate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for api in ("run", "esol"):
        for clients in CLIENTS:
            forked_p50 = mean(latencies[api, "forked", clients])
            separate_p50 = mean(latencies[api, "separate", clients])
            forked_rps = mean(counts[api, "forked", clients])
            separate_rps = mean(counts[api, "separate", clients])
            lines.append(
                f"| `{api}` | {clients} | {forked_p50:.1f} | {separate_p50:.1f} | "
                f"{forked_rps:.0f} | {separate_rps:.0f} | {separate_p50 / forked_p50:.2f} | "
                f"{forked_rps / separate_rps:.2f} |"
            )
    lines += ["", f"Wrong answers or errors: {errors}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=run.DEFAULT_DATA)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--results", type=Path, default=run.ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no data set at {args.data}: pass --data PATH (columns input,mol_weight)")
    section = asyncio.run(measure(args))
    print(section)
    if not args.no_results:
        pss.SECTION = SECTION
        pss.write_section(args.results, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
