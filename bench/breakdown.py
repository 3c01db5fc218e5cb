"""Where the time of one one-input request goes, stage by stage.

    python bench/breakdown.py [--requests 400] [--big 10000]
        [--loop auto|asyncio|uvloop] [--http auto|h11|httptools]

Packs examples/eos-demo with --system into a temporary EOS folder, serves it with uvicorn in
this process (so each stage can be timed where it runs), and sends one-input requests, one at
a time over one keep-alive connection, from a separate process. Each stage is timed by
wrapping the function that does it; the table gives the median of each, per API:

- round trip: what the client measured;
- server: first byte of the request in to the last byte of the answer out, inside the app;
- read inputs: the body read and decoded into a list of strings;
- predict: the prediction path requests and jobs share (the cache, then the model service);
- service: the model service (the engine, then typing the rows);
- engine: the API's queue and batch (ApiEngine.predict);
- run: one run of the legacy script (ScriptRunner.run): write input.csv, execute, read
  output.csv; execute is the hand-off to the warm process and back, which includes the
  forked child running the script; the child's own compute is timed separately by running
  the script's code in a warmed process on the same input;
- call: the load-once API's call to its worker process and back;
- reply: shaping the rows and encoding the JSON.

Then one request of ``--big`` inputs to the legacy API: each stage's total (runs add up over
the slots that ran them side by side).

What is left of the round trip after the server is HTTP parsing and the event loop; what is
left of the server after predict and reply is the middleware and routing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "eos-demo"
DATA = ROOT.parent / "shared" / "data" / "smiles-50k-molweight.csv"
NO_CACHE = "?fetch_cache=false&save_cache=false"

TIMES: dict[str, list[float]] = defaultdict(list)


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    if asyncio.iscoroutinefunction(function):

        @functools.wraps(function)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                TIMES[name].append(time.perf_counter() - began)

        return async_wrapper

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - began)

    return wrapper


def wrap(owner: Any, attribute: str, name: str) -> None:
    """Time ``owner.attribute`` as ``name``, where the code has it (names move over time)."""
    if hasattr(owner, attribute):
        setattr(owner, attribute, timed(name, getattr(owner, attribute)))


def instrument() -> None:
    from ersilia_pack.runtime import predictor
    from ersilia_pack.runtime.engine import batcher, runners, service
    from ersilia_pack.runtime.http import app, io

    wrap(app, "read_inputs", "read inputs")
    wrap(predictor.Predictor, "predict", "predict")
    wrap(service.ModelService, "predict", "service (engine, typed rows)")
    wrap(batcher.ApiEngine, "predict", "engine")
    wrap(runners.ScriptRunner, "run", "run")
    wrap(runners, "write_input_csv", "write input.csv")
    wrap(runners, "read_output_csv", "read output.csv")
    wrap(runners._WarmExecutor, "execute", "execute (warm hand-off + child)")
    wrap(runners.LoadOnceRunner, "run", "call (load-once worker)")
    wrap(app, "shape", "reply: shape")
    wrap(app, "dumps", "reply: JSON")
    wrap(io, "dumps", "reply: JSON (io)")


class ServerTimer:
    """Outermost ASGI layer: time from the request's start to the last body part sent."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                TIMES["server"].append(time.perf_counter() - began)

        await self.app(scope, receive, timed_send)


def client(port: int, path: str, smiles: list[Any], out: Path, many: bool = False) -> None:
    """Sequential requests over one keep-alive connection (one input each, or with ``many``
    each item a list of inputs); round trips to ``out``."""
    code = f"""
import json, socket, sys, time
s = socket.create_connection(("127.0.0.1", {port}))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb")
times = []
for smi in json.loads(sys.stdin.read()):
    body = json.dumps(smi if {many!r} else [smi]).encode()
    began = time.perf_counter()
    s.sendall(b"POST {path} HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
              b"Content-Length: " + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)
    status = f.readline()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\\r\\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    f.read(length)
    times.append(time.perf_counter() - began)
    assert b" 200 " in status, status
open({str(out)!r}, "w").write(json.dumps(times))
"""
    subprocess.run([sys.executable, "-c", code], input=json.dumps(smiles), text=True, check=True)


