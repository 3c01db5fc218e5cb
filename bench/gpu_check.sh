#!/usr/bin/env bash
# A check on a real GPU: on a machine with an NVIDIA GPU and PyTorch with CUDA, pack a CUDA
# copy of the torch-net fixture (--system), serve it, send 96 concurrent requests per API
# (the legacy run.sh API and the load-once predict.py API) and compare every row with the
# network computed directly; print one-input p50 (warm and, for the legacy API, cold), the
# throughput of 2,000 inputs, the CUDA processes and the GPU memory they hold
# (nvidia-smi --query-compute-apps), and the legacy script run by hand on one input (the raw
# script). Needs ersilia-pack installed beside torch.
#
#   bash bench/gpu_check.sh [OUT_DIR]
#
# Without a GPU it runs on the CPU and says so (the figures then mean nothing for GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/gpu-check}}"
mkdir -p "$out"
work="$(mktemp -d /tmp/gpu-check.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cp -r tests/fixtures/torch-net "$work/torch-net-cuda"
# The same network, moved to the GPU at import where there is one (as published models do).
python3 - "$work/torch-net-cuda/model/framework/code/tinynet.py" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
text = text.replace("import torch\n", "import torch\n\nDEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'\n", 1)
text = text.replace("    net.eval()\n    return net", "    net.eval()\n    return net.to(DEVICE)")
text = text.replace("values = net(torch.tensor([featurise(text) for text in inputs]))",
                    "values = net(torch.tensor([featurise(text) for text in inputs], device=DEVICE)).cpu()")
open(path, "w").write(text)
PY
sed -i 's/^Identifier: .*/Identifier: torch-net-cuda/' "$work/torch-net-cuda/metadata.yml"
ersilia_pack --model_dir "$work/torch-net-cuda" --system --eos "$work/eos" 2>&1 | tee "$out/pack.log" | tail -5
python3 - "$work/eos/repository/torch-net-cuda" "$out" <<'PY'
import json, statistics, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx, torch

sys.path.insert(0, "tests")
sys.path.insert(0, "tests/heavy")
from helpers import served  # noqa: E402
from torch_reference import scores  # noqa: E402

repository, out = Path(sys.argv[1]), Path(sys.argv[2])
smiles = [line.split(",")[0] for line in Path("tests/fixtures/torch-net/model/framework/examples/run_input.csv").read_text().split()[1:]]
pool = [s + "C" * k for k in range(40) for s in smiles][:2000]
while len(pool) < 2000:
    pool += pool[: 2000 - len(pool)]
bundle = sorted(p for p in repository.iterdir() if p.name[0].isdigit())[-1]
apis = {api["name"]: api for api in json.loads((bundle / "manifest.json").read_text())["apis"]}
report = {"cuda": torch.cuda.is_available(), "apis": {k: {f: v.get("decided", v).get(f) for f in ("warm", "in_process", "fork", "gpu")} for k, v in apis.items()}}

def close(a, b):
    return all(abs(a[k] - b[k]) <= 1e-3 * max(1.0, abs(b[k])) for k in b)

def p50(url, api, n=30):
    times = []
    with httpx.Client(timeout=120) as client:
        for k in range(n):
            began = time.perf_counter()
            client.post(f"{url}/{api}", json=[pool[k]], params={"fetch_cache": "false", "save_cache": "false"})
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000

def raw_script_ms(n=5):
    """The legacy script run by hand on one input, as its authors would: python main.py in out."""
    framework = repository.parent.parent.parent / "torch-net-cuda" / "model" / "framework"
    times = []
    for k in range(n):
        tmp = Path(out) / "raw"
        tmp.mkdir(exist_ok=True)
        (tmp / "in.csv").write_text("smiles\n" + pool[k] + "\n")
        began = time.perf_counter()
        subprocess.run([sys.executable, str(framework / "code" / "main.py"), str(tmp / "in.csv"), str(tmp / "out.csv")], check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000

report["raw_script_one_input_ms"] = round(raw_script_ms(), 1)

for mode in ([], ["--cold"]):
    with served(repository, "--cache-size", "0", *mode, startup_timeout=600) as url:
        while httpx.get(f"{url}/readyz", timeout=60).status_code != 200:
            time.sleep(0.2)
        ready = httpx.get(f"{url}/readyz", timeout=60).json()
        name = "cold" if mode else "served"
        figures = report.setdefault(name, {"readyz": ready})
        for api in apis:
            figures[f"{api}_p50_ms"] = round(p50(url, api, 10 if mode else 30), 2)
            if mode:
                continue
            batches = [pool[k * 20 : k * 20 + 20] for k in range(96)]
            with ThreadPoolExecutor(96) as threads:
                answers = list(threads.map(lambda b: httpx.post(f"{url}/{api}", json=b, timeout=600), batches))
            wrong = sum(not close(r, e) for b, a in zip(batches, answers) for r, e in zip(a.json(), scores(b)))
            figures[f"{api}_wrong_rows"] = wrong
            began = time.perf_counter()
            answer = httpx.post(f"{url}/{api}", json=pool, params={"fetch_cache": "false", "save_cache": "false"}, timeout=600)
            figures[f"{api}_2000_inputs_per_s"] = round(len(pool) / (time.perf_counter() - began), 1)
            assert answer.status_code == 200, answer.text
        try:
            apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30).stdout
        except OSError:
            apps = ""
        rows = [line.split(",") for line in apps.splitlines() if line.strip()]
        figures["cuda_processes"] = len(rows)
        figures["gpu_memory_mib"] = sum(int(r[1]) for r in rows)
if "served" in report and "cold" in report:
    report["legacy_cold_over_warm"] = round(report["cold"]["run_p50_ms"] / report["served"]["run_p50_ms"], 1)
if "served" in report:
    report["raw_script_over_served_warm"] = round(report["raw_script_one_input_ms"] / report["served"]["run_p50_ms"], 1)
text = json.dumps(report, indent=1)
print(text)
(out / "gpu_check.json").write_text(text)
PY
