"""GET /metrics scraped from the real ersilia_serve under load: the figures match what was sent."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from helpers import app_client, processes_mentioning, served, wait_ready, write_tree
from prometheus_client.parser import text_string_to_metric_families

from ersilia_pack.pack import pack

pytestmark = pytest.mark.slow

KEY = "a-key-for-the-metrics-tests"
BEARER = {"Authorization": f"Bearer {KEY}"}
GATE = "METRICS_TEST_GATE"
COUNTER = "METRICS_TEST_COUNTER"
T = TypeVar("T")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# A load-once model: length and upper case of alphanumeric inputs, a null row for others.
# While the file named by METRICS_TEST_GATE is missing, a run waits for it; each run adds a line
# (its number of inputs) to the file named by METRICS_TEST_COUNTER.
MODEL = {
    "metadata.yml": (
        "Identifier: metrics-gated\n"
        "Slug: gated-upper\n"
        "Status: Test\n"
        "Title: Upper case of text, held back while a gate file is missing\n"
        "Description: A test fixture of ersilia-pack for its metrics.\n"
        "Input:\n- Text\n"
        "Output:\n- Value\n"
        "Output Consistency: Fixed\n"
    ),
    "install.sh": 'echo "nothing to install"\n',
    "model/framework/run.py": (
        "import os\n"
        "import time\n"
        "\n\n"
        "class Upper:\n"
        "    def load(self):\n"
        "        pass\n"
        "\n"
        "    def predict(self, inputs):\n"
        f"        gate = os.environ.get({GATE!r})\n"
        "        deadline = time.time() + 120\n"
        "        while gate and not os.path.exists(gate) and time.time() < deadline:\n"
        "            time.sleep(0.02)\n"
        f"        counter = os.environ.get({COUNTER!r})\n"
        "        if counter:\n"
        "            with open(counter, 'a') as handle:\n"
        "                handle.write(f'{len(inputs)}\\n')\n"
        "        return [\n"
        "            {'length': len(text), 'upper': text.upper()} if text.isalnum() else None\n"
        "            for text in inputs\n"
        "        ]\n"
    ),
    "model/framework/columns/run_columns.csv": (
        "name,type,direction,description\n"
        "length,integer,,number of characters\n"
        "upper,string,,the input in upper case\n"
    ),
    "model/framework/examples/run_input.csv": "input\nabc\nCCO\n",
    "model/framework/examples/run_output.csv": "length,upper\n3,ABC\n3,CCO\n",
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metrics")
    source = write_tree(root / "metrics-gated", MODEL)
    return pack(source, backend="system", repository_root=root / "repository").bundle_dir


def scrape(url: str, headers: dict[str, str] = BEARER) -> Samples:
    """Every sample of GET /metrics, parsed by prometheus_client's own parser."""
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wait_for(check: Callable[[], T | None], what: str, within: float = 60) -> T:
    """Poll ``check`` until it gives something (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {within:g} s")
        time.sleep(0.05)


def post(url: str, path: str, inputs: list[str], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=inputs, headers=headers, timeout=120)


@pytest.fixture
def open_gate(tmp_path: Path) -> Path:
    gate = tmp_path / "gate"
    gate.touch()
    return gate


def test_the_figures_match_what_a_loaded_server_was_sent(
    bundle: Path, open_gate: Path, tmp_path: Path
) -> None:
    batches = [[f"t{i}n{j}" for j in range(8)] + [f"bad-{i}-1", f"bad-{i}-2"] for i in range(8)]
    counter = tmp_path / "runs"
    env = {GATE: str(open_gate), COUNTER: str(counter)}
    with served(bundle, "--workers", "2", "--api-key", KEY, env=env) as url:
        wait_ready_over_http(url)
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda batch: post(url, "/run", batch, BEARER), batches))
        again = post(url, "/run", batches[0], BEARER)  # 8 rows from the cache, 2 null again
        refused = [post(url, "/run", ["abc"], headers) for headers in ({}, {}, wrong_key())]
        unknown = [
            httpx.get(f"{url}/job/status/nope-{i}", headers=BEARER, timeout=30) for i in range(3)
        ]
        without_key = httpx.get(f"{url}/metrics", timeout=30)
        samples = scrape(url)

    assert [answer.status_code for answer in answers] == [200] * 8
    assert all(answer.headers["x-failed-rows"] == "2" for answer in answers)
    assert (again.status_code, again.headers["x-cached-rows"]) == (200, "8")
    assert [answer.status_code for answer in refused] == [401] * 3
    assert [answer.status_code for answer in unknown] == [404] * 3
    assert without_key.status_code == 401

    requests = "ersilia_pack_http_requests_total"
    assert value(samples, requests, route="/run", method="POST", status="200") == 9
    assert value(samples, requests, route="/run", method="POST", status="401") == 3
    assert value(samples, requests, route="/job/status/{job_id}", method="GET", status="404") == 3
    assert not [labels for _, labels in samples if any("nope-" in v for _, v in labels)]
    latency = "ersilia_pack_http_request_duration_seconds_count"
    assert value(samples, latency, route="/run", method="POST") == 12

    rows = "ersilia_pack_rows_total"
    assert value(samples, rows, api="run", outcome="computed") == 8 * 10 + 2
    assert value(samples, rows, api="run", outcome="cached") == 8
    assert value(samples, rows, api="run", outcome="failed") == 8 * 2 + 2
    assert value(samples, "ersilia_pack_prediction_duration_seconds_count", api="run") == 9
    # How requests were merged or split into runs is the engine's business: the model counted.
    # The start-up self-check ran the example's two inputs once, before ready.
    runs = [int(line) for line in counter.read_text().split()]
    assert sum(runs) == 8 * 10 + 2 + 2
    assert value(samples, "ersilia_pack_model_runs_total", api="run") == len(runs)
    run_seconds = value(samples, "ersilia_pack_model_run_seconds_total", api="run")
    assert run_seconds is not None and run_seconds > 0
    assert value(samples, "ersilia_pack_inputs_waiting", api="run") == 0
    assert value(samples, "ersilia_pack_worker_restarts_total", api="run") == 0
    assert value(samples, "ersilia_pack_jobs", state="queued") == 0
    assert value(samples, "ersilia_pack_jobs", state="running") == 0


def wrong_key() -> dict[str, str]:
    return {"Authorization": "Bearer not-the-key"}


def wait_ready_over_http(url: str) -> None:
    wait_for(
        lambda: True if httpx.get(f"{url}/readyz", timeout=30).status_code == 200 else None,
        "the server to be ready",
    )


def test_waiting_inputs_running_jobs_and_worker_restarts(bundle: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # closed: every run waits until the test opens it
    # every run waits for the gate, the start-up self-check's too: skip it
    argv = ("--workers", "1", "--job-chunk-size", "10", "--api-key", KEY, "--no-self-check")
    with served(bundle, *argv, env={GATE: str(gate)}) as url:
        wait_ready_over_http(url)
        job = post(url, "/job/submit?api=run", [f"job{i}" for i in range(30)], BEARER)
        assert job.status_code == 202, job.text
        wait_for(
            lambda: True if value(scrape(url), "ersilia_pack_jobs", state="running") == 1 else None,
            "the job to be running",
        )
        answer: dict[str, httpx.Response] = {}
        caller = threading.Thread(
            target=lambda: answer.update(run=post(url, "/run", ["a", "b", "c", "d", "e"], BEARER))
        )
        caller.start()
        # The only worker is held by the job's run (its one chunk, in one run: jobs run in
        # batches of up to 32 on a single worker), so the request's inputs wait.
        waiting = wait_for(
            lambda: (
                scrape(url)
                if value(scrape(url), "ersilia_pack_inputs_waiting", api="run") == 5
                else None
            ),
            "five inputs waiting",
        )
        assert value(waiting, "ersilia_pack_jobs", state="running") == 1
        assert value(waiting, "ersilia_pack_jobs", state="queued") == 0

        gate.touch()
        caller.join(120)
        job_id = job.json()["job_id"]
        wait_for(
            lambda: (
                True
                if httpx.get(f"{url}/job/status/{job_id}", headers=BEARER, timeout=30).json()[
                    "state"
                ]
                == "done"
                else None
            ),
            "the job to be done",
        )
        after_job = scrape(url)

        # one slot: the parent that loaded the model and the child it forked; kill the child
        workers = processes_mentioning(str(bundle / "app" / "worker.py"))
        (worker,) = [pid for pid in workers if _parent_of(pid) in workers]
        os.kill(worker, signal.SIGKILL)
        replaced = post(url, "/run", ["after"], BEARER)
        after_kill = scrape(url)

    assert answer["run"].status_code == 200
    assert answer["run"].json()[0] == {"length": 1, "upper": "A"}
    assert value(after_job, "ersilia_pack_jobs", state="running") == 0
    assert value(after_job, "ersilia_pack_jobs", state="done") == 1
    assert value(after_job, "ersilia_pack_inputs_waiting", api="run") == 0
    assert value(after_job, "ersilia_pack_rows_total", api="run", outcome="computed") == 35
    assert value(after_job, "ersilia_pack_worker_restarts_total", api="run") == 0
    assert replaced.status_code == 200
    assert replaced.json() == [{"length": 5, "upper": "AFTER"}]
    assert value(after_kill, "ersilia_pack_worker_restarts_total", api="run") == 1


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_public_metrics_need_no_key_while_the_rest_still_does(
    bundle: Path, open_gate: Path, how: str
) -> None:
    argv = ["--workers", "1", "--api-key", KEY]
    env = {GATE: str(open_gate)}
    if how == "flag":
        argv.append("--public-metrics")
    else:
        env["ERSILIA_PACK_PUBLIC_METRICS"] = "1"
    with served(bundle, *argv, env=env) as url:
        wait_ready_over_http(url)
        refused = post(url, "/run", ["abc"], {})
        samples = scrape(url, headers={})
        schema = httpx.get(f"{url}/openapi.json", timeout=30).json()

    assert refused.status_code == 401
    assert (
        value(
            samples, "ersilia_pack_http_requests_total", route="/run", method="POST", status="401"
        )
        == 1
    )
    assert "security" not in schema["paths"]["/metrics"]["get"]
    assert schema["paths"]["/run"]["post"]["security"] == [{"bearerAuth": []}]


def test_apps_in_one_process_keep_their_own_figures(
    bundle: Path, open_gate: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(GATE, str(open_gate))
    with app_client(bundle, workers=1) as first, app_client(bundle, workers=1) as second:
        wait_ready(first)
        wait_ready(second)
        assert first.post("/run", json=["abc", "de"]).status_code == 200
        first_text = first.get("/metrics").text
        second_text = second.get("/metrics").text

    def computed(text: str) -> float | None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "ersilia_pack_rows_total" and sample.labels == {
                    "api": "run",
                    "outcome": "computed",
                }:
                    return sample.value
        return None

    assert computed(first_text) == 2
    assert computed(second_text) is None  # nothing answered there yet


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])