def child_compute(bundle: Path, smiles: list[str]) -> dict[str, list[float]]:
    """The legacy script's own time on one input, run as the warm process runs it (its code
    executed as __main__ after a warm-up run): in that process itself, and in a child forked
    from it (what a served run costs: the child's first writes copy the parent's pages)."""
    framework = bundle / "model" / "framework"
    code = f"""
import gc, json, os, resource, sys, tempfile, time
sys.path.insert(0, {str(framework / "code")!r})
script = {str(framework / "code" / "descriptors.py")!r}
compiled = compile(open(script).read(), script, "exec")
work = tempfile.mkdtemp()
inp, outp = os.path.join(work, "in.csv"), os.path.join(work, "out.csv")
def run(smi):
    open(inp, "w").write("smiles\\n" + smi + "\\n")
    sys.argv = [script, inp, outp]
    began = time.perf_counter()
    exec(compiled, {{"__name__": "__main__", "__file__": script}})
    return time.perf_counter() - began
smiles = json.loads(sys.stdin.read())
run(smiles[0])
gc.collect()
gc.freeze()
here, forked, faults = [], [], []
for smi in smiles[1:]:
    here.append(run(smi))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        took = run(smi)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        os.write(write, json.dumps([took, after - before]).encode())
        os._exit(0)
    os.close(write)
    took, fault = json.loads(os.read(read, 200))
    os.close(read)
    os.waitpid(pid, 0)
    forked.append(took)
    faults.append(fault / 1000)
print(json.dumps({{"in the warm process": here, "in a forked child": forked,
                  "forked child: page faults (a count, not ms)": faults}}))
"""
    python = json.loads((bundle / "manifest.json").read_text())["environment"]["python"]
    done = subprocess.run(
        [python, "-c", code], input=json.dumps(smiles), text=True, capture_output=True, check=True
    )
    found: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--loop", default="auto")
    parser.add_argument("--http", default="auto")
    parser.add_argument("--eos", type=Path, help="an EOS folder where eos-demo is packed already")
    parser.add_argument("--json", type=Path, help="also write the medians here")
    parser.add_argument(
        "--big", type=int, default=10_000, help="inputs of the one big request (0: none)"
    )
    args = parser.parse_args()

    import uvicorn

    from ersilia_pack.runtime.bundle.loader import create_bundle_app
    from ersilia_pack.runtime.bundle.manifest import find_bundle
    from ersilia_pack.runtime.settings import ServeSettings

    eos = args.eos or Path(tempfile.mkdtemp(prefix="breakdown-"))
    repository = eos / "repository" / "eos-demo"
    if not repository.is_dir():
        subprocess.run(
            ["ersilia_pack", "--model_dir", str(DEMO), "--system", "--eos", str(eos), "-q"],
            check=True,
        )
    bundle = find_bundle(repository)
    smiles = [line.split(",")[0] for line in DATA.read_text().splitlines()[1:]]
    instrument()
    settings = ServeSettings.from_env().model_copy(update={"cache_size": 0})
    app = ServerTimer(create_bundle_app(bundle, settings))
    port = free_port()
    config = uvicorn.Config(
        app, port=port, loop=args.loop, http=args.http, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    report: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as work:
        for api in ("run", "esol"):
            warm = smiles[:30]
            client(port, f"/{api}{NO_CACHE}", warm, Path(work) / "warm.json")
            TIMES.clear()
            batch = smiles[1000 : 1000 + args.requests]
            client(port, f"/{api}{NO_CACHE}", batch, Path(work) / "t.json")
            TIMES["round trip"] = json.loads((Path(work) / "t.json").read_text())
            if api == "run":
                for name, values in child_compute(bundle, batch[:100]).items():
                    TIMES[f"script, {name}"] = values
            report[api] = {
                name: statistics.median(values) * 1000 for name, values in TIMES.items() if values
            }
        if args.big:
            TIMES.clear()
            client(
                port, f"/run{NO_CACHE}", [smiles[: args.big]], Path(work) / "big.json", many=True
            )
            TIMES["round trip"] = json.loads((Path(work) / "big.json").read_text())
            report[f"run, one request of {args.big:,} inputs"] = {
                f"{name} (x{len(values)})" if len(values) > 1 else name: sum(values) * 1000
                for name, values in TIMES.items()
                if values
            }
    server.should_exit = True
    thread.join(timeout=30)

    loop = {"auto": "uvloop if installed", "asyncio": "asyncio", "uvloop": "uvloop"}[args.loop]
    print(f"loop: {loop}; http: {args.http}; {args.requests} requests per API, one at a time")
    for api, stages in report.items():
        print(f"\n{api} ({'ms' if 'inputs' in api else 'medians, ms'})")
        for name, value in stages.items():
            print(f"  {name:36s} {value:7.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    os._exit(0)  # the engine's processes were stopped with the server


if __name__ == "__main__":
    main()
